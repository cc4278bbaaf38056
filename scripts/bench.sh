#!/usr/bin/env bash
# THE benchmark command: installs the peers (fetchmail, isync's mbsync, vdirsyncer) and the
# servers if missing, builds serversync and the benchmark in release mode, runs every
# benchmark against private Dovecot, Postfix, PostgreSQL and Radicale instances on 127.0.0.1,
# and writes docs/benchmarks.md. Takes about 30 minutes on 2 cores (the release build, then 18 minutes of runs, the Graph latency probes about 11 of them).
#
#   scripts/bench.sh                          # everything, default sizes
#   scripts/bench.sh --only ingest,latency    # some of: ingest, latency, ews, graph, outgoing, dav, dav-down, pages, scale
#   scripts/bench.sh --messages 2000 --out /tmp/b.md   # smaller, elsewhere
#   scripts/bench.sh --only dav --dav-items 500 --out /tmp/dav.md
#   scripts/bench.sh --only dav-down --dav-down-items 10000 --out /tmp/down.md
#   scripts/bench.sh merge --from /tmp/dav.md  # put a partial run's sections into docs/benchmarks.md
#
# Environment: CARGO_TARGET_DIR is respected; SERVERSYNC_TEST_PG_URL / DATABASE_URL name a
# PostgreSQL server to use (else 127.0.0.1:5432, else a throwaway cluster).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

"$root/scripts/install-deps.sh"
need=()
command -v fetchmail >/dev/null 2>&1 || need+=(fetchmail)
command -v mbsync >/dev/null 2>&1 || need+=(isync)
command -v vdirsyncer >/dev/null 2>&1 || need+=(vdirsyncer)
if [ "${#need[@]}" -gt 0 ]; then
    echo "bench.sh: installing ${need[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
vdirsyncer --version >/dev/null || {
    echo "bench.sh: vdirsyncer is installed but does not run (vdirsyncer --version)" >&2
    exit 1
}

cargo build --quiet --release -p serversync -p serversync-bench
target_dir="$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"

# Thousands of IDLE connections need file descriptors on both ends.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

if [ "${1:-}" = merge ]; then
    shift
    exec "$target_dir/release/serversync-bench" merge "$@"
fi

exec "$target_dir/release/serversync-bench" run \
    --serversync "$target_dir/release/serversync" \
    --command "scripts/bench.sh${*:+ $*}" "$@"
