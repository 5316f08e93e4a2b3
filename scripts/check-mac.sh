#!/usr/bin/env bash
# scripts/check-mac.sh — check the Mac binaries scripts/build-mac.sh wrote, on Linux.
#
# Reads target/mac/applevz (the universal, signed tool) and target/mac/libapplevz.a (the
# universal library) with llvm-objdump/llvm-nm (Debian package llvm-19) and rcodesign, and
# requires:
#  1. each is universal with exactly two slices, x86_64 and arm64, and each slice's own
#     Mach-O header has the CPU type its fat header names;
#  2. each slice of the tool is built for macOS (LC_BUILD_VERSION platform macos) 12.0,
#     and no object in libapplevz.a for a newer macOS;
#  3. each slice of the tool loads exactly Virtualization, Foundation, CoreFoundation,
#     libobjc, libSystem, libiconv and libcharset (TOOL_DYLIBS below), none weakly;
#  4. every Virtualization class a slice refers to is weakly imported when the SDK's
#     header makes it newer than macOS 12.0 (API_AVAILABLE on its @interface), and
#     known to the SDK's headers at all;
#  5. the x86_64 slice refers to no class the SDK's Virtualization.tbd exports for arm64
#     only (Rosetta, the Mac-guest classes) and to no VZLinuxRosetta* class;
#  6. each slice of libapplevz.a defines (exported, in text) every avz_ function of
#     include/applevz.h and every applevz_ function of include/applevz_vm.h;
#  7. examples/c/vm_lifecycle.c, tests/c/lifecycle.c and tests/c/multipass_vm.cpp link
#     against the universal libapplevz.a for both slices (zig's linker, the SDK), and
#     each program passes checks 2 and 3;
#  8. the signed tool carries the com.apple.security.virtualization entitlement and the
#     identifier applevz in each slice (rcodesign print-signature-info).
# Then the mistakes each check must catch (each must FAIL its check):
#  - a scratch copy of the shim with the Rosetta share outside #if defined(__arm64__)
#    does not build for x86_64 (the SDK's headers declare Rosetta for arm64 only), while
#    the unchanged copy compiles and links (the shim's objects linked alone, with the
#    SDK's stubs, as in the tool's link); a Rosetta class declared by hand compiles but
#    does not link for x86_64 (the SDK's tbd exports it for arm64 only), and links for
#    arm64; and check 5 run on the arm64 slice finds the Rosetta class there;
#  - an unsigned tool (target/mac/unsigned/applevz) and one signed without the
#    entitlements fail check 8;
#  - a missing framework: vm_lifecycle.c linked without -framework Virtualization fails,
#    and check 3 on a program linking only libSystem fails;
#  - a wrong deployment target: vm_lifecycle.c linked for macOS 13.0 fails check 2, as
#    does an archive holding an object compiled for 13.0; and
#    a reference to a macOS 13 class built for 13.0 (a strong import) fails check 4,
#    while the same built for 12.0 passes it;
#  - a header declaring one more function fails check 6;
#  - a thin tool fails check 1; scripts/macho-universal.py refuses two inputs of one
#    CPU type, and an archive holding objects of both.
#
# The SDK: $APPLEVZ_MACOS_SDK, else $SDKROOT. Tools: $LLVM_OBJDUMP (llvm-objdump-19),
# $LLVM_NM (llvm-nm-19), $CLANG (clang-19, to preprocess the headers), rcodesign and
# cargo-zigbuild (with zig), which scripts/build-mac.sh installs.
# Exits 0 when every check gave the expected result, 1 otherwise, 2 when the SDK, a tool
# or the binaries are missing.
set -u
cd "$(dirname "$0")/.." || exit 2

OBJDUMP=${LLVM_OBJDUMP:-llvm-objdump-19}
NM=${LLVM_NM:-llvm-nm-19}
CLANG=${CLANG:-clang-19}
readonly MACOS_MIN=12.0
readonly ARCHS=(x86_64 arm64)
# What a C or C++ program linked as the README says loads (sorted).
readonly PROGRAM_DYLIBS="/System/Library/Frameworks/CoreFoundation.framework/Versions/A/CoreFoundation
/System/Library/Frameworks/Foundation.framework/Versions/C/Foundation
/System/Library/Frameworks/Virtualization.framework/Versions/A/Virtualization
/usr/lib/libSystem.B.dylib
/usr/lib/libobjc.A.dylib"
# The tool: the same, and libiconv, which Rust's standard library links on Apple targets
# (the libc crate's link attribute), with libcharset, which cargo-zigbuild adds beside it
# for zig's libiconv stub. Both are parts of macOS (/usr/lib).
readonly TOOL_DYLIBS="/System/Library/Frameworks/CoreFoundation.framework/Versions/A/CoreFoundation
/System/Library/Frameworks/Foundation.framework/Versions/C/Foundation
/System/Library/Frameworks/Virtualization.framework/Versions/A/Virtualization
/usr/lib/libSystem.B.dylib
/usr/lib/libcharset.1.dylib
/usr/lib/libiconv.2.dylib
/usr/lib/libobjc.A.dylib"
readonly TOOL=target/mac/applevz
readonly UNSIGNED_TOOL=target/mac/unsigned/applevz
readonly LIB=target/mac/libapplevz.a

sdk=${APPLEVZ_MACOS_SDK:-${SDKROOT:-}}
if [ -z "$sdk" ] || [ ! -d "$sdk/System/Library/Frameworks/Virtualization.framework" ]; then
    echo "check-mac: no macOS SDK: set APPLEVZ_MACOS_SDK (or SDKROOT) to a MacOSX*.sdk folder" >&2
    exit 2
fi
sdk=$(cd "$sdk" && pwd)
export SDKROOT=$sdk
readonly VZ=$sdk/System/Library/Frameworks/Virtualization.framework
for tool in "$OBJDUMP" "$NM" "$CLANG" rcodesign cargo-zigbuild python3; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "check-mac: $tool not found (scripts/build-mac.sh installs rcodesign and cargo-zigbuild; apt-get install llvm-19 clang-19)" >&2
        exit 2
    fi
done
for file in "$TOOL" "$UNSIGNED_TOOL" "$LIB"; do
    if [ ! -f "$file" ]; then
        echo "check-mac: $file missing: run scripts/build-mac.sh first" >&2
        exit 2
    fi
done

failures=0
checks=0
out=$(mktemp)
work=$(mktemp -d)
trap 'rm -f "$out"; rm -rf "$work"' EXIT

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
# expect_failure LABEL COMMAND...: the command (a check) must fail; its output is shown.
expect_failure() {
    local label=$1
    shift
    if "$@" >"$out" 2>&1; then
        fail "$label: the check passed, but must fail"
    else
        pass "$label is caught: $(head -n 1 "$out")"
    fi
}
# expect_success LABEL COMMAND...
expect_success() {
    local label=$1
    shift
    if "$@" >"$out" 2>&1; then
        pass "$label"
    else
        fail "$label"
    fi
}

# zigcc ARCH VERSION ARGS...: zig's C compiler and linker for ARCH-apple-macosVERSION
# with the SDK, as cargo zigbuild runs it for the crate (arm64 is zig's aarch64).
zigcc() {
    local arch=$1 version=$2
    shift 2
    [ "$arch" = arm64 ] && arch=aarch64
    cargo-zigbuild zig cc -- -target "$arch-macos.$version-none" "$@"
}
zigcxx() {
    local arch=$1 version=$2
    shift 2
    [ "$arch" = arm64 ] && arch=aarch64
    cargo-zigbuild zig c++ -- -target "$arch-macos.$version-none" "$@"
}

# ---- the checks, each a function of its input: 0 when it holds, else 1 and why -------

# check_universal FILE: exactly the slices x86_64 and arm64, each slice's header agreeing.
check_universal() {
    local file=$1 archs arch
    archs=$("$OBJDUMP" --macho --universal-headers "$file" 2>&1 |
        sed -n 's/^architecture \(.*\)$/\1/p' | sort | tr '\n' ' ')
    if [ "$archs" != "arm64 x86_64 " ]; then
        echo "$file: fat slices '${archs}', expected 'arm64 x86_64 '"
        return 1
    fi
    for arch in "${ARCHS[@]}"; do
        local cpu expected
        case $arch in
        x86_64) expected=X86_64 ;;
        arm64) expected=ARM64 ;;
        esac
        # The first Mach-O header of the slice (the file, or the archive's first object).
        cpu=$("$OBJDUMP" --macho --private-header --arch="$arch" "$file" 2>/dev/null |
            awk '$1 == "MH_MAGIC_64" { print $2; exit }')
        if [ "$cpu" != "$expected" ]; then
            echo "$file: the $arch slice's Mach-O header says CPU '$cpu', expected $expected"
            return 1
        fi
    done
    echo "$file: slices x86_64 and arm64, headers agree"
}

# check_minos FILE ARCH: LC_BUILD_VERSION platform macos, minos $MACOS_MIN.
check_minos() {
    local file=$1 arch=$2 found
    found=$("$OBJDUMP" --macho --private-headers --arch="$arch" "$file" 2>&1 |
        awk '/cmd LC_BUILD_VERSION/ { b = 1 } b && $1 == "platform" { p = $2 } b && $1 == "minos" { print p " " $2; b = 0 }')
    if [ "$found" != "macos $MACOS_MIN" ]; then
        echo "$file ($arch): LC_BUILD_VERSION platform/minos '${found}', expected 'macos $MACOS_MIN'"
        return 1
    fi
    echo "$file ($arch): macOS, minos $MACOS_MIN"
}

# check_objects_minos ARCHIVE ARCH: no object in the archive's ARCH slice is for a macOS
# newer than $MACOS_MIN (LC_BUILD_VERSION minos, or LC_VERSION_MIN_MACOSX version); Rust's
# prebuilt standard library is for older ones (10.12 on x86_64, 11.0 on arm64).
check_objects_minos() {
    local archive=$1 arch=$2 versions newer
    versions=$("$OBJDUMP" --macho --private-headers --arch="$arch" "$archive" 2>/dev/null |
        awk '/cmd LC_BUILD_VERSION/ { b = 1 } /cmd LC_VERSION_MIN_MACOSX/ { v = 1 }
             b && $1 == "minos" { print $2; b = 0 } v && $1 == "version" { print $2; v = 0 }')
    if [ -z "$versions" ]; then
        echo "$archive ($arch): no object with a macOS version found"
        return 1
    fi
    newer=$(printf '%s\n' "$versions" | while read -r version; do
        if newer_than_min "$version"; then echo "$version"; fi
    done | sort | uniq -c | tr '\n' ' ')
    if [ -n "$newer" ]; then
        echo "$archive ($arch): objects for a macOS newer than $MACOS_MIN (count, version): $newer"
        return 1
    fi
    echo "$archive ($arch): $(printf '%s\n' "$versions" | wc -l) objects, for macOS $(printf '%s\n' "$versions" | sort -uV | tr '\n' ' ')(none newer than $MACOS_MIN)"
}

# check_dylibs FILE ARCH EXPECTED: loads exactly the EXPECTED libraries (sorted, one a
# line), none weakly (LC_LOAD_DYLIB only).
check_dylibs() {
    local file=$1 arch=$2 EXPECTED_DYLIBS=$3 found weak
    found=$("$OBJDUMP" --macho --dylibs-used --arch="$arch" "$file" 2>&1 |
        sed -n 's/^[[:space:]]*\(\/[^ ]*\) (.*$/\1/p' | sort)
    weak=$("$OBJDUMP" --macho --dylibs-used --arch="$arch" "$file" 2>&1 | grep -c ', weak)' || true)
    if [ "$found" != "$EXPECTED_DYLIBS" ] || [ "$weak" -ne 0 ]; then
        echo "$file ($arch): missing: $(comm -23 <(echo "$EXPECTED_DYLIBS") <(echo "$found") | sed 's|.*/||' | tr '\n' ' ')unexpected: $(comm -13 <(echo "$EXPECTED_DYLIBS") <(echo "$found") | tr '\n' ' ')weak: $weak"
        return 1
    fi
    echo "$file ($arch): loads exactly $(echo "$EXPECTED_DYLIBS" | sed 's|.*/||' | tr '\n' ' ')"
}

# class_availability: "CLASS VERSION" for every @interface the SDK's Virtualization headers
# declare with API_AVAILABLE(macos(VERSION)) just before it.
class_availability() {
    awk '
        /API_AVAILABLE\(macos\(/ { v = $0; sub(/.*API_AVAILABLE\(macos\(/, "", v); sub(/\).*/, "", v); pending = v; next }
        /^@interface VZ[A-Za-z0-9_]* *:/ && pending != "" { n = $2; sub(/:.*/, "", n); print n " " pending; pending = ""; next }
        /^@interface/ { pending = "" }
    ' "$VZ"/Headers/*.h | sort -u
}

# newer_than_min VERSION: true when VERSION > $MACOS_MIN.
newer_than_min() {
    [ "$(printf '%s\n%s\n' "$1" "$MACOS_MIN" | sort -V | tail -n 1)" != "$MACOS_MIN" ]
}

# check_weak_classes FILE ARCH: every VZ class referenced newer than 12.0 is weak.
check_weak_classes() {
    local file=$1 arch=$2 line class kind version bad=() unknown=() newer=0 total=0
    class_availability >"$work/availability"
    while IFS= read -r line; do
        class=${line##*_OBJC_CLASS_\$_}
        class=${class%% *}
        kind=strong
        [[ "$line" == *"(undefined) weak external"* ]] && kind=weak
        total=$((total + 1))
        version=$(awk -v c="$class" '$1 == c { print $2 }' "$work/availability")
        if [ -z "$version" ]; then
            unknown+=("$class")
        elif newer_than_min "$version"; then
            newer=$((newer + 1))
            [ "$kind" = weak ] || bad+=("$class (macOS $version)")
        fi
    done < <("$NM" -m --undefined-only --arch="$arch" "$file" 2>/dev/null | grep '_OBJC_CLASS_\$_VZ')
    if [ "$total" -eq 0 ] || [ ${#bad[@]} -ne 0 ] || [ ${#unknown[@]} -ne 0 ]; then
        echo "$file ($arch): of $total Virtualization classes, strongly imported though newer than $MACOS_MIN: ${bad[*]:-none}; not in the SDK's headers: ${unknown[*]:-none}"
        return 1
    fi
    echo "$file ($arch): $total Virtualization classes, the $newer newer than macOS $MACOS_MIN all weak imports"
}

# check_no_arm64_only_classes FILE ARCH: no class the SDK's stub exports for arm64 only,
# and no VZLinuxRosetta* class.
check_no_arm64_only_classes() {
    local file=$1 arch=$2 found
    # The classes of the tbd's export blocks whose targets lack x86_64.
    awk '
        /^  - targets:/ { arm_only = ($0 !~ /x86_64/); next }
        /^  - / { arm_only = 0 }
        /objc-classes:/ { in_classes = 1 }
        /^    [a-z-]*:/ && !/objc-classes:/ { in_classes = 0 }
        arm_only && in_classes { line = $0; sub(/.*\[/, "", line); sub(/\].*/, "", line); gsub(/,/, " ", line); n = split(line, names, " "); for (i = 1; i <= n; i++) print names[i] }
    ' "$VZ/Virtualization.tbd" | sort -u >"$work/arm64-only"
    if [ ! -s "$work/arm64-only" ]; then
        echo "found no arm64-only class in $VZ/Virtualization.tbd"
        return 1
    fi
    # Anchored patterns: each arm64-only class, and any name starting VZLinuxRosetta.
    { sed 's/.*/^&$/' "$work/arm64-only"; echo '^VZLinuxRosetta'; } >"$work/arm64-only-patterns"
    found=$("$NM" -m --arch="$arch" "$file" 2>/dev/null |
        sed -n 's/^.*_OBJC_CLASS_\$_\(VZ[A-Za-z0-9_]*\).*$/\1/p' | sort -u |
        grep -f "$work/arm64-only-patterns" || true)
    if [ -n "$found" ]; then
        echo "$file ($arch) refers to arm64-only classes: $(echo "$found" | tr '\n' ' ')"
        return 1
    fi
    echo "$file ($arch): none of the $(wc -l <"$work/arm64-only") arm64-only classes, no VZLinuxRosetta*"
}

# declared HEADER PREFIX: the functions PREFIXNAME the header declares for an arm64 Mac.
declared() {
    "$CLANG" -target arm64-apple-macos"$MACOS_MIN" -isysroot "$sdk" -E -P -x c "$1" 2>/dev/null |
        grep -o "\b$2[A-Za-z0-9_]*[[:space:]]*(" | sed 's/[[:space:]]*($//' | sort -u
}

# check_defines LIB ARCH HEADER PREFIX [HEADER PREFIX...]: every declared function defined
# and exported in the library's ARCH slice.
check_defines() {
    local lib=$1 arch=$2 missing="" count=0
    shift 2
    "$NM" --defined-only --extern-only --arch="$arch" "$lib" 2>/dev/null |
        sed -n 's/^[0-9a-f]* T _//p' | sort -u >"$work/defined-$arch"
    if [ ! -s "$work/defined-$arch" ]; then
        echo "$lib ($arch): llvm-nm listed no defined text symbol"
        return 1
    fi
    while [ $# -ge 2 ]; do
        declared "$1" "$2" >"$work/declared"
        if [ ! -s "$work/declared" ]; then
            echo "no $2 function declared in $1 (preprocessed for macOS)"
            return 1
        fi
        count=$((count + $(wc -l <"$work/declared")))
        missing+=$(comm -23 "$work/declared" "$work/defined-$arch" | tr '\n' ' ')
        shift 2
    done
    if [ -n "$missing" ]; then
        echo "$lib ($arch): declared but not defined: $missing"
        return 1
    fi
    echo "$lib ($arch): defines all $count declared functions"
}

# check_entitlement FILE: each slice's signature holds the entitlement, set to true.
check_entitlement() {
    local file=$1 info count
    if ! info=$(rcodesign print-signature-info "$file" 2>&1); then
        echo "$file: rcodesign print-signature-info failed: $info"
        return 1
    fi
    # One entitlements plist per signed slice, each with the key and <true/> after it.
    count=$(printf '%s\n' "$info" |
        grep -A1 '<key>com.apple.security.virtualization</key>' | grep -c '<true/>' || true)
    if [ "$count" -ne ${#ARCHS[@]} ]; then
        echo "$file: com.apple.security.virtualization=true in $count of ${#ARCHS[@]} slices' signatures"
        printf '%s\n' "$info" | head -n 20
        return 1
    fi
    # And one identifier for both (the linker's own ad-hoc signature of the arm64 slice
    # names the cargo output file instead).
    count=$(printf '%s\n' "$info" | grep -c '^ *identifier: applevz$' || true)
    if [ "$count" -ne ${#ARCHS[@]} ]; then
        echo "$file: the identifier applevz in $count of ${#ARCHS[@]} slices' signatures"
        printf '%s\n' "$info" | grep 'identifier:'
        return 1
    fi
    echo "$file: both slices signed as applevz with com.apple.security.virtualization"
}

# link_program ARCH OUTPUT SOURCE: the README's macOS link line, for ARCH and macOS
# $LINK_MACOS (default $MACOS_MIN); $LINK_VIRTUALIZATION=0 leaves that framework out.
link_program() {
    local arch=$1 output=$2 source=$3 compile=zigcc frameworks=()
    [[ "$source" == *.cpp ]] && compile=zigcxx
    [ "${LINK_VIRTUALIZATION:-1}" = 0 ] || frameworks+=(-framework Virtualization)
    frameworks+=(-framework Foundation -framework CoreFoundation)
    "$compile" "$arch" "${LINK_MACOS:-$MACOS_MIN}" -Iinclude "$source" "$LIB" \
        "${frameworks[@]}" -lobjc -o "$output"
}

echo "check-mac: SDK $sdk"
echo "check-mac: $("$OBJDUMP" --version | grep -m 1 -i version); rcodesign $(rcodesign --version 2>&1 | awk '{print $NF}'); $(cargo-zigbuild --version)"

# ---- 1-8 on the binaries ---------------------------------------------------------------
for file in "$TOOL" "$LIB"; do
    expect_success "$file is universal (x86_64 + arm64)" check_universal "$file"
done
for arch in "${ARCHS[@]}"; do
    expect_success "$TOOL ($arch) is for macOS $MACOS_MIN" check_minos "$TOOL" "$arch"
    expect_success "$TOOL ($arch) loads exactly the expected libraries" check_dylibs "$TOOL" "$arch" "$TOOL_DYLIBS"
    expect_success "$TOOL ($arch) weakly imports every class newer than $MACOS_MIN" \
        check_weak_classes "$TOOL" "$arch"
    echo "      $(tail -n 1 "$out")"
    expect_success "$LIB ($arch) defines every function of include/applevz.h and include/applevz_vm.h" \
        check_defines "$LIB" "$arch" include/applevz.h avz_ include/applevz_vm.h applevz_
    echo "      $(tail -n 1 "$out")"
done
for arch in "${ARCHS[@]}"; do
    expect_success "$LIB ($arch) holds no object for a macOS newer than $MACOS_MIN" \
        check_objects_minos "$LIB" "$arch"
    echo "      $(tail -n 1 "$out")"
done
expect_success "$TOOL (x86_64) refers to no arm64-only class" check_no_arm64_only_classes "$TOOL" x86_64
echo "      $(tail -n 1 "$out")"

programs=(examples/c/vm_lifecycle.c tests/c/lifecycle.c tests/c/multipass_vm.cpp)
for arch in "${ARCHS[@]}"; do
    for source in "${programs[@]}"; do
        program="$work/$(basename "${source%.*}")-$arch"
        if link_program "$arch" "$program" "$source" >"$out" 2>&1; then
            pass "$source links against $LIB for $arch"
            expect_success "  and is for macOS $MACOS_MIN" check_minos "$program" "$arch"
            expect_success "  and loads exactly the expected libraries" check_dylibs "$program" "$arch" "$PROGRAM_DYLIBS"
        else
            fail "$source does not link against $LIB for $arch"
        fi
    done
done
expect_success "$TOOL carries the com.apple.security.virtualization entitlement" check_entitlement "$TOOL"

# ---- the mistakes the checks must catch ----------------------------------------------
# Rosetta named outside #if defined(__arm64__): a scratch copy of the shim whose arm64
# guards in applevz_devices.m (the Rosetta share) are always true.
shim_link() { # shim_link ARCH DIR: the shim's objects alone, linked as the tool's are
    local arch=$1 dir=$2 source objects=()
    for source in "$dir"/*.m; do
        zigcc "$arch" "$MACOS_MIN" -fobjc-arc -fobjc-arc-exceptions -Iinclude -I"$dir" \
            -c "$source" -o "$source.o" || return 1
        objects+=("$source.o")
    done
    zigcc "$arch" "$MACOS_MIN" -shared "${objects[@]}" -framework Virtualization \
        -framework Foundation -framework CoreFoundation -lobjc -o "$dir/libshim.dylib"
}
for variant in clean rosetta-unguarded; do
    mkdir -p "$work/$variant"
    cp shim/*.m shim/*.h "$work/$variant/"
done
sed -i 's/^#if defined(__arm64__)/#if 1 \/* planted: Rosetta unguarded *\//' "$work/rosetta-unguarded/applevz_devices.m"
if ! grep -q 'planted: Rosetta unguarded' "$work/rosetta-unguarded/applevz_devices.m"; then
    echo "no #if defined(__arm64__) guard in shim/applevz_devices.m" >"$out"
    fail "planted Rosetta mistake: nothing to unguard"
fi
expect_success "control: the scratch copy of the shim links for x86_64" shim_link x86_64 "$work/clean"
# The SDK's headers declare Rosetta for arm64 only, so this fails already in the compile.
if shim_link x86_64 "$work/rosetta-unguarded" >"$out" 2>&1; then
    fail "the shim with Rosetta unguarded built for x86_64, but must fail"
elif grep -q 'VZLinuxRosetta' "$out"; then
    pass "the shim with Rosetta unguarded does not build for x86_64: $(grep -m 1 'VZLinuxRosetta' "$out")"
else
    fail "the shim with Rosetta unguarded failed for x86_64, but not on the Rosetta class"
fi
expect_success "control: the shim with Rosetta unguarded links for arm64" shim_link arm64 "$work/rosetta-unguarded"
# Past the headers (a declaration of one's own, as a stand-in SDK might have), the link
# still fails: the SDK's Virtualization.tbd exports the class for arm64 only.
cat >"$work/own-declaration.m" <<'EOF'
#import <Virtualization/Virtualization.h>
#if !defined(__arm64__) /* the SDK declares it for arm64 only */
API_AVAILABLE(macos(13.0)) @interface VZLinuxRosettaDirectoryShare : VZDirectoryShare
@end
#endif
int main(void) {
    if (@available(macOS 13, *)) {
        return [VZLinuxRosettaDirectoryShare class] != nil;
    }
    return 0;
}
EOF
own_link() {
    zigcc "$1" "$MACOS_MIN" -fobjc-arc "$work/own-declaration.m" -framework Virtualization \
        -framework Foundation -lobjc -o "$work/own-declaration-$1"
}
expect_success "control: the Rosetta class declared by hand links for arm64" own_link arm64
if own_link x86_64 >"$out" 2>&1; then
    fail "the Rosetta class declared by hand linked for x86_64, but must fail"
elif grep -q 'undefined symbol: _OBJC_CLASS_\$_VZLinuxRosettaDirectoryShare' "$out"; then
    pass "the Rosetta class declared by hand does not link for x86_64: $(grep -m 1 'undefined symbol' "$out")"
else
    fail "the Rosetta class declared by hand failed for x86_64, but not on its link"
fi
expect_failure "check 5 on the arm64 slice (which has Rosetta)" check_no_arm64_only_classes "$TOOL" arm64

# A missing framework.
if LINK_VIRTUALIZATION=0 link_program x86_64 "$work/no-vz" examples/c/vm_lifecycle.c >"$out" 2>&1; then
    fail "vm_lifecycle.c linked without -framework Virtualization, but must fail"
else
    pass "vm_lifecycle.c without -framework Virtualization does not link: $(grep -m 1 -i 'undefined' "$out")"
fi
printf 'int main(void) { return 0; }\n' >"$work/plain.c"
zigcc arm64 "$MACOS_MIN" "$work/plain.c" -o "$work/plain" >"$out" 2>&1 ||
    fail "a plain C program does not link"
expect_failure "check 3 on a program linking only libSystem" check_dylibs "$work/plain" arm64 "$PROGRAM_DYLIBS"

# A wrong deployment target.
printf 'int planted(void) { return 13; }\n' >"$work/newer.c"
if zigcc arm64 13.0 -c "$work/newer.c" -o "$work/newer.o" >"$out" 2>&1 &&
    cargo-zigbuild zig ar rcs "$work/newer.a" "$work/newer.o" >"$out" 2>&1; then
    expect_failure "check 2 on an archive holding an object built for macOS 13.0" \
        check_objects_minos "$work/newer.a" arm64
else
    fail "cannot build an archive of an object for macOS 13.0"
fi
if LINK_MACOS=13.0 link_program arm64 "$work/macos13" examples/c/vm_lifecycle.c >"$out" 2>&1; then
    expect_failure "check 2 on vm_lifecycle.c linked for macOS 13.0" check_minos "$work/macos13" arm64
else
    fail "vm_lifecycle.c does not link for macOS 13.0"
fi
cat >"$work/rosetta.m" <<'EOF'
#import <Virtualization/Virtualization.h>
int main(void) {
    if (@available(macOS 13, *)) {
        return VZLinuxRosettaDirectoryShare.availability == VZLinuxRosettaAvailabilityInstalled;
    }
    return 0;
}
EOF
for version in 12.0 13.0; do
    zigcc arm64 "$version" -fobjc-arc "$work/rosetta.m" -framework Virtualization -lobjc \
        -o "$work/rosetta-$version" >"$out" 2>&1 || fail "the Rosetta probe does not build for $version"
done
expect_success "control: check 4 on a macOS 13 class used under @available, built for 12.0" \
    check_weak_classes "$work/rosetta-12.0" arm64
expect_failure "check 4 on the same built for 13.0 (a strong import)" check_weak_classes "$work/rosetta-13.0" arm64

# An unsigned tool, and one signed without the entitlements.
expect_failure "check 8 on the unsigned tool" check_entitlement "$UNSIGNED_TOOL"
cp "$UNSIGNED_TOOL" "$work/no-entitlements"
if rcodesign sign "$work/no-entitlements" >"$out" 2>&1; then
    expect_failure "check 8 on the tool signed without the entitlements" check_entitlement "$work/no-entitlements"
else
    fail "rcodesign cannot sign a copy of the tool"
fi

# A header with one more function.
cp include/applevz_vm.h "$work/applevz_vm.h"
echo 'void applevz_planted_function(void);' >>"$work/applevz_vm.h"
expect_failure "check 6 with a declaration the library lacks" \
    check_defines "$LIB" arm64 include/applevz.h avz_ "$work/applevz_vm.h" applevz_

# A thin tool, and two inputs of one CPU type.
expect_failure "check 1 on the arm64 tool alone" check_universal target/aarch64-apple-darwin/release/applevz
expect_failure "macho-universal.py with two arm64 inputs" python3 scripts/macho-universal.py \
    "$work/twice" target/aarch64-apple-darwin/release/applevz target/aarch64-apple-darwin/release/applevz

# An archive holding objects of both CPU types (as a mixed-up build could leave).
for arch in "${ARCHS[@]}"; do
    zigcc "$arch" "$MACOS_MIN" -c "$work/plain.c" -o "$work/plain-$arch.o" >"$out" 2>&1 ||
        fail "a plain C file does not compile for $arch"
done
cargo-zigbuild zig ar rcs "$work/mixed.a" "$work/plain-x86_64.o" "$work/plain-arm64.o" >"$out" 2>&1 ||
    fail "zig ar cannot write an archive"
expect_failure "macho-universal.py with an archive of x86_64 and arm64 objects" \
    python3 scripts/macho-universal.py "$work/mixed-universal.a" "$work/mixed.a" \
    target/aarch64-apple-darwin/release/libapplevz.a

echo "check-mac: $checks checks, $((checks - failures)) as expected, $failures unexpected"
[ "$failures" -eq 0 ]
