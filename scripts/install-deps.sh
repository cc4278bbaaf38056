#!/usr/bin/env bash
# Installs what the real-server test environment needs (Debian 12, as root), only what is
# missing: Dovecot (IMAP, POP3, LMTP), Postfix, Radicale, OpenSSL, the PostgreSQL server
# binaries (when initdb/pg_ctl are not found: the fault-injection suite restarts a private
# cluster even when a server is reachable), Python 3 with aiosmtpd (the scripted
# SMTP peer of the fault tests), xmllint (the EWS schema checks), cargo-nextest, the Python
# openapi-spec-validator, exchangelib and pyspnego (the Exchange tests' independent EWS client and NTLM acceptor),
# msgraph-sdk and azure-identity (the Graph tests' independent client), caldav (the two-way
# sync tests' independent CalDAV client); for the
# browser tests Debian's Chromium, Node.js and npm (when `node`/`npm` are missing) and the npm
# packages of e2e/ (playwright-core, no browser download).
# Idempotent: on a machine that has everything it changes nothing and needs no network.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

log() { echo "install-deps: $*" >&2; }

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
    fi
fi

installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

have_pg_binaries() {
    command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1 && return 0
    local d
    for d in /usr/lib/postgresql/*/bin; do
        [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && return 0
    done
    return 1
}

missing=()
for pkg in dovecot-imapd dovecot-pop3d dovecot-lmtpd postfix radicale openssl postgresql-client iproute2 \
    python3 python3-aiosmtpd libxml2-utils dnsmasq-base; do
    installed "$pkg" || missing+=("$pkg")
done
if ! have_pg_binaries; then
    missing+=(postgresql postgresql-contrib)
fi
# Browser tests. Check the commands, not the packages: NodeSource's nodejs ships npm itself
# and conflicts with Debian's npm package (installing that would replace Node.js).
installed chromium || missing+=(chromium)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
# The `fips` build (aws-lc-fips-sys builds the FIPS-validated module with CMake and Go).
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v go >/dev/null 2>&1 || missing+=(golang-go)

if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ] && [ "${#SUDO[@]}" -eq 0 ]; then
        log "missing packages (${missing[*]}) and not root: install them as root"
        exit 1
    fi
    log "installing: ${missing[*]}"
    # Keep Debian's maintainer scripts from starting the system daemons (no systemd here,
    # and they would take ports 25/143/993/5432): the test environment starts its own.
    printf '#!/bin/sh\n# written by serversync scripts/install-deps.sh: do not start daemons\nexit 101\n' |
        "${SUDO[@]}" tee /usr/sbin/policy-rc.d >/dev/null
    "${SUDO[@]}" chmod 755 /usr/sbin/policy-rc.d
    # Postfix: no system configuration (the tests give it its own config directory).
    printf '%s\n' \
        'postfix postfix/main_mailer_type select No configuration' \
        'postfix postfix/mailname string localhost' |
        "${SUDO[@]}" debconf-set-selections
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get update -qq
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends "${missing[@]}"
else
    log "system packages present"
fi

# Users and groups the launchers rely on (created by the packages above).
for user in mail postfix dovecot dovenull; do
    id -u "$user" >/dev/null 2>&1 || { log "system user $user is missing"; exit 1; }
done
getent group postdrop >/dev/null || { log "group postdrop is missing"; exit 1; }

if ! cargo nextest --version >/dev/null 2>&1; then
    log "installing cargo-nextest"
    cargo install cargo-nextest --locked
fi

# Validates the OpenAPI document in the API tests (PyPI).
if ! python3 -c 'import openapi_spec_validator' >/dev/null 2>&1; then
    log "installing openapi-spec-validator"
    python3 -m pip install --quiet openapi-spec-validator
fi

# The Exchange tests' independent peers (PyPI): exchangelib drives the EWS test double as an
# EWS client of its own, and pyspnego's NTLM acceptor checks our NTLMv2 client (channel
# binding included).
if ! python3 -c 'import exchangelib, spnego' >/dev/null 2>&1; then
    log "installing exchangelib and pyspnego"
    python3 -m pip install --quiet 'exchangelib==5.6.0' 'pyspnego==0.12.4'
fi

# The Graph tests' independent client (PyPI): Microsoft's msgraph-sdk drives the Graph test
# double, with an azure-identity (MSAL) client-secret credential against its token endpoint.
if ! python3 -c 'import msgraph, azure.identity' >/dev/null 2>&1; then
    log "installing msgraph-sdk and azure-identity"
    python3 -m pip install --quiet 'msgraph-sdk==1.65.0' 'azure-identity==1.27.0'
fi

# The two-way sync tests' independent CalDAV client (PyPI): python-caldav reads back what
# serversync wrote to Radicale and writes events and tasks serversync must pick up.
if ! python3 -c 'import caldav' >/dev/null 2>&1; then
    log "installing caldav"
    python3 -m pip install --quiet 'caldav==3.6.0'
fi

# npm packages of the browser tests (e2e/package-lock.json): playwright-core drives Debian's
# Chromium, so no browser is downloaded. Reinstalled when missing or when the lock file is
# newer than the last install (npm writes node_modules/.package-lock.json at the end).
node_major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$node_major" -lt 20 ]; then
    log "warning: Node.js $(node --version) is older than 20, which playwright-core needs"
fi
e2e="$root/e2e"
if [ ! -d "$e2e/node_modules/playwright-core" ] ||
    [ ! -f "$e2e/node_modules/.package-lock.json" ] ||
    [ "$e2e/package-lock.json" -nt "$e2e/node_modules/.package-lock.json" ]; then
    log "installing the npm packages of e2e/"
    (cd "$e2e" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund >&2)
fi
