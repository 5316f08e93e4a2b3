#!/usr/bin/env bash
# Fuzzes the parsers: builds each fuzz target (fuzz/fuzz_targets/) with cargo-fuzz and
# runs it under libFuzzer for a fixed time, then prints its execs and crashes.
#
#   scripts/fuzz.sh [seconds] [target]     defaults: 60 seconds, every target
#
# Exit status 0: no crash. 1: a target crashed (panic, abort, timeout or out of memory);
# the reproducer's path is printed. 75: the fuzz toolchain is missing (outside CI).
#
# What it needs, on a fresh Debian machine with the Rust toolchain, as root (with
# CI=true, or APPLEVZ_FUZZ_INSTALL=1, the script runs these itself when a tool is
# missing):
#
#   apt-get update && apt-get install -y --no-install-recommends g++   # libFuzzer is C++
#   cargo install cargo-fuzz --version 0.13.2 --locked
#
# It runs on the stable toolchain: cargo-fuzz's instrumentation (-Cpasses=sancov-module
# and the -Cllvm-args sanitizer-coverage options) is stable rustc; only a sanitizer
# needs a -Z flag. The targets are built with `--sanitizer none` (safe Rust apart from
# the FFI calls; the simulator's C code has its own ASan/UBSan/TSan runs in
# scripts/sanitize-sim.sh), with debug assertions and overflow checks on.
# APPLEVZ_FUZZ_SANITIZER=address builds with AddressSanitizer instead, through
# RUSTC_BOOTSTRAP=1 (about four times slower).
#
# Each run starts from the seed corpus fuzz/corpus/<target>/ (committed, only read) and
# the working corpus fuzz/target/corpus/<target>/ (kept between runs, not committed),
# where new inputs go; fuzz/<target>.dict is its dictionary when present. Logs are in
# fuzz/target/logs/, crash reproducers in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."

# The fuzz targets, one a line (each also has a [[bin]] in fuzz/Cargo.toml, which
# `cargo fuzz add NAME` writes, and seeds in fuzz/corpus/NAME/).
targets=(
    definition
    control_request
)

CARGO_FUZZ_VERSION=0.13.2
seconds=${1:-60}
only=${2:-}
sanitizer=${APPLEVZ_FUZZ_SANITIZER:-none}

if ! [[ $seconds =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: scripts/fuzz.sh [seconds] [target]" >&2
    exit 64
fi
if [ -n "$only" ] && ! printf '%s\n' "${targets[@]}" | grep -qx -- "$only"; then
    echo "unknown target $only (targets: ${targets[*]})" >&2
    exit 64
fi

# The toolchain: install what is missing under CI (or when asked), else say what to do.
missing=()
command -v c++ >/dev/null || missing+=(g++)
cargo fuzz --version >/dev/null 2>&1 || missing+=(cargo-fuzz)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "${CI:-}" = true ] || [ "${APPLEVZ_FUZZ_INSTALL:-}" = 1 ]; then
        if [[ " ${missing[*]} " == *" g++ "* ]]; then
            apt-get update
            DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends g++
        fi
        if [[ " ${missing[*]} " == *" cargo-fuzz "* ]]; then
            cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
        fi
    else
        echo "fuzzing skipped: missing ${missing[*]}; install with" >&2
        echo "  apt-get install -y --no-install-recommends g++" >&2
        echo "  cargo install cargo-fuzz --version $CARGO_FUZZ_VERSION --locked" >&2
        echo "(or run with APPLEVZ_FUZZ_INSTALL=1 to have this script do it)" >&2
        exit 75
    fi
fi

build_flags=(--sanitizer "$sanitizer")
[ "$sanitizer" = none ] || export RUSTC_BOOTSTRAP=1

# fuzz/Cargo.lock must be up to date: a stale one fails here, not silently rewritten.
cargo fetch --locked --manifest-path fuzz/Cargo.toml >/dev/null
# The root's `cargo fmt --all` does not reach this crate.
cargo fmt --manifest-path fuzz/Cargo.toml -- --check

crashed=0
for target in "${targets[@]}"; do
    [ -z "$only" ] || [ "$only" = "$target" ] || continue
    printf '\n==> fuzz %s for %s s (sanitizer: %s)\n' "$target" "$seconds" "$sanitizer"
    cargo fuzz build "${build_flags[@]}" "$target"

    work=fuzz/target/corpus/$target
    artifacts=fuzz/artifacts/$target
    log=fuzz/target/logs/$target.log
    mkdir -p "$work" "$artifacts" "$(dirname "$log")"
    before=$(find "$artifacts" -type f | sort)
    options=(-max_total_time="$seconds" -print_final_stats=1 -max_len=4096 -timeout=10 -rss_limit_mb=2048)
    [ -f "fuzz/$target.dict" ] && options+=(-dict="fuzz/$target.dict")

    start=$(date +%s)
    status=0
    cargo fuzz run "${build_flags[@]}" "$target" "$work" "fuzz/corpus/$target" -- "${options[@]}" \
        >"$log" 2>&1 || status=$?
    elapsed=$(($(date +%s) - start))

    final_stat() { sed -n "s/^stat::$1: *//p" "$log" | tail -n 1; }
    execs=$(final_stat number_of_executed_units)
    rate=$(final_stat average_exec_per_sec)
    last=$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)
    corpus=$(printf '%s' "$last" | sed -n 's/.* corp: \([0-9]*\/[0-9a-zA-Z]*\).*/\1/p')
    new=$(comm -13 <(echo "$before") <(find "$artifacts" -type f | sort) | sed '/^$/d')
    crashes=$(printf '%s' "$new" | grep -c . || true)

    echo "$target: ${execs:-?} execs in ${elapsed} s (${rate:-?} exec/s), $crashes crashes," \
        "corpus ${corpus:-?} (inputs/bytes), exit status $status"
    [ -z "$last" ] || echo "  last status: $last"
    if [ "$status" -ne 0 ] || [ "$crashes" -gt 0 ]; then
        crashed=1
        grep -A 2 -E "panicked at|^==[0-9]+== ?ERROR" "$log" | head -n 12 | sed 's/^/  | /' || true
        if [ -n "$new" ]; then
            printf '%s\n' "$new" | sed 's/^/  reproducer: /'
            echo "  rerun: cargo fuzz run ${build_flags[*]} $target $(printf '%s' "$new" | head -n 1)"
        else
            echo "  no reproducer written"
        fi
        echo "  log: $log"
    fi
done

if [ "$crashed" -ne 0 ]; then
    echo "fuzzing found a crash" >&2
    exit 1
fi
echo "fuzzing: no crashes"
