#!/usr/bin/env bash
# scripts/check-shim.sh — compile-check the macOS shim on any host (no Mac, no SDK).
#
# The shim is every .m file in shim/ (shim/applevz.m and the applevz_*.m files it is
# split into, sharing shim/applevz_internal.h), the same set build.rs compiles.
#
# 1. Compiles each shim file with clang (-fobjc-arc -Werror, unguarded availability
#    is an error) for every target in shim/check/targets, against the hand-written
#    declarations in shim/check/sdk/ (never Apple's headers), and requires zero
#    diagnostics.
# 2. Compiles each file in shim/check/mistakes/ and requires it to FAIL on every
#    `CHECK-FAIL: <target> [args]` line, with every `CHECK-DIAG: <text>` in clang's
#    output and no error that is not one of them; and to PASS (no diagnostics) on
#    every `CHECK-PASS: <target> [args]` line, which shows the mistake is the only
#    fault.
# 3. Symbol completeness, which -fsyntax-only cannot see: compiles each shim file to a
#    Mach-O object (-c) for every target and requires, with llvm-nm, across the objects
#    together: an exported (`external`, not `private external`) text symbol _avz_NAME
#    for every function avz_NAME that include/applevz.h declares (names taken from the
#    header as preprocessed for that target, so comments do not count), no exported
#    _avz_ symbol the header does not declare (a stale ABI function; the files' shared
#    helpers are hidden, `private external`), and no _avz_ symbol one object needs that
#    none defines (the Mac's link would fail). Then checks the check: the shim compiled
#    with one function renamed (-D) must be reported both ways, and the shim without
#    shim/applevz_util.m must be reported as needing its helpers.
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
shopt -s nullglob
SOURCES=(shim/*.m)
if [ ${#SOURCES[@]} -eq 0 ]; then
    echo "check-shim: no shim sources (shim/*.m)" >&2
    exit 2
fi
echo "check-shim: shim sources: ${SOURCES[*]}"

for target in "${TARGETS[@]}"; do
    for source in "${SOURCES[@]}"; do
        if compile "$target" "$source" && [ ! -s "$out" ]; then
            pass "$source compiles for $target with no diagnostics"
        else
            fail "$source for $target (expected success with no diagnostics)"
        fi
    done
done

# ---- 2. the mistakes ----------------------------------------------------------------
# directive FILE NAME: the values of ` * NAME: value` lines, one per line.
directive() {
    sed -n "s/^[[:space:]/*]*$2:[[:space:]]*//p" "$1"
}

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

# defined OBJECT...: the exported text symbols _avz_NAME of Mach-O objects, as avz_NAME.
# llvm-nm's darwin format (-m) tells `external` from `private external` (hidden).
defined() {
    "$NM" -m --defined-only "$@" |
        sed -n 's/^.*(__TEXT,__text) external _\(avz_[A-Za-z0-9_]*\)$/\1/p' | sort -u
}

# provided OBJECT...: every _avz_NAME the objects define, exported or hidden.
provided() {
    "$NM" -m --defined-only "$@" |
        sed -n 's/^.* _\(avz_[A-Za-z0-9_]*\)$/\1/p' | sort -u
}

# needed OBJECT...: every _avz_NAME the objects refer to without defining it.
needed() {
    "$NM" -m --undefined-only "$@" |
        sed -n 's/^.*(undefined) external _\(avz_[A-Za-z0-9_]*\)$/\1/p' | sort -u
}

# symbols TARGET DIR [EXTRA CLANG ARGS...]: compiles each file of $SYMBOL_SOURCES (the
# shim's sources unless set) to an object in DIR and compares. Sets $declared_count,
# $missing, $extra and $unresolved; returns 1 when the header or a compile gave nothing
# usable (details in $out).
symbols() {
    local target=$1 dir=$2
    shift 2
    local sources=("${SYMBOL_SOURCES[@]:-${SOURCES[@]}}") source objects=()
    declared "$target" >"$work/declared"
    declared_count=$(wc -l <"$work/declared")
    if [ "$declared_count" -eq 0 ]; then
        echo "found no avz_ function declarations in include/applevz.h" >"$out"
        return 1
    fi
    mkdir -p "$dir"
    for source in "${sources[@]}"; do
        local object
        object="$dir/$(basename "$source" .m).o"
        if ! "$CLANG" -target "$target" "${OBJ_FLAGS[@]}" "$@" -c -o "$object" "$source" \
            >"$out" 2>&1 || [ -s "$out" ]; then
            { echo "$source:"; cat "$out"; } >"$work/compile-output" && mv "$work/compile-output" "$out"
            return 1
        fi
        objects+=("$object")
    done
    defined "${objects[@]}" >"$work/defined"
    provided "${objects[@]}" >"$work/provided"
    needed "${objects[@]}" >"$work/needed"
    missing=$(comm -23 "$work/declared" "$work/defined" | tr '\n' ' ')
    extra=$(comm -13 "$work/declared" "$work/defined" | tr '\n' ' ')
    unresolved=$(comm -23 "$work/needed" "$work/provided" | tr '\n' ' ')
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
        label="the shim's ${#SOURCES[@]} objects for $target"
        if ! symbols "$target" "$work/$target"; then
            fail "$label (expected clean compiles and the header's declarations)"
        elif [ -n "$missing" ] || [ -n "$extra" ] || [ -n "$unresolved" ]; then
            {
                [ -z "$missing" ] || echo "declared in include/applevz.h, not defined and exported: $missing"
                [ -z "$extra" ] || echo "exported, not declared in include/applevz.h: $extra"
                [ -z "$unresolved" ] || echo "needed by one object, defined by none: $unresolved"
            } >"$out"
            fail "$label: the avz_ symbols differ from the header's, or do not resolve"
        else
            pass "$label define and export all $declared_count avz_ functions of include/applevz.h, and no other; every avz_ symbol they need is defined"
        fi
    done

    # The check itself: rename one definition (and its declaration, consistently, so
    # the file still compiles cleanly) and the check must report it both ways.
    target=${TARGETS[0]}
    probe=avz_vm_vsock_remove_listener
    label="symbol check with $probe renamed (-D$probe=avz_check_renamed), $target"
    if ! symbols "$target" "$work/renamed" "-D$probe=avz_check_renamed"; then
        fail "$label (expected a clean compile)"
    elif [ "$missing" = "$probe " ] && [ "$extra" = "avz_check_renamed " ] && [ -z "$unresolved" ]; then
        pass "$label is caught: missing $probe, extra avz_check_renamed"
    else
        echo "missing: '$missing' extra: '$extra' unresolved: '$unresolved'" >"$out"
        fail "$label was not reported as expected"
    fi

    # And without one file: the helpers it provides the others must be reported.
    left_out=shim/applevz_util.m
    label="symbol check without $left_out, $target"
    SYMBOL_SOURCES=()
    for source in "${SOURCES[@]}"; do
        [ "$source" = "$left_out" ] || SYMBOL_SOURCES+=("$source")
    done
    if [ ${#SYMBOL_SOURCES[@]} -eq ${#SOURCES[@]} ]; then
        : >"$out"
        fail "$label: $left_out is not among the shim's sources"
    elif ! symbols "$target" "$work/without-util"; then
        fail "$label (expected clean compiles)"
    elif [ -z "$missing" ] && [ -z "$extra" ] && [[ " $unresolved" == *" avz_error "* ]]; then
        pass "$label is caught: needed, defined by none: $unresolved"
    else
        echo "missing: '$missing' extra: '$extra' unresolved: '$unresolved'" >"$out"
        fail "$label was not reported as expected"
    fi
    SYMBOL_SOURCES=()
fi

echo "check-shim: $checks checks, $((checks - failures)) as expected, $failures unexpected"
[ "$failures" -eq 0 ]
