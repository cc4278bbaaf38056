#!/usr/bin/env bash
# THE test command of serversync: installs what is missing, starts the real servers
# (Dovecot, Postfix, Radicale, PostgreSQL) from throwaway configs, runs
# `cargo nextest run --workspace --no-fail-fast` with any extra arguments, and always stops
# the servers again. Exits with the tests' status.
#
#   scripts/test.sh                      # everything
#   scripts/test.sh -p serversync-store  # extra arguments go to cargo nextest run
#
# Environment: CARGO_TARGET_DIR is respected. SERVERSYNC_TEST_PG_URL / DATABASE_URL name a
# PostgreSQL server to use (else 127.0.0.1:5432, else a throwaway cluster);
# SERVERSYNC_TESTENV_OWN_PG=1 forces the throwaway cluster; SERVERSYNC_KEEP_TESTENV=1 keeps
# the environment's directory (configs, logs, mail) after the run.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

"$root/scripts/install-deps.sh"

cargo build --quiet -p serversync-testkit --bin testenv
target_dir="$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
testenv="$target_dir/debug/testenv"

# Under /tmp: the servers run as mail/dovecot/postfix/postgres and must reach the directory
# (a target dir under /root would not be traversable for them).
envdir="$(mktemp -d /tmp/serversync-testenv.XXXXXX)"
status=1
cleanup() {
    trap - EXIT INT TERM
    if ! "$testenv" down --dir "$envdir"; then
        echo "test.sh: testenv down failed; logs are in $envdir" >&2
        exit 1
    fi
    if [ "$status" -eq 0 ] && [ "${SERVERSYNC_KEEP_TESTENV:-0}" != 1 ]; then
        rm -rf "$envdir"
    else
        echo "test.sh: test environment (configs, logs, mail) kept in $envdir" >&2
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'status=130; exit 130' INT
trap 'status=143; exit 143' TERM

"$testenv" up --dir "$envdir" >/dev/null
# shellcheck disable=SC1091
source "$envdir/env.sh"

# --workspace, unless the caller picks packages (cargo would let --workspace win).
scope=(--workspace)
for arg in "$@"; do
    case "$arg" in
        -p | -p* | --package | --package=*) scope=() ;;
    esac
done

set +e
cargo nextest run "${scope[@]}" --no-fail-fast "$@"
status=$?
set -e
exit "$status"
