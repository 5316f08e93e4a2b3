/*
 * shim/applevz.m — include/applevz.h implemented over Apple's Virtualization.framework.
 *
 * ARC Objective-C (-fobjc-arc -fobjc-arc-exceptions), macOS only. Every function of the
 * ABI is a thin translation: lifecycle logic (waiting, timeouts, retries, policies) lives
 * in Rust. On other hosts the shim is only compile-checked (scripts/check-shim.sh)
 * against the declarations in shim/check/sdk/.
 *
 * This file holds the shim's design (below) and the ABI's virtual machine functions;
 * the rest is split by concern into shim/applevz_machine.m (AVZMachine, the order of
 * events, AVZCompletion), applevz_config.m, applevz_devices.m, applevz_vsock.m and
 * applevz_util.m, which share the private shim/applevz_internal.h. build.rs compiles
 * every .m file in shim/; the design below applies to all of them.
 *
 * QUEUE AFFINITY DISCIPLINE
 * =========================
 * 1. Each avz_vm (an AVZMachine) owns one private serial dispatch queue. Its
 *    VZVirtualMachine is created with -initWithConfiguration:queue: on that queue, and
 *    every message to it (calls, property reads, delegate and key-value-observer
 *    (un)registration, and its final release) happens on that queue. Since macOS 14
 *    the framework asserts this and traps otherwise.
 * 2. The queue carries a queue-specific marker (dispatch_queue_set_specific with the
 *    queue's own address as value). avz_is_on_queue() tests it with
 *    dispatch_get_specific; dispatch_get_specific also sees through queues targeting
 *    this one.
 * 3. Synchronous ABI functions (avz_vm_state, avz_vm_can_*, avz_vm_request_stop,
 *    avz_vm_balloon_target, avz_vm_set_balloon_target, avz_vm_vsock_listen,
 *    avz_vm_vsock_remove_listener) use -[AVZMachine syncOnQueue:]: the block runs
 *    inline when the caller is already on the VM's queue and via dispatch_sync
 *    otherwise. Apart from that and the first hop onto a brand-new queue in
 *    -initWithConfiguration:..., nothing in the shim calls dispatch_sync onto a VM's
 *    queue, so a caller that is already on the queue (a completion or observer
 *    callback) cannot deadlock.
 * 4. Asynchronous ABI functions (start, stop, pause, resume, save, restore,
 *    vsock connect) always dispatch_async onto the queue and return at once. Their
 *    completion (an AVZCompletion) is called exactly once, on the queue, never inside
 *    the ABI call itself (except with a NULL avz_vm: no queue, so inline): also when
 *    the shim refuses the operation (wrong state: code 4 for start, stop, pause and
 *    resume, checked with the framework's canStart/canStop/canPause/canResume; code 3
 *    for a vsock connect to a VM that is not running, code 2 without a socket device;
 *    not supported on this Mac: code 10), when the framework raises an Objective-C
 *    exception (code 1), when it calls the handler twice (the first call counts; a
 *    later connection's descriptor is closed), and when it releases the handler
 *    without calling it (code 1, from a work item of its own: see 9). A vsock
 *    connection's descriptor is duplicated (F_DUPFD_CLOEXEC) and the connection object
 *    closed at once: the callee owns the duplicate.
 * 5. Framework callbacks (completion handlers, delegate methods, key-value
 *    notifications) are documented to arrive on the queue. If one ever arrives
 *    elsewhere, -performOnQueue: forwards it with dispatch_async, so observer and
 *    completion callbacks into Rust still run only on the queue, in order.
 * 6. Callbacks into Rust must not block and must not call the synchronous functions
 *    (they would run inline, see 3, but that is not part of the contract). The shim
 *    itself never blocks its queue and never waits for its own completions.
 * 7. Host vsock listeners (AVZListener: the VZVirtioSocketListener's delegate, kept
 *    alive by the machine's listener table since the framework holds delegates weakly)
 *    accept every guest connection (the delegate answers YES), duplicate its
 *    descriptor, hand it to the accept function on the queue and close the connection
 *    object. The table is read and written on the queue only. Each listener's context
 *    is released exactly once, on the queue: when it is removed or replaced (from a
 *    callback, in a work item of its own, so never inside its own accept call), at
 *    teardown (see 8), or, when it could not be installed, before avz_vm_vsock_listen
 *    returns false. No accept call starts after the release.
 * 8. Lifetime: every AVZCompletion holds its AVZMachine strongly, and so does a
 *    completion waiting for its turn (see ORDER OF EVENTS), so a VM lives until each of
 *    its completions ran. The framework holds each completion handler it was given (and
 *    through it the AVZCompletion): an operation whose handler the framework neither
 *    calls nor releases therefore keeps the AVZMachine, its queue, the
 *    VZVirtualMachine (one of the host's limited VM slots) and the observer context
 *    alive until the process exits, whatever Rust releases; include/applevz.h documents
 *    this limit. When the last reference goes, -dealloc (on whatever thread dropped it,
 *    the queue included) never blocks and never touches the framework object inline: it
 *    dispatches one block onto the queue that removes the key-value observation, clears
 *    the delegate, releases the contexts of the vsock listeners still installed, then
 *    calls the observer's release function exactly once, and drops the last reference
 *    to the VZVirtualMachine, so the framework object is detached and destroyed on its
 *    queue, outside any of its own callouts. From the moment -dealloc begins no observer
 *    call can start (the delegate's reference to the machine is weak and reads nil).
 *    A machine whose framework object was never created (init failing) does not own
 *    the observer context: avz_vm_create releases it before returning NULL.
 * 9. No -dealloc in the shim calls the framework or Rust inline: AVZMachine and
 *    AVZCompletion (a handler dropped uncalled) hand that work to a work item on the
 *    queue (dispatch_async).
 *
 * ORDER OF EVENTS (what the Rust side relies on; the rule is stated in include/applevz.h)
 * ======================================================================================
 * STATE_CHANGED reports exactly the values the framework's key-value notifications for
 * `state` carry (NSKeyValueChangeNewKey), one event per notification whose value differs
 * from the state last reported, in the order they arrive: running -> stopping -> running
 * is reported as such, never collapsed, and `state` is not re-read to decide what to
 * report. Everything else that reaches the observer or a completion goes through one
 * line of AVZDelivery objects (-[AVZMachine enqueue:]), in the order it arrived, and
 * leaves it only when the state it implies has been reported:
 *   - a completion with the framework's success: the operation's end state (start and
 *     resume: running; pause, save and restore: paused; stop: stopped), or any settled
 *     (not transitional) state reported after the completion came;
 *   - a completion with the framework's error: a settled state;
 *   - GUEST_STOPPED and STOPPED_WITH_ERROR: stopped or error;
 *   - the shim's own refusals (wrong state, not supported, exceptions), a handler
 *     dropped uncalled, vsock connections and NETWORK_DISCONNECTED: nothing (they only
 *     keep their place in line).
 * The framework documents none of these orders, so none is assumed: whichever comes
 * first waits for the other. Last resort (-deliveryExpired:): a delivery still waiting
 * AVZ_HOLD_LIMIT_NS after it came means the notification it waits for did not come;
 * the shim then reads `state` once, reports it if it differs from the state last
 * reported, and lets everything up to that delivery through.
 *
 * Ownership: objects given to C/Rust leave with __bridge_retained (+1; released with
 * CFRelease) and are borrowed back with __bridge. NSError is toll-free bridged to
 * CFErrorRef. A framework call that fails without an NSError still yields an error
 * object (VZErrorDomain, with a description of what failed).
 *
 * Availability: the deployment target may be as old as macOS 12 (arm64 or x86_64).
 * Everything newer is behind @available (virtio-fs 12, block device identifier 12.3,
 * console ports, network MTU and Rosetta 13, NVMe and save/restore 14), and
 * save/restore and Rosetta additionally behind #if defined(__arm64__) because the SDK
 * declares them only for Apple silicon. An unavailable feature answers VZErrorDomain
 * code 10 (AVZ_ERROR_NOT_SUPPORTED) "... is not supported on this Mac (needs ...)"
 * instead of failing to build or trapping at run time.
 *
 * Checked off a Mac (scripts/check-shim.sh): that this file compiles with zero
 * diagnostics for arm64/x86_64 and macOS 11/12/14 deployment targets against
 * hand-written declarations, and that its object defines and exports every function
 * include/applevz.h declares (and no other avz_ function). Only a Mac can show the
 * run-time facts this file relies on: that key-value notifications for `state` and
 * delegate calls arrive on the VM's queue, that the framework sends a notification for
 * every state an operation ends in (otherwise a completion waits AVZ_HOLD_LIMIT_NS, see
 * ORDER OF EVENTS), in which order it sends them, completion handlers and
 * guestDidStopVirtualMachine: / virtualMachine:didStopWithError: /
 * virtualMachine:networkDevice:attachmentWasDisconnectedWithError:, that
 * VZVirtualMachine.networkDevices lists the devices in the configuration's order, that
 * canStart/canStop/canPause/canResume are exactly the framework's own refusal
 * conditions, and the error codes it reports for save and restore refused in the wrong
 * state (documented as 3 and 4). Likewise for the devices: on which queue the framework
 * calls connectToPort:'s handler and the socket listener's delegate, what connectToPort:
 * reports when nothing listens on the guest port (and whether it calls the handler at
 * all), the codes of the framework's validation errors (block device identifier, tag,
 * directory name, MTU), what initWithError: reports when Rosetta is not installed, and
 * that a file-handle network attachment and console ports work over the duplicated
 * descriptors.
 */

#include "applevz_internal.h"

NS_ASSUME_NONNULL_BEGIN

/* The ABI's constants are the framework's raw values (checked where the framework's own
 * constants exist on every supported macOS). */
_Static_assert(AVZ_STATE_STOPPED == VZVirtualMachineStateStopped, "state raw values");
_Static_assert(AVZ_STATE_RUNNING == VZVirtualMachineStateRunning, "state raw values");
_Static_assert(AVZ_STATE_PAUSED == VZVirtualMachineStatePaused, "state raw values");
_Static_assert(AVZ_STATE_ERROR == VZVirtualMachineStateError, "state raw values");
_Static_assert(AVZ_STATE_STARTING == VZVirtualMachineStateStarting, "state raw values");
_Static_assert(AVZ_STATE_PAUSING == VZVirtualMachineStatePausing, "state raw values");
_Static_assert(AVZ_STATE_RESUMING == VZVirtualMachineStateResuming, "state raw values");
_Static_assert(AVZ_ERROR_INTERNAL == VZErrorInternal, "error codes");
_Static_assert(AVZ_ERROR_INVALID_CONFIGURATION == VZErrorInvalidVirtualMachineConfiguration,
               "error codes");
_Static_assert(AVZ_ERROR_INVALID_STATE == VZErrorInvalidVirtualMachineState, "error codes");
_Static_assert(AVZ_ERROR_INVALID_STATE_TRANSITION == VZErrorInvalidVirtualMachineStateTransition,
               "error codes");
_Static_assert(AVZ_ERROR_INVALID_DISK_IMAGE == VZErrorInvalidDiskImage, "error codes");

/* An operation refused because the VM is in the wrong state: the ABI's code 4
 * (AVZ_ERROR_INVALID_STATE_TRANSITION), whatever the framework would have said. */
static NSError *avz_refused(NSString *operation, NSInteger state)
{
    return avz_error(AVZ_ERROR_INVALID_STATE_TRANSITION,
                     [NSString stringWithFormat:@"Cannot %@ the virtual machine: it is %@", operation,
                                                avz_state_name(state)]);
}

/* On the queue: the VM's traditional memory balloon when the VM is running or paused;
 * otherwise nil and *error (code 2 without a balloon, code 3 in another state). */
static VZVirtioTraditionalMemoryBalloonDevice *_Nullable avz_balloon_device(
    VZVirtualMachine *virtualMachine, NSString *what, NSError *_Nullable *_Nonnull error)
{
    VZVirtioTraditionalMemoryBalloonDevice *balloon = nil;
    NSArray<VZMemoryBalloonDevice *> *devices = virtualMachine.memoryBalloonDevices;
    for (NSUInteger i = 0; i < devices.count && balloon == nil; i++) {
        if ([devices[i] isKindOfClass:[VZVirtioTraditionalMemoryBalloonDevice class]]) {
            balloon = (VZVirtioTraditionalMemoryBalloonDevice *)devices[i];
        }
    }
    if (balloon == nil) {
        *error = avz_error(AVZ_ERROR_INVALID_CONFIGURATION,
                           [NSString stringWithFormat:@"Cannot %@ the memory balloon target: the "
                                                      @"virtual machine has no memory balloon "
                                                      @"device",
                                                      what]);
        return nil;
    }
    NSInteger state = virtualMachine.state;
    if (state != AVZ_STATE_RUNNING && state != AVZ_STATE_PAUSED) {
        *error = avz_error(AVZ_ERROR_INVALID_STATE,
                           [NSString stringWithFormat:@"Cannot %@ the memory balloon target: the "
                                                      @"virtual machine is %@, not running or "
                                                      @"paused",
                                                      what, avz_state_name(state)]);
        return nil;
    }
    return balloon;
}

NS_ASSUME_NONNULL_END

/* ================================================================================== */
/* Virtual machine                                                                    */
/* ================================================================================== */

avz_vm *avz_vm_create(avz_config *config, avz_state_observer_fn observer, void *observer_context,
                      avz_context_release_fn observer_release, CFErrorRef *error)
{
    __block AVZMachine *machine = nil;
    bool created = avz_run(error, ^NSError *_Nullable {
        NSError *failure = nil;
        machine = [[AVZMachine alloc] initWithConfiguration:avz_config_object(config).configuration
                                                   observer:observer
                                            observerContext:observer_context
                                            observerRelease:observer_release
                                                      error:&failure];
        if (machine != nil) {
            return nil;
        }
        return failure != nil ? failure
                              : avz_error(AVZ_ERROR_INTERNAL, @"cannot create the virtual machine");
    });
    if (!created) {
        /* No machine owns the observer context (a failed init leaves it to us, and its
         * -dealloc never calls out): released here, exactly once, inline on the caller's
         * thread, before NULL is returned. */
        machine = nil;
        if (observer_release != NULL) {
            observer_release(observer_context);
        }
        return NULL;
    }
    return (__bridge_retained avz_vm *)machine;
}

/* start, stop, pause and resume are first checked with the framework's own predicate
 * (canStart, canStop, canPause, canResume, read on the queue in the same work item), so
 * a refusal carries the ABI's code 4 whatever code the framework itself would use: Rust
 * relies on it to tell "already stopped" from a failed stop. Save and restore leave the
 * check to the framework, which documents their codes (3 for save, 4 for restore).
 * A refusal by the shim changes no state: its completion waits for nothing (see ORDER
 * OF EVENTS); the framework's outcome waits for the state it implies. */

void avz_vm_start(avz_vm *vm, avz_completion_fn completion, void *context)
{
    avz_vm_async(vm, completion, context, @"start", AVZ_STATE_RUNNING,
                 ^(VZVirtualMachine *virtualMachine, AVZCompletionBlock done,
                   AVZCompletionBlock refuse) {
                     if (!virtualMachine.canStart) {
                         refuse(avz_refused(@"start", virtualMachine.state));
                         return;
                     }
                     [virtualMachine startWithCompletionHandler:done];
                 });
}

void avz_vm_stop(avz_vm *vm, avz_completion_fn completion, void *context)
{
    avz_vm_async(vm, completion, context, @"stop", AVZ_STATE_STOPPED,
                 ^(VZVirtualMachine *virtualMachine, AVZCompletionBlock done,
                   AVZCompletionBlock refuse) {
                     if (@available(macOS 12, *)) {
                         if (!virtualMachine.canStop) {
                             refuse(avz_refused(@"stop", virtualMachine.state));
                             return;
                         }
                         [virtualMachine stopWithCompletionHandler:done];
                     } else {
                         refuse(avz_not_supported(@"A forced stop", @"macOS 12"));
                     }
                 });
}

void avz_vm_pause(avz_vm *vm, avz_completion_fn completion, void *context)
{
    avz_vm_async(vm, completion, context, @"pause", AVZ_STATE_PAUSED,
                 ^(VZVirtualMachine *virtualMachine, AVZCompletionBlock done,
                   AVZCompletionBlock refuse) {
                     if (!virtualMachine.canPause) {
                         refuse(avz_refused(@"pause", virtualMachine.state));
                         return;
                     }
                     [virtualMachine pauseWithCompletionHandler:done];
                 });
}

void avz_vm_resume(avz_vm *vm, avz_completion_fn completion, void *context)
{
    avz_vm_async(vm, completion, context, @"resume", AVZ_STATE_RUNNING,
                 ^(VZVirtualMachine *virtualMachine, AVZCompletionBlock done,
                   AVZCompletionBlock refuse) {
                     if (!virtualMachine.canResume) {
                         refuse(avz_refused(@"resume", virtualMachine.state));
                         return;
                     }
                     [virtualMachine resumeWithCompletionHandler:done];
                 });
}

#if defined(__arm64__)
/* Apple: save and restore need a configuration that supports them
 * (validateSaveRestoreSupportWithError:), and the framework is reported to raise rather
 * than fail otherwise. Checked first on the VM's copy of its configuration: nil when it
 * can, else `code` (11 for save, 12 for restore) wrapping the framework's reason. */
static NSError *_Nullable avz_save_restore_refusal(VZVirtualMachineConfiguration *configuration,
                                                    NSInteger code, NSString *what)
    API_AVAILABLE(macos(14.0))
{
    NSError *reason = nil;
    if ([configuration validateSaveRestoreSupportWithError:&reason]) {
        return nil;
    }
    return avz_error_with(code,
                          [NSString stringWithFormat:@"Cannot %@ the virtual machine state: this "
                                                     @"configuration cannot be saved or restored",
                                                     what],
                          reason, nil);
}
#endif

/* Save ends where it began (paused, through saving); restore ends paused (through
 * restoring). Both first check that the configuration can be saved at all. */
void avz_vm_save_state(avz_vm *vm, const char *path, avz_completion_fn completion, void *context)
{
#if defined(__arm64__)
    @autoreleasepool {
        /* `path` is borrowed for this call only: turn it into a URL now. */
        NSError *invalid = nil;
        NSURL *url = avz_path_url(path, @"saved state", AVZ_ERROR_SAVE, &invalid);
        VZVirtualMachineConfiguration *configuration = avz_machine(vm).configuration;
        avz_vm_async(vm, completion, context, @"save", AVZ_STATE_PAUSED,
                     ^(VZVirtualMachine *virtualMachine, AVZCompletionBlock done,
                       AVZCompletionBlock refuse) {
                         if (url == nil) {
                             refuse(invalid);
                         } else if (@available(macOS 14, *)) {
                             NSError *unsavable = avz_save_restore_refusal(configuration,
                                                                           AVZ_ERROR_SAVE,
                                                                           @"save");
                             if (unsavable != nil) {
                                 refuse(unsavable);
                                 return;
                             }
                             [virtualMachine saveMachineStateToURL:url completionHandler:done];
                         } else {
                             refuse(avz_not_supported(@"Saving a virtual machine's state",
                                                      @"macOS 14"));
                         }
                     });
    }
#else
    (void)path;
    avz_vm_async(vm, completion, context, @"save", AVZ_STATE_PAUSED,
                 ^(VZVirtualMachine *virtualMachine, AVZCompletionBlock done,
                   AVZCompletionBlock refuse) {
                     (void)virtualMachine;
                     (void)done;
                     refuse(avz_not_supported(@"Saving a virtual machine's state",
                                              @"Apple silicon and macOS 14"));
                 });
#endif
}

/* The Rust side restores only into a VM object that never ran (a fresh avz_vm_create):
 * Apple does not document restoring into a VZVirtualMachine that already did. */
void avz_vm_restore_state(avz_vm *vm, const char *path, avz_completion_fn completion,
                          void *context)
{
#if defined(__arm64__)
    @autoreleasepool {
        NSError *invalid = nil;
        NSURL *url = avz_path_url(path, @"saved state", AVZ_ERROR_RESTORE, &invalid);
        VZVirtualMachineConfiguration *configuration = avz_machine(vm).configuration;
        avz_vm_async(vm, completion, context, @"restore", AVZ_STATE_PAUSED,
                     ^(VZVirtualMachine *virtualMachine, AVZCompletionBlock done,
                       AVZCompletionBlock refuse) {
                         if (url == nil) {
                             refuse(invalid);
                         } else if (@available(macOS 14, *)) {
                             NSError *unsavable = avz_save_restore_refusal(configuration,
                                                                           AVZ_ERROR_RESTORE,
                                                                           @"restore");
                             if (unsavable != nil) {
                                 refuse(unsavable);
                                 return;
                             }
                             [virtualMachine restoreMachineStateFromURL:url
                                                      completionHandler:done];
                         } else {
                             refuse(avz_not_supported(@"Restoring a virtual machine's state",
                                                      @"macOS 14"));
                         }
                     });
    }
#else
    (void)path;
    avz_vm_async(vm, completion, context, @"restore", AVZ_STATE_PAUSED,
                 ^(VZVirtualMachine *virtualMachine, AVZCompletionBlock done,
                   AVZCompletionBlock refuse) {
                     (void)virtualMachine;
                     (void)done;
                     refuse(avz_not_supported(@"Restoring a virtual machine's state",
                                              @"Apple silicon and macOS 14"));
                 });
#endif
}

bool avz_vm_request_stop(avz_vm *vm, CFErrorRef *error)
{
    return avz_vm_sync(vm, error, @"request stop",
                       ^NSError *_Nullable(AVZMachine *machine, VZVirtualMachine *virtualMachine) {
        (void)machine;
        /* The framework's own predicate first: the ABI promises code 3 when the guest
         * cannot be asked (the framework documents only NO + an error). */
        if (!virtualMachine.canRequestStop) {
            return avz_error(AVZ_ERROR_INVALID_STATE,
                             [NSString stringWithFormat:@"Cannot ask the guest to stop: the "
                                                        @"virtual machine is %@ (canRequestStop "
                                                        @"is false; only a running guest can be "
                                                        @"asked)",
                                                        avz_state_name(virtualMachine.state)]);
        }
        NSError *frameworkError = nil;
        if (![virtualMachine requestStopWithError:&frameworkError]) {
            return avz_or(frameworkError, AVZ_ERROR_INVALID_STATE,
                          @"the guest cannot be asked to stop in the virtual machine's current "
                          @"state");
        }
        return nil;
    });
}

int32_t avz_vm_state(avz_vm *vm)
{
    AVZMachine *machine = avz_machine(vm);
    if (machine == nil) {
        return AVZ_STATE_ERROR;
    }
    __block NSInteger state = AVZ_STATE_ERROR;
    [machine syncOnQueue:^{
        /* An exception reads as the error state (as a NULL handle does). */
        if (!avz_try(^{
                state = machine.vm.state;
            })) {
            state = AVZ_STATE_ERROR;
        }
    }];
    return (int32_t)state;
}

bool avz_vm_can_start(avz_vm *vm)
{
    return avz_vm_read_bool(vm, ^BOOL(VZVirtualMachine *virtualMachine) {
        return virtualMachine.canStart;
    });
}

bool avz_vm_can_stop(avz_vm *vm)
{
    return avz_vm_read_bool(vm, ^BOOL(VZVirtualMachine *virtualMachine) {
        if (@available(macOS 12, *)) {
            return virtualMachine.canStop;
        }
        return NO;
    });
}

bool avz_vm_can_pause(avz_vm *vm)
{
    return avz_vm_read_bool(vm, ^BOOL(VZVirtualMachine *virtualMachine) {
        return virtualMachine.canPause;
    });
}

bool avz_vm_can_resume(avz_vm *vm)
{
    return avz_vm_read_bool(vm, ^BOOL(VZVirtualMachine *virtualMachine) {
        return virtualMachine.canResume;
    });
}

bool avz_vm_can_request_stop(avz_vm *vm)
{
    return avz_vm_read_bool(vm, ^BOOL(VZVirtualMachine *virtualMachine) {
        return virtualMachine.canRequestStop;
    });
}

/* ================================================================================== */
/* Runtime devices                                                                    */
/* ================================================================================== */

bool avz_vm_balloon_target(avz_vm *vm, uint64_t *bytes, CFErrorRef *error)
{
    return avz_vm_sync(vm, error, @"read the memory balloon target",
                       ^NSError *_Nullable(AVZMachine *machine, VZVirtualMachine *virtualMachine) {
                           (void)machine;
                           NSError *failure = nil;
                           VZVirtioTraditionalMemoryBalloonDevice *balloon =
                               avz_balloon_device(virtualMachine, @"read", &failure);
                           if (balloon == nil) {
                               return failure;
                           }
                           uint64_t target = balloon.targetVirtualMachineMemorySize;
                           if (bytes != NULL) {
                               *bytes = target;
                           }
                           return nil;
                       });
}

bool avz_vm_set_balloon_target(avz_vm *vm, uint64_t bytes, CFErrorRef *error)
{
    return avz_vm_sync(vm, error, @"set the memory balloon target",
                       ^NSError *_Nullable(AVZMachine *machine, VZVirtualMachine *virtualMachine) {
                           (void)machine;
                           NSError *failure = nil;
                           VZVirtioTraditionalMemoryBalloonDevice *balloon =
                               avz_balloon_device(virtualMachine, @"set", &failure);
                           if (balloon == nil) {
                               return failure;
                           }
                           /* The framework rounds down to a MiB and clamps. */
                           balloon.targetVirtualMachineMemorySize = bytes;
                           return nil;
                       });
}
