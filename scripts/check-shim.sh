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
# 3. Symbol completeness, which -fsyntax-only cannot see: compiles shim/applevz.m to a
#    Mach-O object (-c) for every target and requires, with llvm-nm, an exported
#    (`external`, not `private external`) text symbol _avz_NAME for every function
#    avz_NAME that include/applevz.h declares (names taken from the header as
#    preprocessed for that target, so comments do not count), and no exported _avz_
#    symbol the header does not declare (a stale ABI function). Then checks the check:
#    the shim compiled with one function renamed (-D) must be reported.
#
# Flags come from shim/check/clang-flags (shared with tests/shim_compile.rs); the
# object compile drops -fsyntax-only from them.
# Usage: scripts/check-shim.sh            (CLANG=clang-19, LLVM_NM=llvm-nm-19 by default)
#        CLANG=/path/to/clang LLVM_NM=/path/to/llvm-nm scripts/check-shim.sh
# Exits 0 when every check gave the expected result, 1 otherwise, 2 when clang is
# missing. Without llvm-nm (Debian package llvm-19) step 3 is skipped with a message,
# except when CI=true, where that is a failure.
set -u

cd "$(dirname "$0")/.." || exit 2
CLANG=${CLANG:-clang-19}
NM=${LLVM_NM:-llvm-nm-19}

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
work=$(mktemp -d)
trap 'rm -f "$out"; rm -rf "$work"' EXIT

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

# ---- 3. every declared function is defined and exported -------------------------------
mapfile -t OBJ_FLAGS < <(printf '%s\n' "${FLAGS[@]}" | grep -vx -- '-fsyntax-only')

# declared TARGET: the avz_ functions include/applevz.h declares for TARGET, one a line.
# Preprocessing drops comments; a declaration is `avz_NAME (`, which no typedef matches.
declared() {
    "$CLANG" -target "$1" "${OBJ_FLAGS[@]}" -E -P include/applevz.h 2>/dev/null |
        grep -o '\bavz_[A-Za-z0-9_]*[[:space:]]*(' | sed 's/[[:space:]]*($//' | sort -u
}

# defined OBJECT: the exported text symbols _avz_NAME of a Mach-O object, as avz_NAME.
# llvm-nm's darwin format (-m) tells `external` from `private external` (hidden).
defined() {
    "$NM" -m --defined-only "$1" |
        sed -n 's/^.*(__TEXT,__text) external _\(avz_[A-Za-z0-9_]*\)$/\1/p' | sort -u
}

# symbols TARGET OBJECT [EXTRA CLANG ARGS...]: compiles the shim to OBJECT and compares.
# Sets $declared_count, $missing and $extra; returns 1 when the header or the compile
# gave nothing usable (details in $out).
symbols() {
    local target=$1 object=$2
    shift 2
    declared "$target" >"$work/declared"
    declared_count=$(wc -l <"$work/declared")
    if [ "$declared_count" -eq 0 ]; then
        echo "found no avz_ function declarations in include/applevz.h" >"$out"
        return 1
    fi
    if ! "$CLANG" -target "$target" "${OBJ_FLAGS[@]}" "$@" -c -o "$object" shim/applevz.m \
        >"$out" 2>&1 || [ -s "$out" ]; then
        return 1
    fi
    defined "$object" >"$work/defined"
    missing=$(comm -23 "$work/declared" "$work/defined" | tr '\n' ' ')
    extra=$(comm -13 "$work/declared" "$work/defined" | tr '\n' ' ')
}

if ! command -v "$NM" >/dev/null 2>&1; then
    echo "SKIP  symbol completeness: $NM not found (apt-get install llvm-19, or set LLVM_NM)"
    if [ "${CI:-}" = true ]; then
        : >"$out"
        fail "symbol completeness: CI must run it ($NM not found)"
    fi
else
    echo "check-shim: $("$NM" --version | grep -m 1 -i version)"
    for target in "${TARGETS[@]}"; do
        label="shim/applevz.m object for $target"
        if ! symbols "$target" "$work/$target.o"; then
            fail "$label (expected a clean compile and the header's declarations)"
        elif [ -n "$missing" ] || [ -n "$extra" ]; then
            {
                [ -z "$missing" ] || echo "declared in include/applevz.h, not defined and exported: $missing"
                [ -z "$extra" ] || echo "exported, not declared in include/applevz.h: $extra"
            } >"$out"
            fail "$label: the exported avz_ functions differ from the header's"
        else
            pass "$label defines and exports all $declared_count avz_ functions of include/applevz.h, and no other"
        fi
    done

    # The check itself: rename one definition (and its declaration, consistently, so
    # the file still compiles cleanly) and the check must report it both ways.
    target=${TARGETS[0]}
    probe=avz_vm_vsock_remove_listener
    label="symbol check with $probe renamed (-D$probe=avz_check_renamed), $target"
    if ! symbols "$target" "$work/renamed.o" "-D$probe=avz_check_renamed"; then
        fail "$label (expected a clean compile)"
    elif [ "$missing" = "$probe " ] && [ "$extra" = "avz_check_renamed " ]; then
        pass "$label is caught: missing $probe, extra avz_check_renamed"
    else
        echo "missing: '$missing' extra: '$extra'" >"$out"
        fail "$label was not reported as expected"
    fi
fi

echo "check-shim: $checks checks, $((checks - failures)) as expected, $failures unexpected"
[ "$failures" -eq 0 ]
