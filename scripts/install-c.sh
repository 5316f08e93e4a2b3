#!/usr/bin/env bash
# Installs applevz's C API the way a C library is installed (README, "From C and C++"):
#
#   scripts/install-c.sh PREFIX [CARGO_BUILD_ARGS...]
#
#   PREFIX/include/applevz_vm.h          the header
#   PREFIX/lib/libapplevz.a              the static library (the simulator on Linux, the
#                                        Objective-C shim over Virtualization on macOS)
#   PREFIX/lib/pkgconfig/applevz.pc      for `pkg-config --cflags --libs --static applevz`
#                                        and CMake's pkg_check_modules(applevz)
#
# It builds the library first with `cargo build --lib --locked` and CARGO_BUILD_ARGS
# (default --release; e.g. `--profile dev --target-dir DIR` to install a debug build).
# DESTDIR, when set, is put in front of every installed path (for packaging); the .pc
# file still says PREFIX.
#
# Why not `cargo cinstall` (cargo-c), measured on this project's 2-core Debian machine:
# `cargo install cargo-c` picks 0.10.26, which refuses rustc 1.95 (this toolchain), so a
# version must be pinned and moved with the toolchain; 0.10.24 installs, but builds cargo
# itself from source: 40 min wall on this shared machine (load average about 8), 14.6
# min of CPU, on every fresh CI machine, within CI's 90 minutes. It does work for this crate (with a `capi` feature and a few lines of
# [package.metadata.capi]), so it stays an option; this script gives the same result
# with nothing to install.
#
# Libs.private is what the library needs on each OS: the system libraries rustc names
# for a Rust static library (`--print native-static-libs`: Rust's std), and on macOS
# build.rs's frameworks and libobjc in front of them.
set -euo pipefail

if [ "$#" -lt 1 ] || [ -z "$1" ] || [ "${1#-}" != "$1" ]; then
    echo "usage: $0 PREFIX [CARGO_BUILD_ARGS...]   (default CARGO_BUILD_ARGS: --release)" >&2
    exit 2
fi
prefix=$1
shift
case "$prefix" in
    /*) ;;
    *) prefix="$(pwd)/$prefix" ;;
esac
prefix=${prefix%/}
[ "$#" -gt 0 ] || set -- --release

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

# The operating system the library is built for: a --target triple, else the host's.
os=$(uname -s)
previous=""
for arg in "$@"; do
    case "$previous|$arg" in
        "--target|"*) target=$arg ;;
        *"|--target="*) target=${arg#--target=} ;;
        *) target="" ;;
    esac
    if [ -n "$target" ]; then
        case "$target" in
            *-apple-darwin) os=Darwin ;;
            *) os=other ;;
        esac
    fi
    previous=$arg
done
case "$os" in
    Darwin)
        libs_private="-framework Virtualization -framework Foundation -framework CoreFoundation -lobjc -liconv -lSystem -lc -lm"
        ;;
    *)
        libs_private="-lgcc_s -lutil -lrt -lpthread -lm -ldl -lc"
        ;;
esac

echo "building libapplevz.a: cargo build --lib --locked $*" >&2
messages=$(cargo build --lib --locked --message-format=json-render-diagnostics "$@")
# The library's artifact message lists its files, the staticlib among them.
library=$(printf '%s\n' "$messages" \
    | grep '"reason":"compiler-artifact"' | grep '"staticlib"' \
    | tr '"' '\n' | grep '/libapplevz\.a$' | tail -n 1 || true)
if [ -z "$library" ] || [ ! -f "$library" ]; then
    echo "error: cargo named no libapplevz.a" >&2
    exit 1
fi

version=$(sed -n 's/^version = "\([^"]*\)"$/\1/p' Cargo.toml | head -n 1)
header_version=$(sed -n 's/^#define APPLEVZ_VERSION_STRING "\([^"]*\)"$/\1/p' include/applevz_vm.h)
if [ -z "$version" ] || [ "$version" != "$header_version" ]; then
    echo "error: Cargo.toml's version ($version) is not the header's ($header_version)" >&2
    exit 1
fi

destination="${DESTDIR:-}$prefix"
install -d -m 0755 "$destination/include" "$destination/lib/pkgconfig"
install -m 0644 include/applevz_vm.h "$destination/include/applevz_vm.h"
install -m 0644 "$library" "$destination/lib/libapplevz.a"
pc="$destination/lib/pkgconfig/applevz.pc"
cat >"$pc.tmp" <<EOF
prefix=$prefix
exec_prefix=\${prefix}
libdir=\${exec_prefix}/lib
includedir=\${prefix}/include

Name: applevz
Description: Drive Apple's Virtualization framework from C and C++: configure, start, shut down, pause, resume and suspend Linux VMs
Version: $version
Cflags: -I\${includedir}
Libs: -L\${libdir} -lapplevz
Libs.private: $libs_private
EOF
chmod 0644 "$pc.tmp"
mv "$pc.tmp" "$pc"

echo "installed applevz $version under $destination:" >&2
echo "  include/applevz_vm.h, lib/libapplevz.a, lib/pkgconfig/applevz.pc" >&2
echo "use: PKG_CONFIG_PATH=$prefix/lib/pkgconfig pkg-config --cflags --libs --static applevz" >&2
