/*
 * Mistake (c): an API newer than the deployment target used without @available.
 *
 * VZEFIBootLoader is macOS 13; built for macOS 12 the shim must check at run time.
 * Unguarded, -Werror -Wunguarded-availability rejects it (clang names the flag
 * -Wunguarded-availability-new for APIs from macOS 10.13 on). The same file
 * compiles for macOS 13, where no check is needed, and for macOS 12 with
 * -DAVZ_FIXED (the @available form shim/applevz.m uses): the fault is the
 * missing guard, nothing else.
 *
 * CHECK-FAIL: arm64-apple-macos12
 * CHECK-FAIL: x86_64-apple-macos12
 * CHECK-DIAG: error: 'VZEFIBootLoader' is only available on macOS 13.0 or newer [-Werror,-Wunguarded-availability
 * CHECK-PASS: arm64-apple-macos13
 * CHECK-PASS: x86_64-apple-macos13
 * CHECK-PASS: arm64-apple-macos12 -DAVZ_FIXED
 * CHECK-PASS: x86_64-apple-macos12 -DAVZ_FIXED
 */
#import <Foundation/Foundation.h>
#import <Virtualization/Virtualization.h>

#include "../../../include/applevz.h"

bool avz_mistake_set_efi_boot_loader(VZVirtualMachineConfiguration *configuration);

bool avz_mistake_set_efi_boot_loader(VZVirtualMachineConfiguration *configuration)
{
#if defined(AVZ_FIXED)
    if (@available(macOS 13, *)) {
        configuration.bootLoader = [[VZEFIBootLoader alloc] init];
        return true;
    }
    return false;
#else
    configuration.bootLoader = [[VZEFIBootLoader alloc] init];
    return true;
#endif
}
