#!/usr/bin/env bash
# The native code's own sanitizer job: the simulator's C test program
# (shim/sim/tests) built with AddressSanitizer + UndefinedBehaviorSanitizer and,
# separately, ThreadSanitizer, and run; any report or failed check fails.
set -euo pipefail
cd "$(dirname "$0")/.."
CC=${CC:-cc}
out=target/sanitize-sim
mkdir -p "$out"
flags=(-std=c11 -Wall -Wextra -Wpedantic -Werror -g -O1 -D_GNU_SOURCE -Ishim/sim -Iinclude -pthread)
# Every .c file directly in shim/sim, as build.rs compiles them, plus the test program.
sources=(shim/sim/*.c shim/sim/tests/sim_test.c)
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
export TSAN_OPTIONS=halt_on_error=1
for variant in "address,undefined" "thread"; do
    binary="$out/sim_test-${variant//,/-}"
    echo "sanitize-sim: -fsanitize=$variant"
    "$CC" "${flags[@]}" -fsanitize="$variant" -fno-omit-frame-pointer -fno-sanitize-recover=all \
        "${sources[@]}" -o "$binary"
    "$binary"
done
