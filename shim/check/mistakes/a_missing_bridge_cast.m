/*
 * Mistake (a): an Objective-C object handed to C without a bridge cast.
 *
 * Under ARC a plain C cast cannot say who owns the object afterwards, so clang
 * refuses it; the shim must write __bridge_retained (+1 to the caller) or __bridge
 * (borrowed). Compiled as is, this file must fail; with -DAVZ_FIXED (the way
 * shim/applevz.m does it) it must compile, which shows the cast is the only fault.
 *
 * CHECK-FAIL: arm64-apple-macos14
 * CHECK-FAIL: x86_64-apple-macos12
 * CHECK-DIAG: error: cast of Objective-C pointer type 'NSError *' to C pointer type 'CFErrorRef' (aka 'struct __CFError *') requires a bridged cast
 * CHECK-PASS: arm64-apple-macos14 -DAVZ_FIXED
 * CHECK-PASS: x86_64-apple-macos12 -DAVZ_FIXED
 */
#import <Foundation/Foundation.h>
#import <Virtualization/Virtualization.h>

#include "../../../include/applevz.h"

bool avz_mistake_store_error(CFErrorRef *out, NSError *error);

/* Stores a +1 error for the caller, who releases it with CFRelease. */
bool avz_mistake_store_error(CFErrorRef *out, NSError *error)
{
    if (out != NULL) {
#if defined(AVZ_FIXED)
        *out = (__bridge_retained CFErrorRef)error;
#else
        *out = (CFErrorRef)error;
#endif
    }
    return false;
}
