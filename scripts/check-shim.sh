#!/usr/bin/env bash
# scripts/check-shim.sh — compile-check the macOS shim on any host (no Mac, no SDK).
#
# 1. Compiles shim/applevz.m with clang (-fobjc-arc -Werror, unguarded availability
#    is an error) for every target in shim/check/targets, against the hand-written
#    declarations in shim/check/sdk/ (never Apple's headers), and requires zero
#    diagnostics.
# 2. Compiles each file in shim/check/mistakes/ and requires it to FAIL on every
#    `CHECK-FAIL: <target> [args]` line, with every `CHECK-DIAG: <text>` in clang's
#    output and no error that is not one of them; and to PASS (no diagnostics) on
#    every `CHECK-PASS: <target> [args]` line, which shows the mistake is the only
#    fault.
#
# Flags come from shim/check/clang-flags (shared with tests/shim_compile.rs).
# Usage: scripts/check-shim.sh            (CLANG=clang-19 by default)
#        CLANG=/path/to/clang scripts/check-shim.sh
# Exits 0 when every check gave the expected result, 1 otherwise, 2 when clang is
# missing.
set -u

cd "$(dirname "$0")/.." || exit 2
CLANG=${CLANG:-clang-19}

if ! command -v "$CLANG" >/dev/null 2>&1; then
    echo "check-shim: $CLANG not found (apt-get install clang-19, or set CLANG)" >&2
    exit 2
fi

mapfile -t FLAGS < <(grep -v '^[[:space:]]*#' shim/check/clang-flags | grep -v '^[[:space:]]*$')
mapfile -t TARGETS < <(grep -v '^[[:space:]]*#' shim/check/targets | grep -v '^[[:space:]]*$')

echo "check-shim: $("$CLANG" --version | head -n 1)"
echo "check-shim: flags: ${FLAGS[*]}"

failures=0
checks=0
out=$(mktemp)
trap 'rm -f "$out"' EXIT

# compile TARGET FILE [EXTRA ARGS...]: runs clang, leaves its output in $out, and
# returns clang's exit status.
compile() {
    local target=$1 file=$2
    shift 2
    "$CLANG" -target "$target" "${FLAGS[@]}" "$@" "$file" >"$out" 2>&1
}

pass() {
    checks=$((checks + 1))
    echo "PASS  $*"
}

fail() {
    checks=$((checks + 1))
    failures=$((failures + 1))
    echo "FAIL  $*"
    sed 's/^/      | /' "$out"
}

# ---- 1. the shim ------------------------------------------------------------------
for target in "${TARGETS[@]}"; do
    if compile "$target" shim/applevz.m && [ ! -s "$out" ]; then
        pass "shim/applevz.m compiles for $target with no diagnostics"
    else
        fail "shim/applevz.m for $target (expected success with no diagnostics)"
    fi
done

# ---- 2. the mistakes ----------------------------------------------------------------
# directive FILE NAME: the values of ` * NAME: value` lines, one per line.
directive() {
    sed -n "s/^[[:space:]/*]*$2:[[:space:]]*//p" "$1"
}

shopt -s nullglob
mistakes=(shim/check/mistakes/*.m)
if [ ${#mistakes[@]} -eq 0 ]; then
    echo "FAIL  no mistake files in shim/check/mistakes/"
    failures=$((failures + 1))
fi

for file in "${mistakes[@]}"; do
    mapfile -t fails < <(directive "$file" CHECK-FAIL)
    mapfile -t diags < <(directive "$file" CHECK-DIAG)
    mapfile -t passes < <(directive "$file" CHECK-PASS)
    if [ ${#fails[@]} -eq 0 ] || [ ${#diags[@]} -eq 0 ]; then
        fail "$file has no CHECK-FAIL or no CHECK-DIAG line"
        continue
    fi

    for line in "${fails[@]}"; do
        read -r -a args <<<"$line"
        label="$file for ${args[*]}"
        if compile "${args[@]:0:1}" "$file" "${args[@]:1}"; then
            fail "$label compiled, but must fail"
            continue
        fi
        missing=()
        for diag in "${diags[@]}"; do
            grep -qF -- "$diag" "$out" || missing+=("$diag")
        done
        # Every error must be one of the expected ones: fails for the right reason.
        unexpected=$(grep 'error:' "$out" | while IFS= read -r error_line; do
            known=0
            for diag in "${diags[@]}"; do
                case "$error_line" in *"$diag"*) known=1 ;; esac
            done
            [ $known -eq 1 ] || printf '%s\n' "$error_line"
        done)
        if [ ${#missing[@]} -ne 0 ]; then
            fail "$label failed, but without: ${missing[*]}"
        elif [ -n "$unexpected" ]; then
            fail "$label failed, but also for another reason: $unexpected"
        else
            pass "$label fails as expected: $(grep -c 'error:' "$out") error(s), each one of:"
            for diag in "${diags[@]}"; do
                echo "        $diag"
            done
        fi
    done

    for line in "${passes[@]}"; do
        read -r -a args <<<"$line"
        label="$file for ${args[*]}"
        if compile "${args[@]:0:1}" "$file" "${args[@]:1}" && [ ! -s "$out" ]; then
            pass "$label compiles (control: the mistake is the only fault)"
        else
            fail "$label (control: expected success with no diagnostics)"
        fi
    done
done

echo "check-shim: $checks checks, $((checks - failures)) as expected, $failures unexpected"
[ "$failures" -eq 0 ]
