/*
 * Mistake (d): save/restore used without the architecture guard.
 *
 * The SDK declares saveMachineStateToURL:completionHandler: only for Apple silicon
 * (#if defined(__arm64__)). @available(macOS 14) is not enough: built for an Intel
 * Mac the selector does not exist, whatever the macOS version. This file fails for
 * x86_64 even with a macOS 14 deployment target and compiles for arm64 (macOS 14,
 * and macOS 12 thanks to @available), so the failure is the architecture alone.
 * With -DAVZ_FIXED (the #if defined(__arm64__) form shim/applevz.m uses) it also
 * compiles for x86_64.
 *
 * CHECK-FAIL: x86_64-apple-macos14
 * CHECK-FAIL: x86_64-apple-macos12
 * CHECK-DIAG: error: no visible @interface for 'VZVirtualMachine' declares the selector 'saveMachineStateToURL:completionHandler:'
 * CHECK-PASS: arm64-apple-macos14
 * CHECK-PASS: arm64-apple-macos12
 * CHECK-PASS: x86_64-apple-macos14 -DAVZ_FIXED
 */
#import <Foundation/Foundation.h>
#import <Virtualization/Virtualization.h>

#include "../../../include/applevz.h"

void avz_mistake_save_state(VZVirtualMachine *vm, NSURL *url, avz_completion_fn completion,
                            void *context);

/* Runs on the VM's queue. */
void avz_mistake_save_state(VZVirtualMachine *vm, NSURL *url, avz_completion_fn completion,
                            void *context)
{
#if !defined(AVZ_FIXED) || defined(__arm64__)
    if (@available(macOS 14, *)) {
        [vm saveMachineStateToURL:url
                completionHandler:^(NSError *_Nullable error) {
                    completion(context, (__bridge_retained CFErrorRef)error);
                }];
        return;
    }
#else
    (void)vm;
    (void)url;
#endif
    completion(context, NULL);
}
