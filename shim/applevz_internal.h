/*
 * shim/applevz_internal.h — private declarations shared by the macOS shim's files
 * (shim/applevz*.m). Not an interface: include/applevz.h is the ABI. The design (queue
 * discipline, order of events, ownership, availability) is described at the top of
 * shim/applevz.m.
 *
 * The files:
 *   applevz.m          the design; the ABI's virtual machine functions (create, start,
 *                      stop, pause, resume, save, restore, request stop, state, can_*,
 *                      memory balloon)
 *   applevz_machine.m  AVZMachine, its delegate and the order of events; AVZCompletion;
 *                      avz_vm_async / avz_vm_sync / avz_vm_read_bool
 *   applevz_config.m   AVZConfiguration; host queries; boot loader, platform, validation
 *   applevz_devices.m  the configuration's devices
 *   applevz_vsock.m    vsock listeners and connections at run time
 *   applevz_util.m     errors, paths, state names
 *
 * Every function declared here is AVZ_INTERNAL (hidden visibility): the objects export
 * only the ABI's avz_ functions (scripts/check-shim.sh checks this across all of them).
 */
#ifndef APPLEVZ_INTERNAL_H
#define APPLEVZ_INTERNAL_H

#import <Foundation/Foundation.h>
#import <Virtualization/Virtualization.h>

#include <dispatch/dispatch.h>
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../include/applevz.h"

#if !__has_feature(objc_arc)
#error "the shim (shim/applevz*.m) must be compiled with -fobjc-arc"
#endif

/* Shared between the shim's files, not exported from them. */
#define AVZ_INTERNAL __attribute__((visibility("hidden")))

NS_ASSUME_NONNULL_BEGIN

/* ================================================================================== */
/* applevz_util.m: errors, paths, states                                              */
/* ================================================================================== */

/* An error in VZErrorDomain with a description, optionally wrapping another error. */
AVZ_INTERNAL
NSError *avz_error_with(NSInteger code, NSString *description,
                        NSError *_Nullable underlying, NSString *_Nullable path);

/* An error in VZErrorDomain with a description. */
AVZ_INTERNAL
NSError *avz_error(NSInteger code, NSString *description);

/* Runs `body` inside @try: an Objective-C exception it raises stops there and the call
 * returns NO (YES when it ran to the end). For the ABI functions that have no error to
 * report it through, so that no exception ever leaves an avz_ function. */
AVZ_INTERNAL
BOOL avz_try(__attribute__((noescape)) dispatch_block_t body);

/* VZErrorDomain code 10 for a feature this Mac (or this build) does not have. */
AVZ_INTERNAL
NSError *avz_not_supported(NSString *feature, NSString *needs);

/* The framework's error for a call that reported failure, or one made here when the
 * framework gave none: a failing call never yields NULL-with-false. */
AVZ_INTERNAL
NSError *avz_or(NSError *_Nullable frameworkError, NSInteger code, NSString *description);

/* `frameworkError` as VZErrorDomain code `code`: kept when it already is one, otherwise
 * wrapped ("<what>: <its description>", the original as the underlying error), so the
 * ABI's documented code holds whatever the framework chose. */
AVZ_INTERNAL
NSError *avz_as_code(NSError *_Nullable frameworkError, NSInteger code, NSString *what);

/* An error in NSPOSIXErrorDomain (errno `code`) with a description. */
AVZ_INTERNAL
NSError *avz_posix_error(int code, NSString *description);

/* Runs `body` in an autorelease pool and turns its result into the ABI's convention:
 * true and *out = NULL on success; false and *out = +1 error on failure. An Objective-C
 * exception from the framework becomes an error (code 1) instead of unwinding into the
 * caller (Rust cannot unwind a foreign exception: the process would abort). Every
 * @catch in the shim relies on -fobjc-arc-exceptions (build.rs, shim/check/clang-flags):
 * without it ARC does not release the objects held by the frames an exception unwinds. */
AVZ_INTERNAL
bool avz_run(CFErrorRef _Nullable *_Nullable out,
             NSError *_Nullable (^__attribute__((noescape)) body)(void));

/* A file URL for a NUL-terminated UTF-8 path (borrowed). */
AVZ_INTERNAL
NSURL *_Nullable avz_path_url(const char *_Nullable path, NSString *what, NSInteger code,
                              NSError *_Nullable *_Nonnull error);

/* "stopped", "running", "in the error state", ...: for "the virtual machine is %@". */
AVZ_INTERNAL
NSString *avz_state_name(NSInteger state);

/* An Objective-C exception raised by the framework, as an error (code 1): it must not
 * unwind through a dispatch work item (that aborts the process) and the operation's
 * completion is still due. */
AVZ_INTERNAL
NSError *avz_exception_error(NSException *exception, NSString *what);

/* ================================================================================== */
/* applevz_config.m: avz_config                                                       */
/* ================================================================================== */

/* A VZVirtualMachineConfiguration being built, plus the device lists the ABI appends
 * to one at a time. Each list is assigned to the configuration (as an immutable copy)
 * whenever a device is added, so `configuration` is always complete. */
@interface AVZConfiguration : NSObject
@property (nonatomic, readonly) VZVirtualMachineConfiguration *configuration;
@property (nonatomic, readonly) NSMutableArray<VZStorageDeviceConfiguration *> *storageDevices;
@property (nonatomic, readonly) NSMutableArray<VZNetworkDeviceConfiguration *> *networkDevices;
@property (nonatomic, readonly) NSMutableArray<VZSerialPortConfiguration *> *serialPorts;
- (void)addEntropyDevice:(VZEntropyDeviceConfiguration *)device;
- (void)addMemoryBalloonDevice:(VZMemoryBalloonDeviceConfiguration *)device;
- (void)addSocketDevice:(VZSocketDeviceConfiguration *)device;
- (void)addDirectorySharingDevice:(VZDirectorySharingDeviceConfiguration *)device
    API_AVAILABLE(macos(12.0));
- (void)addConsoleDevice:(VZConsoleDeviceConfiguration *)device API_AVAILABLE(macos(13.0));
- (void)addStorageDevice:(VZStorageDeviceConfiguration *)device;
- (void)addNetworkDevice:(VZNetworkDeviceConfiguration *)device;
- (void)addSerialPort:(VZSerialPortConfiguration *)port;
@end

/* Borrows the object behind an avz_config handle (+0). */
AVZ_INTERNAL
AVZConfiguration *_Nullable avz_config_object(avz_config *_Nullable config);

/* avz_run for a configuration function: an autorelease pool, a handle check, the
 * ABI's error convention. */
AVZ_INTERNAL
bool avz_config_run(avz_config *_Nullable config, CFErrorRef _Nullable *_Nullable error,
                    NSError *_Nullable (^__attribute__((noescape)) body)(AVZConfiguration *c));

/* ================================================================================== */
/* applevz_machine.m: avz_vm                                                          */
/* ================================================================================== */

@class AVZMachine, AVZListener;

typedef void (^AVZCompletionBlock)(NSError *_Nullable error);

/* Hands an operation's outcome to its C completion: `error` (borrowed here; the block
 * passes it on +1) and, for a vsock connection, the descriptor that now belongs to the
 * callee (-1 otherwise). Called exactly once, on the VM's queue (see AVZCompletion). */
typedef void (^AVZDeliverBlock)(NSError *_Nullable error, int descriptor);

/* No state implied (AVZCompletion's successState for a vsock connection). */
#define AVZ_NO_STATE ((NSInteger)-1)

/* An avz_vm: the queue, the VZVirtualMachine, its delegate and the observer. */
@interface AVZMachine : NSObject
/* The VM, for blocks running on the queue. Never nil once init succeeded. */
@property (nonatomic, readonly) VZVirtualMachine *vm;
/* A copy of the configuration the VM was made from (later changes to the avz_config do
 * not reach it), for validateSaveRestoreSupportWithError: before a save or restore. */
@property (nonatomic, readonly) VZVirtualMachineConfiguration *configuration;
@property (nonatomic, readonly) dispatch_queue_t queue;
/* The observer is stored at once but owned by the machine only once init succeeded: when
 * init fails (returns nil) the caller releases the observer context itself. */
- (nullable instancetype)initWithConfiguration:(nullable VZVirtualMachineConfiguration *)configuration
                                      observer:(nullable avz_state_observer_fn)observer
                               observerContext:(nullable void *)observerContext
                               observerRelease:(nullable avz_context_release_fn)observerRelease
                                         error:(NSError *_Nullable *_Nonnull)error;
/* Runs `block` on the queue and waits: inline when already on it, else dispatch_sync. */
- (void)syncOnQueue:(__attribute__((noescape)) dispatch_block_t)block;
/* Runs `block` on the queue later (always dispatch_async). */
- (void)asyncOnQueue:(dispatch_block_t)block;
/* Runs `block` on the queue: inline when already on it, else dispatch_async. */
- (void)performOnQueue:(dispatch_block_t)block;
/* Any thread: whether the caller runs on the VM's queue. */
- (BOOL)isOnQueue;
/* On the queue: installs `listener` for `port` (nil: removes it) in the listener table
 * and returns the listener it replaces, which the caller releases. */
- (nullable AVZListener *)exchangeListener:(nullable AVZListener *)listener forPort:(uint32_t)port;
@end

/* One asynchronous operation's completion. Called exactly once, on the VM's queue, in
 * its turn among the observer's events (see ORDER OF EVENTS); also when the framework
 * drops the handler without calling it. Keeps the machine alive until then. */
@interface AVZCompletion : NSObject
/* `successState`: the state a successful outcome from the framework implies
 * (AVZ_NO_STATE: none). */
- (instancetype)initWithMachine:(AVZMachine *)machine
                   successState:(NSInteger)successState
                        deliver:(AVZDeliverBlock)deliver;
/* Any thread, any number of times: the framework's outcome. Only the first outcome
 * (this or -refuseWithError:) counts. */
- (void)completeWithError:(nullable NSError *)error;
/* The same with a descriptor the completion takes over (vsock connect; -1 for none): an
 * outcome that does not count closes its descriptor. */
- (void)completeWithError:(nullable NSError *)error descriptor:(int)descriptor;
/* Any thread: an outcome the shim decided without the framework changing the state
 * (refused in the wrong state, not supported here, an exception): nothing to wait for. */
- (void)refuseWithError:(NSError *)error;
@end

/* Whether the caller runs on `queue`, a VM's queue (its queue-specific marker). */
AVZ_INTERNAL
BOOL avz_is_on_queue(dispatch_queue_t queue);

/* Borrows the object behind an avz_vm handle (+0). */
AVZ_INTERNAL
AVZMachine *_Nullable avz_machine(avz_vm *_Nullable vm);

/* The common shape of the asynchronous ABI functions: returns at once; `operation` runs
 * on the VM's queue and must end by calling `done` with the framework's outcome
 * (directly or as the framework's completion handler) or `refuse` with the shim's own
 * refusal. Either may be called any number of times from any thread; the completion runs
 * exactly once (see AVZCompletion), also when `operation` raises. A successful `done`
 * implies `successState` (see ORDER OF EVENTS). */
typedef void (^AVZOperationBlock)(VZVirtualMachine *virtualMachine, AVZCompletionBlock done,
                                  AVZCompletionBlock refuse);

AVZ_INTERNAL
void avz_vm_async(avz_vm *_Nullable vm, avz_completion_fn _Nullable completion,
                  void *_Nullable context, NSString *what, NSInteger successState,
                  AVZOperationBlock operation);

/* Reads a BOOL property of the VM on its queue. */
AVZ_INTERNAL
bool avz_vm_read_bool(avz_vm *_Nullable vm,
                      BOOL (^__attribute__((noescape)) getter)(VZVirtualMachine *));

/* The synchronous runtime-device functions: hops onto the VM's queue (inline when the
 * caller is already on it), runs `body` there with the framework's exceptions caught
 * (one must not unwind through dispatch_sync), and applies the ABI's error convention. */
typedef NSError *_Nullable (^AVZSyncBody)(AVZMachine *machine, VZVirtualMachine *virtualMachine);

AVZ_INTERNAL
bool avz_vm_sync(avz_vm *_Nullable vm, CFErrorRef _Nullable *_Nullable error, NSString *what,
                 __attribute__((noescape)) AVZSyncBody body);

/* ================================================================================== */
/* applevz_vsock.m: host vsock listeners                                              */
/* ================================================================================== */

/* A host vsock listener (avz_vm_vsock_listen): the VZVirtioSocketListener set on the
 * socket device, its delegate (this object: the framework's reference is weak, the
 * machine's listener table keeps it alive) and the owner of the caller's accept function
 * and context. The context is released exactly once, by -releaseContext, on the queue
 * (or before it was ever installed); no accept call starts after that. */
@interface AVZListener : NSObject <VZVirtioSocketListenerDelegate>
@property (nonatomic, readonly) VZVirtioSocketListener *socketListener;
- (instancetype)initWithQueue:(dispatch_queue_t)queue
                       accept:(avz_accept_fn)accept
                      context:(nullable void *)context
                      release:(nullable avz_context_release_fn)release;
/* On the queue (also for a listener never installed): no accept call from now on;
 * calls the release function, only the first time. */
- (void)releaseContext;
@end

NS_ASSUME_NONNULL_END

#endif /* APPLEVZ_INTERNAL_H */
