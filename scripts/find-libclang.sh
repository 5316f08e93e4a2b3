#!/usr/bin/env bash
# Prints the first directory among the arguments (default: /usr/lib/llvm-19/lib, then
# every /usr/lib/llvm-*/lib) that holds libclang itself, the library bindgen loads:
# libclang.so* or libclang-<version>.so*. libclang-cpp.so* (the C++ API, which
# bindgen cannot use) does not count. Prints nothing and exits 1 when there is none.
set -euo pipefail
shopt -s nullglob
[ $# -gt 0 ] || set -- /usr/lib/llvm-19/lib /usr/lib/llvm-*/lib
for dir in "$@"; do
    for lib in "$dir"/libclang.so* "$dir"/libclang-[0-9]*.so*; do
        if [ -f "$lib" ]; then
            echo "$dir"
            exit 0
        fi
    done
done
exit 1
