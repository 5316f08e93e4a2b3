/*
 * Mistake (b): a misspelled selector.
 *
 * Sending a message that no visible @interface declares is an error under ARC
 * (ARC must know the method's ownership conventions), and naming an undeclared
 * selector in @selector() is an error through -Werror -Wundeclared-selector. So a
 * typo in a framework selector cannot slip through to a run-time
 * "unrecognized selector" crash on a Mac. With -DAVZ_FIXED both are spelled right
 * and the file compiles.
 *
 * CHECK-FAIL: arm64-apple-macos14
 * CHECK-FAIL: x86_64-apple-macos12
 * CHECK-DIAG: error: no visible @interface for 'VZVirtualMachine' declares the selector 'requestStopWithErorr:'
 * CHECK-DIAG: error: undeclared selector 'canRequestStopp'
 * CHECK-DIAG: [-Werror,-Wundeclared-selector]
 * CHECK-PASS: arm64-apple-macos14 -DAVZ_FIXED
 * CHECK-PASS: x86_64-apple-macos12 -DAVZ_FIXED
 */
#import <Foundation/Foundation.h>
#import <Virtualization/Virtualization.h>

#include "../../../include/applevz.h"

bool avz_mistake_request_stop(VZVirtualMachine *vm, CFErrorRef *error);

/* Runs on the VM's queue. */
bool avz_mistake_request_stop(VZVirtualMachine *vm, CFErrorRef *error)
{
    NSError *failure = nil;
#if defined(AVZ_FIXED)
    SEL probe = @selector(canRequestStop);
    BOOL ok = [vm respondsToSelector:probe] && [vm requestStopWithError:&failure];
#else
    SEL probe = @selector(canRequestStopp);
    BOOL ok = [vm respondsToSelector:probe] && [vm requestStopWithErorr:&failure];
#endif
    if (!ok && error != NULL) {
        *error = (__bridge_retained CFErrorRef)failure;
    }
    return ok;
}
