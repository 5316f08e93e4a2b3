#!/usr/bin/env bash
# scripts/build-mac.sh — build the Mac half as binaries, for Apple silicon and Intel Macs,
# on Linux (or on a Mac).
#
# Builds the crate for aarch64-apple-darwin and x86_64-apple-darwin, release, for macOS
# 12.0 (MACOSX_DEPLOYMENT_TARGET; the README's minimum): the library, libapplevz.a, the
# tool, the examples, the benches and every test binary (--all-targets), linked against
# the SDK's Virtualization, Foundation, CoreFoundation and libobjc. Then writes
#   target/mac/applevz       one universal Mach-O (x86_64 + arm64), ad-hoc signed with
#                            applevz.entitlements, so a Mac runs it as it is;
#   target/mac/libapplevz.a  one universal static library (x86_64 + arm64);
#   target/mac/unsigned/applevz  the same tool before signing (scripts/check-mac.sh
#                            shows its signature check fails on it).
# scripts/check-mac.sh checks them.
#
# The SDK: $APPLEVZ_MACOS_SDK, else $SDKROOT, else on a Mac `xcrun --show-sdk-path`.
#
# On Linux the C and Objective-C compiler and the linker are zig's (`cargo zigbuild`):
# zig ships a libSystem stub and links Mach-O; the SDK gives the headers and the other
# stubs. Installed when missing (and printed): the two Rust targets (rustup), the PyPI
# package `ziglang` (pip), `cargo-zigbuild` and `rcodesign` (crate apple-codesign) with
# cargo install, at the versions below, the ones this was verified with. The universal
# files are written by scripts/macho-universal.py (Apple's lipo does not run on Linux;
# LLVM's cannot read the newer LLVM's objects inside Rust's archive).
# On a Mac it builds with cargo and Xcode's clang, joins with lipo, and signs with
# rcodesign when installed, else with codesign (both ad-hoc, with the entitlements).
#
# Usage: APPLEVZ_MACOS_SDK=/path/to/MacOSX.sdk bash scripts/build-mac.sh
# Exits 0 when both universal files were written, 1 on a failed step, 2 without an SDK.
set -euo pipefail
cd "$(dirname "$0")/.."

readonly MACOS_MIN=12.0
readonly TARGETS=(x86_64-apple-darwin aarch64-apple-darwin)
readonly ZIGLANG_VERSION=0.17.1
readonly ZIGBUILD_VERSION=0.24.1
readonly CODESIGN_VERSION=0.29.0
readonly OUT=target/mac

say() { printf 'build-mac: %s\n' "$*" >&2; }
die() {
    say "$1"
    exit "${2:-1}"
}

host_os=$(uname -s)
sdk=${APPLEVZ_MACOS_SDK:-${SDKROOT:-}}
if [ -z "$sdk" ] && [ "$host_os" = Darwin ]; then
    sdk=$(xcrun --show-sdk-path)
fi
[ -n "$sdk" ] || die "no macOS SDK: set APPLEVZ_MACOS_SDK (or SDKROOT) to a MacOSX*.sdk folder" 2
[ -d "$sdk/System/Library/Frameworks/Virtualization.framework" ] ||
    die "$sdk is not a macOS SDK with Virtualization.framework" 2
sdk=$(cd "$sdk" && pwd)
say "SDK: $sdk"
say "deployment target: macOS $MACOS_MIN"

# ---- tools ---------------------------------------------------------------------------
installed_targets=$(rustup target list --installed)
for target in "${TARGETS[@]}"; do
    if ! grep -qx "$target" <<<"$installed_targets"; then
        say "installing the Rust target $target (rustup target add)"
        rustup target add "$target"
    fi
done

if [ "$host_os" != Darwin ]; then
    if ! python3 -m ziglang version >/dev/null 2>&1 && ! command -v zig >/dev/null; then
        say "installing zig (PyPI package ziglang $ZIGLANG_VERSION)"
        python3 -m pip install --quiet "ziglang==$ZIGLANG_VERSION"
    fi
    if ! command -v cargo-zigbuild >/dev/null; then
        say "installing cargo-zigbuild $ZIGBUILD_VERSION (cargo install)"
        cargo install --locked cargo-zigbuild --version "$ZIGBUILD_VERSION"
    fi
fi
if [ "$host_os" != Darwin ] && ! command -v rcodesign >/dev/null; then
    say "installing rcodesign (crate apple-codesign $CODESIGN_VERSION, cargo install)"
    # Without the default feature `notarize` (Apple's notary service, the AWS SDK): it
    # is not used here, and the install takes a third less CPU time without it.
    cargo install --locked apple-codesign --version "$CODESIGN_VERSION" --bin rcodesign \
        --no-default-features
fi

# ---- build ---------------------------------------------------------------------------
target_args=()
for target in "${TARGETS[@]}"; do
    target_args+=(--target "$target")
done
# Set here, not only in .cargo/config.toml: cargo-zigbuild reads it from its own
# environment to choose the linker's target version (without it the tool's minos is the
# SDK's newest, not 12.0).
export MACOSX_DEPLOYMENT_TARGET=$MACOS_MIN
export SDKROOT=$sdk
if [ "$host_os" = Darwin ]; then
    cargo build --locked --release --all-targets "${target_args[@]}"
else
    say "zig $(python3 -m ziglang version 2>/dev/null || zig version), $(cargo-zigbuild --version)"
    # Something in the zig toolchain's compiler probes leaves an empty `a.o` in the
    # crate's root (the working directory of build.rs); remove it if this build made it.
    stray_before=$([ -e a.o ] && echo yes || echo no)
    cargo zigbuild --locked --release --all-targets "${target_args[@]}"
    if [ "$stray_before" = no ] && [ -f a.o ] && [ ! -s a.o ]; then
        rm -f a.o
    fi
fi

# ---- universal files -----------------------------------------------------------------
mkdir -p "$OUT/unsigned"
rm -f "$OUT/applevz" "$OUT/libapplevz.a" "$OUT/unsigned/applevz"
libs=() tools=()
for target in "${TARGETS[@]}"; do
    libs+=("target/$target/release/libapplevz.a")
    tools+=("target/$target/release/applevz")
done
if [ "$host_os" = Darwin ]; then
    lipo -create -output "$OUT/libapplevz.a" "${libs[@]}"
    lipo -create -output "$OUT/unsigned/applevz" "${tools[@]}"
else
    python3 scripts/macho-universal.py "$OUT/libapplevz.a" "${libs[@]}"
    python3 scripts/macho-universal.py "$OUT/unsigned/applevz" "${tools[@]}"
fi

# ---- signing -------------------------------------------------------------------------
# Ad-hoc (no certificate): enough for the entitlement, which Virtualization requires.
cp "$OUT/unsigned/applevz" "$OUT/applevz.partial"
if command -v rcodesign >/dev/null; then
    rcodesign sign --binary-identifier applevz --entitlements-xml-file applevz.entitlements \
        "$OUT/applevz.partial" >&2
else
    codesign --force --sign - --identifier applevz --entitlements applevz.entitlements \
        "$OUT/applevz.partial"
fi
mv "$OUT/applevz.partial" "$OUT/applevz"

say "wrote $OUT/applevz (universal, signed) and $OUT/libapplevz.a (universal)"
