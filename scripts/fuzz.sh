#!/usr/bin/env bash
# Bounded fuzz run: builds the cargo-fuzz targets of fuzz/ (nightly, libFuzzer) and runs each
# for FUZZ_SECONDS. Exits non-zero on the first crash, panic, leak, timeout or out-of-memory
# and prints the input that caused it (fuzz/artifacts/<target>/…) and how to reproduce it.
#
#   scripts/fuzz.sh                       # every target, 45 s each
#   FUZZ_SECONDS=300 scripts/fuzz.sh dsn  # one target, 5 minutes
#
# Environment:
#   FUZZ_SECONDS       run time per target (default 45)
#   FUZZ_TARGET_DIR    build directory (default /var/cache/serversync/fuzz-target)
#   FUZZ_CORPUS_DIR    where new corpus entries go, kept between runs
#                      (default /var/cache/serversync/fuzz-corpus); the seeds in
#                      fuzz/corpus/<target> are read, never written
#   FUZZ_CORPUS_MAX_FILES  above this many files a target's kept corpus is first minimized
#                      (libFuzzer -merge=1; default 10000)
#   CARGO_TOOLS_ROOT   where cargo-fuzz is installed when missing
#                      (default /var/cache/serversync/cargo-tools)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

seconds="${FUZZ_SECONDS:-45}"
target_dir="${FUZZ_TARGET_DIR:-/var/cache/serversync/fuzz-target}"
corpus_root="${FUZZ_CORPUS_DIR:-/var/cache/serversync/fuzz-corpus}"
tools="${CARGO_TOOLS_ROOT:-/var/cache/serversync/cargo-tools}"
export PATH="$tools/bin:$PATH"

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz.sh: no nightly Rust toolchain; cargo-fuzz needs one: rustup toolchain install nightly" >&2
    exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz into $tools"
    cargo install cargo-fuzz --locked --root "$tools"
fi

mapfile -t all < <(cargo fuzz list --fuzz-dir fuzz)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")
build_args=()
[ ${#targets[@]} -ne 1 ] || build_args=("${targets[0]}")

# Its own target directory, outside the clone: the fuzz build is instrumented (coverage,
# debug assertions) and shares nothing with the workspace build. One build for all targets.
# No sanitizer: our crates have no unsafe code, and the C code of dependencies (SQLite,
# aws-lc) is not instrumented by cargo-fuzz anyway; without AddressSanitizer the first build
# is shorter and runs are faster.
sanitizer=(--sanitizer none)
mkdir -p "$target_dir"
log="$(mktemp /tmp/serversync-fuzz-build.XXXXXX)"
echo "== cargo +nightly fuzz build ${build_args[*]:-(all targets)}"
start=$SECONDS
if ! CARGO_TARGET_DIR="$target_dir" cargo +nightly fuzz build --fuzz-dir fuzz "${sanitizer[@]}" "${build_args[@]}" >"$log" 2>&1; then
    cat "$log" >&2
    echo "fuzz.sh: cargo fuzz build failed" >&2
    exit 1
fi
rm -f "$log"
echo "   built in $((SECONDS - start)) s"

stamp="$(mktemp /tmp/serversync-fuzz-stamp.XXXXXX)"
trap 'rm -f "$stamp"' EXIT
failed=()
for t in "${targets[@]}"; do
    corpus="$corpus_root/$t"
    mkdir -p "$corpus" "fuzz/artifacts/$t"
    if [ "$(find "$corpus" -type f | wc -l)" -gt "${FUZZ_CORPUS_MAX_FILES:-10000}" ]; then
        echo "== minimizing the kept corpus of $t"
        rm -rf "$corpus.min" && mkdir -p "$corpus.min"
        if CARGO_TARGET_DIR="$target_dir" cargo +nightly fuzz run --fuzz-dir fuzz "${sanitizer[@]}" \
            "$t" "$corpus.min" "$corpus" -- -merge=1 -rss_limit_mb=2048 -timeout=20 >/dev/null 2>&1; then
            rm -rf "$corpus" && mv "$corpus.min" "$corpus"
        else
            rm -rf "$corpus.min"
        fi
    fi
    echo "== fuzz $t for ${seconds} s"
    start=$SECONDS
    # New inputs go to the first corpus directory (outside the clone); the committed seeds
    # are only read. libFuzzer's progress lines are left out of the log.
    if ! CARGO_TARGET_DIR="$target_dir" cargo +nightly fuzz run --fuzz-dir fuzz "${sanitizer[@]}" "$t" \
        "$corpus" "fuzz/corpus/$t" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=65536 -timeout=20 \
        -print_final_stats=1 2>&1 |
        { grep -v -E '^#[0-9]+[[:space:]]+(NEW|REDUCE|pulse|RELOAD)' || true; }; then
        failed+=("$t")
    elif [ -n "$(find "fuzz/artifacts/$t" -type f -newer "$stamp")" ]; then
        failed+=("$t")
    fi
    echo "   $t: $((SECONDS - start)) s"
done

if [ ${#failed[@]} -gt 0 ]; then
    for t in "${failed[@]}"; do
        echo "fuzz.sh: $t FAILED; the inputs that crashed it:" >&2
        find "fuzz/artifacts/$t" -type f -newer "$stamp" -printf '  %p\n' >&2
        echo "  reproduce: cargo +nightly fuzz run --fuzz-dir fuzz --sanitizer none $t <input>" >&2
        echo "  then fix the bug, add the input as a unit test of the owning crate and copy it to fuzz/corpus/$t/ (docs/testing.md, Fuzzing)" >&2
    done
    exit 1
fi
echo "fuzz.sh: ${targets[*]}: no crash in ${seconds} s each"
