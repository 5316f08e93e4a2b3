#!/usr/bin/env bash
# The project's test command (README "Run the tests"; .ci/run runs exactly this).
#
# 1. formatting and clippy with warnings denied;
# 2. the whole test suite (simulator lifecycle tests through the FFI path, config
#    validation, the Objective-C shim compile checks when clang-19 is installed, the
#    C API: header against exports, C and C++ programs linked against libapplevz.a,
#    again under valgrind when it is installed, and installed into a temporary prefix
#    by scripts/install-c.sh, built through pkg-config and a CMake project),
#    then the crate type-checked without the simulator (as a Mac builds it), and
#    the shim compile checks once more as a script (required in CI);
# 3. the checked-in bindgen output against include/applevz.h (when libclang is there);
# 4. the simulator's own C tests under ASan+UBSan and TSan;
# 5. the FFI test binaries again under valgrind: zero errors, zero definite leaks;
# 6. the Mac binaries, built on this host for both Mac architectures and checked
#    (scripts/build-mac.sh, scripts/check-mac.sh) when a macOS SDK is given in
#    APPLEVZ_MACOS_SDK (required in CI, where .ci/run gives it);
# 7. last, each fuzz target for 60 s (scripts/fuzz.sh; CI installs cargo-fuzz first).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (warnings denied)"
cargo clippy --all-targets --locked -- -D warnings

step "cargo test"
cargo test --locked

step "fault tests that mount a tmpfs (root only)"
if [ "$(id -u)" = 0 ]; then
    cargo test --locked --test cli -- --ignored
else
    echo "skipped: the full-disk and read-only-directory tests need root to mount a tmpfs" >&2
    [ "${CI:-}" = true ] && { echo "CI must run them (as root)" >&2; exit 1; }
fi

step "type-check the crate as built against the real shim (no simulator cfg)"
APPLEVZ_CHECK_AS_REAL_SHIM=1 RUSTFLAGS="-D warnings" \
    cargo check --locked --all-targets --target-dir target/real-shim-check

step "Objective-C shim compile checks (arm64 and x86_64 Macs, and the mistakes they must catch)"
if command -v "${CLANG:-clang-19}" >/dev/null; then
    bash scripts/check-shim.sh
else
    echo "skipped: ${CLANG:-clang-19} not installed (apt-get install clang-19)" >&2
    [ "${CI:-}" = true ] && { echo "CI must run it" >&2; exit 1; }
fi

step "the simulator's C tests under AddressSanitizer+UBSan and ThreadSanitizer"
bash scripts/sanitize-sim.sh

# libclang itself, not libclang-cpp (scripts/find-libclang.sh, tested in tests/scripts.rs).
libclang_dir=$(bash scripts/find-libclang.sh || true)
if [ -n "$libclang_dir" ]; then
    step "bindings match include/applevz.h (bindgen, libclang in $libclang_dir)"
    LIBCLANG_PATH=$libclang_dir cargo build --locked --features bindgen
else
    echo "skipped the bindings drift check: no libclang (apt-get install libclang-19-dev)" >&2
    [ "${CI:-}" = true ] && { echo "CI must run it" >&2; exit 1; }
fi

if command -v valgrind >/dev/null; then
    step "FFI tests under valgrind (memcheck: errors and definite leaks fail)"
    host=$(rustc -vV | sed -n 's/^host: //p')
    runner_var="CARGO_TARGET_$(echo "$host" | tr 'a-z-' 'A-Z_')_RUNNER"
    # In a subshell: the runner must not leak into the steps after this one.
    (
        export "$runner_var"="valgrind --quiet --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite --show-leak-kinds=definite"
        cargo test --locked --lib --test lifecycle --test nothing_lost --test contract --test config --test devices --test definition --test fidelity --test umask
    )
else
    echo "skipped valgrind: not installed (apt-get install valgrind)" >&2
    [ "${CI:-}" = true ] && { echo "CI must run it" >&2; exit 1; }
fi

# The SDK is not in the repository (README "Building for a Mac from Linux"); .ci/run
# gives it. The build installs its tools (Rust targets, zig, cargo-zigbuild, rcodesign).
mac_sdk=${APPLEVZ_MACOS_SDK:-${SDKROOT:-}}
if [ -n "$mac_sdk" ]; then
    step "the Mac binaries: universal tool and libapplevz.a (scripts/build-mac.sh), then their checks (scripts/check-mac.sh)"
    bash scripts/build-mac.sh
    bash scripts/check-mac.sh
else
    echo "ignored the Mac build and its checks: no macOS SDK (set APPLEVZ_MACOS_SDK; README: Building for a Mac from Linux)" >&2
    [ "${CI:-}" = true ] && { echo "CI must run them (.ci/run sets APPLEVZ_MACOS_SDK)" >&2; exit 1; }
fi

step "fuzz targets, 60 s each (scripts/fuzz.sh)"
fuzz_status=0
bash scripts/fuzz.sh 60 || fuzz_status=$?
if [ "$fuzz_status" -eq 75 ] && [ "${CI:-}" != true ]; then
    echo "skipped fuzzing: the fuzz toolchain is not installed (see above)" >&2
elif [ "$fuzz_status" -ne 0 ]; then
    exit "$fuzz_status"
fi
step "all checks passed"
