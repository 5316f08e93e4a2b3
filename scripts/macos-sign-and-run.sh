#!/bin/sh
# Cargo runner for macOS targets (see .cargo/config.toml): ad-hoc signs a test or
# example binary with the virtualization entitlement, then runs it. Without the
# entitlement every VM start fails, so `cargo test` and `cargo run` need this step.
set -eu
binary=$1
shift
root=$(cd "$(dirname "$0")/.." && pwd)
if ! codesign --force --sign - --entitlements "$root/applevz.entitlements" "$binary" 2>/dev/null; then
    echo "macos-sign-and-run: could not ad-hoc sign $binary (is codesign installed?)" >&2
    exit 1
fi
exec "$binary" "$@"
