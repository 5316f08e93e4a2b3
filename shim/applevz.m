/*
 * shim/applevz.m — include/applevz.h implemented over Apple's Virtualization.framework.
 *
 * ARC Objective-C (-fobjc-arc), macOS only. Every function of the ABI is a thin
 * translation: lifecycle logic (waiting, timeouts, retries, policies) lives in Rust.
 * On other hosts this file is only compile-checked (scripts/check-shim.sh) against the
 * declarations in shim/check/sdk/.
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
 *    -initWithConfiguration:..., nothing in this file calls dispatch_sync onto a VM's
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
 * 9. No -dealloc in this file calls the framework or Rust inline: AVZMachine and
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
#error "shim/applevz.m must be compiled with -fobjc-arc"
#endif

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

/* Queue-specific key (its address) and key-value-observing context (its address). */
static char kAVZQueueKey;
static char kAVZStateObservation;

/* ================================================================================== */
/* Errors                                                                             */
/* ================================================================================== */

/* An error in VZErrorDomain with a description, optionally wrapping another error. */
static NSError *avz_error_with(NSInteger code, NSString *description,
                               NSError *_Nullable underlying, NSString *_Nullable path)
{
    NSMutableDictionary<NSErrorUserInfoKey, id> *info = [NSMutableDictionary dictionary];
    info[NSLocalizedDescriptionKey] = description;
    if (underlying != nil) {
        info[NSUnderlyingErrorKey] = underlying;
    }
    if (path != nil) {
        info[NSFilePathErrorKey] = path;
    }
    return [NSError errorWithDomain:VZErrorDomain code:code userInfo:info];
}

static NSError *avz_error(NSInteger code, NSString *description)
{
    return avz_error_with(code, description, nil, nil);
}

/* VZErrorDomain code 10 for a feature this Mac (or this build) does not have. */
static NSError *avz_not_supported(NSString *feature, NSString *needs)
{
    return avz_error(AVZ_ERROR_NOT_SUPPORTED,
                     [NSString stringWithFormat:@"%@ is not supported on this Mac (needs %@)",
                                                feature, needs]);
}

/* The framework's error for a call that reported failure, or one made here when the
 * framework gave none: a failing call never yields NULL-with-false. */
static NSError *avz_or(NSError *_Nullable frameworkError, NSInteger code, NSString *description)
{
    return frameworkError != nil ? frameworkError : avz_error(code, description);
}

/* `frameworkError` as VZErrorDomain code `code`: kept when it already is one, otherwise
 * wrapped ("<what>: <its description>", the original as the underlying error), so the
 * ABI's documented code holds whatever the framework chose. */
static NSError *avz_as_code(NSError *_Nullable frameworkError, NSInteger code, NSString *what)
{
    if (frameworkError == nil) {
        return avz_error(code, what);
    }
    if ([frameworkError.domain isEqualToString:VZErrorDomain] && frameworkError.code == code) {
        return frameworkError;
    }
    return avz_error_with(code,
                          [NSString stringWithFormat:@"%@: %@", what,
                                                     frameworkError.localizedDescription],
                          frameworkError, nil);
}

/* An error in NSPOSIXErrorDomain (errno `code`) with a description. */
static NSError *avz_posix_error(int code, NSString *description)
{
    return [NSError errorWithDomain:NSPOSIXErrorDomain
                               code:code
                           userInfo:@{NSLocalizedDescriptionKey : description}];
}

/* Runs `body` in an autorelease pool and turns its result into the ABI's convention:
 * true and *out = NULL on success; false and *out = +1 error on failure. An Objective-C
 * exception from the framework becomes an error (code 1) instead of unwinding into the
 * caller (Rust cannot unwind a foreign exception: the process would abort). Every
 * @catch in this file relies on -fobjc-arc-exceptions (build.rs, shim/check/clang-flags):
 * without it ARC does not release the objects held by the frames an exception unwinds. */
static bool avz_run(CFErrorRef _Nullable *_Nullable out,
                    NSError *_Nullable (^__attribute__((noescape)) body)(void))
{
    if (out != NULL) {
        *out = NULL;
    }
    NSError *failure = nil;
    @autoreleasepool {
        @try {
            failure = body();
        } @catch (NSException *exception) {
            NSString *reason = exception.reason;
            failure = avz_error(AVZ_ERROR_INTERNAL,
                                [NSString stringWithFormat:@"the framework raised %@ (%@)",
                                                           exception.name,
                                                           reason != nil ? reason
                                                                         : @"no reason given"]);
        }
    }
    if (failure == nil) {
        return true;
    }
    if (out != NULL) {
        *out = (__bridge_retained CFErrorRef)failure;
    }
    return false;
}

/* ================================================================================== */
/* Paths and files                                                                    */
/* ================================================================================== */

/* A file URL for a NUL-terminated UTF-8 path (borrowed). */
static NSURL *_Nullable avz_path_url(const char *_Nullable path, NSString *what, NSInteger code,
                                     NSError *_Nullable *_Nonnull error)
{
    NSString *string = path != NULL ? [NSString stringWithUTF8String:path] : nil;
    if (string == nil || string.length == 0) {
        *error = avz_error(code, [NSString stringWithFormat:@"the %@ path is missing, empty or "
                                                            @"not valid UTF-8",
                                                            what]);
        return nil;
    }
    return [NSURL fileURLWithPath:string];
}

/* A file URL for a path that must exist. A missing file is a configuration error
 * (VZErrorDomain code `code`) that wraps the file system's own error. */
static NSURL *_Nullable avz_existing_file_url(const char *_Nullable path, NSString *what,
                                              NSInteger code, NSError *_Nullable *_Nonnull error)
{
    NSURL *url = avz_path_url(path, what, code, error);
    if (url == nil) {
        return nil;
    }
    NSError *reachability = nil;
    if (![url checkResourceIsReachableAndReturnError:&reachability]) {
        *error = avz_error_with(code,
                                [NSString stringWithFormat:@"the %@ %@ does not exist or cannot "
                                                           @"be reached",
                                                           what, url.path],
                                reachability, url.path);
        return nil;
    }
    return url;
}

/* A borrowed NUL-terminated UTF-8 string. NULL or invalid UTF-8: nil and a VZErrorDomain
 * error with code `code` naming `what`. */
static NSString *_Nullable avz_string(const char *_Nullable text, NSString *what, NSInteger code,
                                      NSError *_Nullable *_Nonnull error)
{
    NSString *string = text != NULL ? [NSString stringWithUTF8String:text] : nil;
    if (string == nil) {
        *error = avz_error(code, [NSString stringWithFormat:@"the %@ is missing or not valid UTF-8",
                                                            what]);
    }
    return string;
}

/* A duplicate of `fd` (borrowed) as a file handle that closes the duplicate when it is
 * deallocated; `purpose` ("reading from the serial port") names it in errors.
 * fd == -1 means "this direction is not used": nil without an error. */
static NSFileHandle *_Nullable avz_duplicate_handle(int fd, NSString *purpose,
                                                   NSError *_Nullable *_Nonnull error)
{
    if (fd == -1) {
        return nil;
    }
    int duplicate = fd < 0 ? -1 : fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (duplicate < 0) {
        int code = fd < 0 ? EBADF : errno;
        *error = avz_posix_error(code, [NSString stringWithFormat:@"cannot use descriptor %d for "
                                                                  @"%@: %s",
                                                                  fd, purpose, strerror(code)]);
        return nil;
    }
    return [[NSFileHandle alloc] initWithFileDescriptor:duplicate closeOnDealloc:YES];
}

/* A VZMACAddress from "xx:xx:xx:xx:xx:xx" (borrowed), or a random locally administered
 * one for NULL. A bad address is a configuration error (code 2). */
static VZMACAddress *_Nullable avz_mac_address(const char *_Nullable mac_address,
                                               NSError *_Nullable *_Nonnull error)
{
    if (mac_address == NULL) {
        return [VZMACAddress randomLocallyAdministeredAddress];
    }
    NSString *string = [NSString stringWithUTF8String:mac_address];
    VZMACAddress *address = string != nil ? [[VZMACAddress alloc] initWithString:string] : nil;
    if (address == nil) {
        *error = avz_error(AVZ_ERROR_INVALID_CONFIGURATION,
                           [NSString stringWithFormat:@"\"%s\" is not a MAC address (expected "
                                                      @"xx:xx:xx:xx:xx:xx)",
                                                      mac_address]);
    }
    return address;
}

/* A VZDiskImageStorageDeviceAttachment for a disk image at `path` (borrowed). Modes other
 * than automatic caching and full synchronization need macOS 12. */
static VZDiskImageStorageDeviceAttachment *_Nullable avz_disk_attachment(
    const char *_Nullable path, bool read_only, int32_t caching_mode, int32_t sync_mode,
    NSError *_Nullable *_Nonnull error)
{
    if (caching_mode < AVZ_CACHING_AUTOMATIC || caching_mode > AVZ_CACHING_CACHED) {
        *error = avz_error(AVZ_ERROR_INVALID_CONFIGURATION,
                           [NSString stringWithFormat:@"unknown disk caching mode %d", caching_mode]);
        return nil;
    }
    if (sync_mode < AVZ_SYNC_FULL || sync_mode > AVZ_SYNC_NONE) {
        *error = avz_error(AVZ_ERROR_INVALID_CONFIGURATION,
                           [NSString stringWithFormat:@"unknown disk synchronization mode %d",
                                                      sync_mode]);
        return nil;
    }
    NSError *failure = nil;
    NSURL *url = avz_path_url(path, @"disk image", AVZ_ERROR_INVALID_CONFIGURATION, &failure);
    if (url == nil) {
        *error = (NSError *_Nonnull)failure;
        return nil;
    }
    VZDiskImageStorageDeviceAttachment *attachment = nil;
    if (@available(macOS 12, *)) {
        attachment = [[VZDiskImageStorageDeviceAttachment alloc]
                    initWithURL:url
                       readOnly:read_only
                    cachingMode:(VZDiskImageCachingMode)caching_mode
            synchronizationMode:(VZDiskImageSynchronizationMode)sync_mode
                          error:&failure];
    } else {
        if (caching_mode != AVZ_CACHING_AUTOMATIC || sync_mode != AVZ_SYNC_FULL) {
            *error = avz_not_supported(@"A disk caching or synchronization mode other than "
                                       @"automatic/full",
                                       @"macOS 12");
            return nil;
        }
        attachment = [[VZDiskImageStorageDeviceAttachment alloc] initWithURL:url
                                                                    readOnly:read_only
                                                                       error:&failure];
    }
    if (attachment == nil) {
        *error = avz_or(failure, AVZ_ERROR_INVALID_DISK_IMAGE,
                        [NSString stringWithFormat:@"cannot attach the disk image %@", url.path]);
    }
    return attachment;
}

/* A virtio-fs tag (borrowed) checked with +[VZVirtioFileSystemDeviceConfiguration
 * validateTag:error:]; an invalid one is a configuration error (code 2). */
static NSString *_Nullable avz_share_tag(const char *_Nullable tag,
                                         NSError *_Nullable *_Nonnull error)
    API_AVAILABLE(macos(12.0))
{
    NSString *string = avz_string(tag, @"directory share tag", AVZ_ERROR_INVALID_CONFIGURATION,
                                  error);
    if (string == nil) {
        return nil;
    }
    NSError *invalid = nil;
    if (![VZVirtioFileSystemDeviceConfiguration validateTag:string error:&invalid]) {
        *error = avz_as_code(invalid, AVZ_ERROR_INVALID_CONFIGURATION,
                             [NSString stringWithFormat:@"the directory share tag \"%@\" is not "
                                                        @"valid",
                                                        string]);
        return nil;
    }
    return string;
}

/* A VZSharedDirectory for `path` (borrowed), which must be an existing directory
 * (following symbolic links). Otherwise a file-system error (NSPOSIXErrorDomain): the
 * framework itself would only complain when the VM starts. */
static VZSharedDirectory *_Nullable avz_shared_directory(const char *_Nullable path,
                                                         bool read_only,
                                                         NSError *_Nullable *_Nonnull error)
    API_AVAILABLE(macos(12.0))
{
    NSString *string = path != NULL ? [NSString stringWithUTF8String:path] : nil;
    if (string == nil || string.length == 0) {
        *error = avz_posix_error(ENOENT, @"cannot share a directory: the path is missing, empty "
                                         @"or not valid UTF-8");
        return nil;
    }
    if (access(path, F_OK) != 0) {
        int code = errno;
        *error = avz_posix_error(code, [NSString stringWithFormat:@"cannot share the directory "
                                                                  @"%@: %s",
                                                                  string, strerror(code)]);
        return nil;
    }
    BOOL isDirectory = NO;
    if (![NSFileManager.defaultManager fileExistsAtPath:string isDirectory:&isDirectory] ||
        !isDirectory) {
        *error = avz_posix_error(ENOTDIR, [NSString stringWithFormat:@"cannot share the directory "
                                                                     @"%@: it is not a directory",
                                                                     string]);
        return nil;
    }
    return [[VZSharedDirectory alloc] initWithURL:[NSURL fileURLWithPath:string isDirectory:YES]
                                         readOnly:read_only];
}

static uint32_t avz_clamp_u32(NSUInteger value)
{
    return value > UINT32_MAX ? UINT32_MAX : (uint32_t)value;
}

/* ================================================================================== */
/* avz_config: AVZConfiguration                                                       */
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
@end

@implementation AVZConfiguration {
    NSMutableArray<VZEntropyDeviceConfiguration *> *_entropyDevices;
    NSMutableArray<VZMemoryBalloonDeviceConfiguration *> *_memoryBalloonDevices;
    NSMutableArray<VZSocketDeviceConfiguration *> *_socketDevices;
    /* Element types newer than macOS 11/12: kept untyped here, typed where they are
     * added and assigned (behind @available). */
    NSMutableArray *_directorySharingDevices; /* VZDirectorySharingDeviceConfiguration, 12 */
    NSMutableArray *_consoleDevices;          /* VZConsoleDeviceConfiguration, 13 */
}

- (instancetype)init
{
    self = [super init];
    if (self != nil) {
        _configuration = [[VZVirtualMachineConfiguration alloc] init];
        _storageDevices = [NSMutableArray array];
        _networkDevices = [NSMutableArray array];
        _serialPorts = [NSMutableArray array];
        _entropyDevices = [NSMutableArray array];
        _memoryBalloonDevices = [NSMutableArray array];
        _socketDevices = [NSMutableArray array];
        _directorySharingDevices = [NSMutableArray array];
        _consoleDevices = [NSMutableArray array];
    }
    return self;
}

- (void)addEntropyDevice:(VZEntropyDeviceConfiguration *)device
{
    [_entropyDevices addObject:device];
    _configuration.entropyDevices = [_entropyDevices copy];
}

- (void)addMemoryBalloonDevice:(VZMemoryBalloonDeviceConfiguration *)device
{
    [_memoryBalloonDevices addObject:device];
    _configuration.memoryBalloonDevices = [_memoryBalloonDevices copy];
}

- (void)addSocketDevice:(VZSocketDeviceConfiguration *)device
{
    [_socketDevices addObject:device];
    _configuration.socketDevices = [_socketDevices copy];
}

- (void)addDirectorySharingDevice:(VZDirectorySharingDeviceConfiguration *)device
{
    [_directorySharingDevices addObject:device];
    _configuration.directorySharingDevices = [_directorySharingDevices copy];
}

- (void)addConsoleDevice:(VZConsoleDeviceConfiguration *)device
{
    [_consoleDevices addObject:device];
    _configuration.consoleDevices = [_consoleDevices copy];
}

- (void)addStorageDevice:(VZStorageDeviceConfiguration *)device
{
    [_storageDevices addObject:device];
    _configuration.storageDevices = [_storageDevices copy];
}

- (void)addNetworkDevice:(VZNetworkDeviceConfiguration *)device
{
    [_networkDevices addObject:device];
    _configuration.networkDevices = [_networkDevices copy];
}

- (void)addSerialPort:(VZSerialPortConfiguration *)port
{
    [_serialPorts addObject:port];
    _configuration.serialPorts = [_serialPorts copy];
}

@end

/* Borrows the object behind an avz_config handle (+0). */
static AVZConfiguration *_Nullable avz_config_object(avz_config *_Nullable config)
{
    return (__bridge AVZConfiguration *)(void *)config;
}

/* avz_run for a configuration function: an autorelease pool, a handle check, the
 * ABI's error convention. */
static bool avz_config_run(avz_config *_Nullable config, CFErrorRef _Nullable *_Nullable error,
                           NSError *_Nullable (^__attribute__((noescape)) body)(AVZConfiguration *c))
{
    return avz_run(error, ^NSError *_Nullable {
        AVZConfiguration *c = avz_config_object(config);
        if (c == nil) {
            return avz_error(AVZ_ERROR_INTERNAL, @"no configuration (NULL avz_config handle)");
        }
        return body(c);
    });
}

/* ================================================================================== */
/* avz_vm: AVZMachine and its delegate                                                */
/* ================================================================================== */

typedef void (^AVZCompletionBlock)(NSError *_Nullable error);

/* Hands an operation's outcome to its C completion: `error` (borrowed here; the block
 * passes it on +1) and, for a vsock connection, the descriptor that now belongs to the
 * callee (-1 otherwise). Called exactly once, on the VM's queue (see AVZCompletion). */
typedef void (^AVZDeliverBlock)(NSError *_Nullable error, int descriptor);

static BOOL avz_is_on_queue(dispatch_queue_t queue)
{
    return dispatch_get_specific(&kAVZQueueKey) == (__bridge void *)queue;
}

/* The states that last only while an operation is under way. */
static BOOL avz_state_is_transitional(NSInteger state)
{
    switch (state) {
    case AVZ_STATE_STARTING:
    case AVZ_STATE_PAUSING:
    case AVZ_STATE_RESUMING:
    case AVZ_STATE_STOPPING:
    case AVZ_STATE_SAVING:
    case AVZ_STATE_RESTORING:
        return YES;
    default:
        return NO;
    }
}

/* The states a delegate's stop event (GUEST_STOPPED, STOPPED_WITH_ERROR) belongs to. */
static BOOL avz_state_ends_a_stop(NSInteger state)
{
    return state == AVZ_STATE_STOPPED || state == AVZ_STATE_ERROR;
}

static NSString *avz_state_name(NSInteger state)
{
    switch (state) {
    case AVZ_STATE_STOPPED: return @"stopped";
    case AVZ_STATE_RUNNING: return @"running";
    case AVZ_STATE_PAUSED: return @"paused";
    case AVZ_STATE_ERROR: return @"in the error state";
    case AVZ_STATE_STARTING: return @"starting";
    case AVZ_STATE_PAUSING: return @"pausing";
    case AVZ_STATE_RESUMING: return @"resuming";
    case AVZ_STATE_STOPPING: return @"stopping";
    case AVZ_STATE_SAVING: return @"saving";
    case AVZ_STATE_RESTORING: return @"restoring";
    default: return [NSString stringWithFormat:@"in state %ld", (long)state];
    }
}

/* An Objective-C exception raised by the framework, as an error (code 1): it must not
 * unwind through a dispatch work item (that aborts the process) and the operation's
 * completion is still due. */
static NSError *avz_exception_error(NSException *exception, NSString *what)
{
    NSString *reason = exception.reason;
    return avz_error(AVZ_ERROR_INTERNAL,
                     [NSString stringWithFormat:@"%@: the framework raised %@ (%@)", what,
                                                exception.name,
                                                reason != nil ? reason : @"no reason given"]);
}

/* An operation refused because the VM is in the wrong state: the ABI's code 4
 * (AVZ_ERROR_INVALID_STATE_TRANSITION), whatever the framework would have said. */
static NSError *avz_refused(NSString *operation, NSInteger state)
{
    return avz_error(AVZ_ERROR_INVALID_STATE_TRANSITION,
                     [NSString stringWithFormat:@"Cannot %@ the virtual machine: it is %@", operation,
                                                avz_state_name(state)]);
}

@class AVZMachine, AVZListener;

/* What a delivery to the observer or to a completion waits for before it runs (see
 * ORDER OF EVENTS at the top of this file). Deliveries also run in the order they
 * arrived: one that may run waits for those ahead of it. */
typedef NS_ENUM(NSInteger, AVZWait) {
    AVZWaitNothing = 0, /* only for the deliveries ahead of it */
    AVZWaitSettled = 1, /* a state reported that is not transitional */
    AVZWaitStop = 2,    /* stopped or error reported */
    AVZWaitState = 3,   /* its state reported, or any settled state reported after it came */
};

/* How long a delivery waits for the state change it implies before the shim gives up
 * waiting for the framework's key-value notification (see -deliveryExpired:). */
#define AVZ_HOLD_LIMIT_NS ((int64_t)(2 * NSEC_PER_SEC))

/* No state implied (AVZCompletion's successState for a vsock connection). */
#define AVZ_NO_STATE ((NSInteger)-1)

/* The VZVirtualMachine's delegate and the observer of its `state`. The framework holds
 * its delegate weakly; the AVZMachine keeps this object alive. Its reference to the
 * machine is weak: once the machine's -dealloc has begun, events are dropped here. */
@interface AVZMachineDelegate : NSObject <VZVirtualMachineDelegate>
@property (nonatomic, weak, readonly, nullable) AVZMachine *machine;
- (instancetype)initWithMachine:(AVZMachine *)machine;
@end

/* One observer event or one completion waiting for its turn (queue only). */
@interface AVZDelivery : NSObject
@property (nonatomic, readonly) AVZWait wait;
@property (nonatomic, readonly) NSInteger state; /* for AVZWaitState */
@property (nonatomic, readonly) int32_t event;   /* AVZ_EVENT_*, when `completion` is nil */
@property (nonatomic, readonly, nullable) NSError *error; /* the event's, borrowed by it */
@property (nonatomic, readonly, nullable) dispatch_block_t completion;
/* A completion's machine, held strongly until the completion ran (the AVZCompletion that
 * kept it alive may be gone by then); nil for observer events. */
@property (nonatomic, strong, nullable) AVZMachine *machine;
@property (nonatomic) BOOL moved; /* a state change was reported since it arrived */
@property (nonatomic) BOOL done;  /* it ran */
- (instancetype)initWithWait:(AVZWait)wait
                       state:(NSInteger)state
                       event:(int32_t)event
                       error:(nullable NSError *)error
                  completion:(nullable dispatch_block_t)completion;
@end

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

/* An avz_vm: the queue, the VZVirtualMachine, its delegate and the observer. */
@interface AVZMachine : NSObject
/* The VM, for blocks running on the queue. Never nil once init succeeded. */
@property (nonatomic, readonly) VZVirtualMachine *vm;
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
/* Any thread: a key-value notification for `state`; `newValue` is its change
 * dictionary's NSKeyValueChangeNewKey value. The one source of STATE_CHANGED (apart from
 * the last resort in -deliveryExpired:). */
- (void)stateDidChange:(nullable id)newValue;
/* Any thread: a delegate stop event (AVZ_EVENT_GUEST_STOPPED / _STOPPED_WITH_ERROR). */
- (void)stopEvent:(int32_t)event error:(nullable NSError *)error;
/* Any thread: the delegate's network attachment disconnection (macOS 12). */
- (void)networkDevice:(VZNetworkDevice *)networkDevice
    disconnectedWithError:(nullable NSError *)error API_AVAILABLE(macos(12.0));
/* On the queue: runs `completion` in its turn, once `wait` (with `state`) is met. Keeps
 * the machine alive until then. */
- (void)deliverCompletion:(dispatch_block_t)completion wait:(AVZWait)wait state:(NSInteger)state;
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

@implementation AVZListener {
    dispatch_queue_t _queue;
    avz_accept_fn _Nullable _accept; /* NULL once released */
    void *_Nullable _context;
    avz_context_release_fn _Nullable _release;
    BOOL _released; /* queue only */
}

- (instancetype)initWithQueue:(dispatch_queue_t)queue
                       accept:(avz_accept_fn)accept
                      context:(nullable void *)context
                      release:(nullable avz_context_release_fn)release
{
    self = [super init];
    if (self != nil) {
        _queue = queue;
        _accept = accept;
        _context = context;
        _release = release;
        _socketListener = [[VZVirtioSocketListener alloc] init];
        _socketListener.delegate = self;
    }
    return self;
}

- (void)releaseContext
{
    if (_released) {
        return;
    }
    _released = YES;
    avz_context_release_fn release = _release;
    _release = NULL;
    _accept = NULL;
    if (release != NULL) {
        release(_context);
    }
}

/* On the queue: hands `fd` to the accept function, or closes it once released. */
- (void)deliverDescriptor:(int)fd guestPort:(uint32_t)guestPort hostPort:(uint32_t)hostPort
{
    avz_accept_fn accept = _accept;
    if (_released || accept == NULL) {
        close(fd);
        return;
    }
    accept(_context, fd, guestPort, hostPort);
}

/* The framework asks whether to accept a guest connection (documented to be called on
 * the VM's queue; forwarded there otherwise). The connection object owns its descriptor
 * and closes it when it goes: the callee gets a duplicate, then the object is closed. */
- (BOOL)listener:(VZVirtioSocketListener *)listener
    shouldAcceptNewConnection:(VZVirtioSocketConnection *)connection
             fromSocketDevice:(VZVirtioSocketDevice *)socketDevice
{
    (void)listener;
    (void)socketDevice;
    BOOL onQueue = avz_is_on_queue(_queue);
    if (onQueue && _released) {
        return NO; /* removed or replaced: refuse rather than accept and drop */
    }
    int fd = fcntl(connection.fileDescriptor, F_DUPFD_CLOEXEC, 0);
    if (fd < 0) {
        return NO;
    }
    uint32_t guestPort = connection.sourcePort;
    uint32_t hostPort = connection.destinationPort;
    if (onQueue) {
        [self deliverDescriptor:fd guestPort:guestPort hostPort:hostPort];
    } else {
        dispatch_async(_queue, ^{
            @autoreleasepool {
                [self deliverDescriptor:fd guestPort:guestPort hostPort:hostPort];
            }
        });
    }
    [connection close];
    return YES;
}

@end

@implementation AVZMachineDelegate

- (instancetype)initWithMachine:(AVZMachine *)machine
{
    self = [super init];
    if (self != nil) {
        _machine = machine;
    }
    return self;
}

- (void)guestDidStopVirtualMachine:(VZVirtualMachine *)virtualMachine
{
    (void)virtualMachine;
    [self.machine stopEvent:AVZ_EVENT_GUEST_STOPPED error:nil];
}

- (void)virtualMachine:(VZVirtualMachine *)virtualMachine didStopWithError:(NSError *)error
{
    (void)virtualMachine;
    [self.machine stopEvent:AVZ_EVENT_STOPPED_WITH_ERROR error:error];
}

/* macOS 12. The framework calls it each time a network interface fails to start and
 * its attachment is disconnected (also at boot, device reset or reboot, so possibly
 * several times per run); the device's `attachment` is nil afterwards. */
- (void)virtualMachine:(VZVirtualMachine *)virtualMachine
                         networkDevice:(VZNetworkDevice *)networkDevice
    attachmentWasDisconnectedWithError:(NSError *)error API_AVAILABLE(macos(12.0))
{
    (void)virtualMachine;
    [self.machine networkDevice:networkDevice disconnectedWithError:error];
}

- (void)observeValueForKeyPath:(nullable NSString *)keyPath
                      ofObject:(nullable id)object
                        change:(nullable NSDictionary<NSKeyValueChangeKey, id> *)change
                       context:(nullable void *)context
{
    if (context != &kAVZStateObservation) {
        [super observeValueForKeyPath:keyPath ofObject:object change:change context:context];
        return;
    }
    /* The value this notification carries (observed with NSKeyValueObservingOptionNew),
     * never a later read of `state`: each change is reported as it happened, in order,
     * so stopped -> starting -> stopped is not collapsed into nothing. */
    [self.machine stateDidChange:change != nil ? change[NSKeyValueChangeNewKey] : nil];
}

@end

@implementation AVZDelivery

- (instancetype)initWithWait:(AVZWait)wait
                       state:(NSInteger)state
                       event:(int32_t)event
                       error:(nullable NSError *)error
                  completion:(nullable dispatch_block_t)completion
{
    self = [super init];
    if (self != nil) {
        _wait = wait;
        _state = state;
        _event = event;
        _error = error;
        _completion = completion;
    }
    return self;
}

@end

/* An AVZ_EVENT_NETWORK_DISCONNECTED error: the framework's domain and code (and user
 * info), its description prefixed with "network device N: " (N: the device's index in
 * VZVirtualMachine.networkDevices, "?" if it is not there), the original as the
 * underlying error. Made here (+1 for the shim), borrowed by the observer. */
static NSError *avz_network_disconnected_error(NSError *_Nullable error, NSUInteger index)
{
    NSString *device = index == NSNotFound
                           ? @"network device ?"
                           : [NSString stringWithFormat:@"network device %lu", (unsigned long)index];
    if (error == nil) {
        return [[NSError alloc]
            initWithDomain:VZErrorDomain
                      code:AVZ_ERROR_NETWORK
                  userInfo:@{
                      NSLocalizedDescriptionKey : [NSString
                          stringWithFormat:@"%@: the network attachment was disconnected (the "
                                           @"framework gave no error)",
                                           device]
                  }];
    }
    NSMutableDictionary<NSErrorUserInfoKey, id> *info = [error.userInfo mutableCopy];
    info[NSLocalizedDescriptionKey] =
        [NSString stringWithFormat:@"%@: %@", device, error.localizedDescription];
    info[NSUnderlyingErrorKey] = error;
    return [[NSError alloc] initWithDomain:error.domain code:error.code userInfo:info];
}

@implementation AVZMachine {
    dispatch_queue_t _queue;
    VZVirtualMachine *_Nullable _vm; /* messaged only on _queue (see the top comment) */
    AVZMachineDelegate *_delegate;   /* strong: the framework's reference is weak */
    avz_state_observer_fn _Nullable _observer;
    void *_Nullable _observerContext;
    avz_context_release_fn _Nullable _observerRelease;
    NSInteger _reportedState; /* queue only: the state last reported (STATE_CHANGED) */
    /* queue only: observer events and completions waiting for their turn, in order */
    NSMutableArray<AVZDelivery *> *_deliveries;
    /* queue only: host vsock listeners by port (avz_vm_vsock_listen) */
    NSMutableDictionary<NSNumber *, AVZListener *> *_listeners;
}

- (nullable instancetype)initWithConfiguration:(nullable VZVirtualMachineConfiguration *)configuration
                                      observer:(nullable avz_state_observer_fn)observer
                               observerContext:(nullable void *)observerContext
                               observerRelease:(nullable avz_context_release_fn)observerRelease
                                         error:(NSError *_Nullable *_Nonnull)error
{
    self = [super init];
    if (self == nil) {
        *error = avz_error(AVZ_ERROR_INTERNAL, @"out of memory creating the virtual machine");
        return nil;
    }
    /* Stored now (events during init would find them), owned from a successful return
     * on: -dealloc releases the context only when the framework object exists. */
    _observer = observer;
    _observerContext = observerContext;
    _observerRelease = observerRelease;
    _reportedState = AVZ_STATE_STOPPED;
    _deliveries = [NSMutableArray array];
    _listeners = [NSMutableDictionary dictionary];

    dispatch_queue_attr_t attributes = dispatch_queue_attr_make_with_autorelease_frequency(
        DISPATCH_QUEUE_SERIAL, DISPATCH_AUTORELEASE_FREQUENCY_WORK_ITEM);
    NSString *label = [NSString stringWithFormat:@"applevz.vm.%p", (__bridge void *)self];
    _queue = dispatch_queue_create(label.UTF8String, attributes);
    dispatch_queue_set_specific(_queue, &kAVZQueueKey, (__bridge void *)_queue, NULL);
    _delegate = [[AVZMachineDelegate alloc] initWithMachine:self];

    if (configuration == nil) {
        *error = avz_error(AVZ_ERROR_INTERNAL, @"no configuration (NULL avz_config handle)");
        return nil;
    }
    /* -initWithConfiguration:queue: requires a valid configuration (it raises
     * otherwise): validate first and report the framework's reason. */
    NSError *invalid = nil;
    if (![configuration validateWithError:&invalid]) {
        *error = avz_or(invalid, AVZ_ERROR_INVALID_CONFIGURATION,
                        @"the virtual machine configuration is not valid");
        return nil;
    }

    dispatch_queue_t queue = _queue;
    AVZMachineDelegate *delegate = _delegate;
    __block VZVirtualMachine *vm = nil;
    __block NSError *failure = nil;
    __block NSInteger initialState = AVZ_STATE_STOPPED;
    /* A fresh queue: this thread cannot be on it, dispatch_sync is safe. */
    dispatch_sync(queue, ^{
        @autoreleasepool {
            @try {
                /* The framework stores its own copy of the configuration. */
                vm = [[VZVirtualMachine alloc] initWithConfiguration:configuration queue:queue];
            } @catch (NSException *exception) {
                vm = nil;
                failure = avz_error(AVZ_ERROR_INVALID_CONFIGURATION,
                                    [NSString stringWithFormat:@"cannot create the virtual "
                                                               @"machine: %@",
                                                               exception.reason]);
            }
            if (vm != nil) {
                vm.delegate = delegate;
                [vm addObserver:delegate
                     forKeyPath:@"state"
                        options:NSKeyValueObservingOptionNew
                        context:&kAVZStateObservation];
                initialState = vm.state;
            }
        }
    });
    if (vm == nil) {
        *error = failure != nil ? failure
                                : avz_error(AVZ_ERROR_INTERNAL, @"cannot create the virtual machine");
        return nil;
    }
    _vm = vm;
    _reportedState = initialState;
    return self;
}

- (void)dealloc
{
    /* Never capture `self` here, and never call the framework or Rust inline: copy what
     * the teardown needs into locals and do it in a work item on the queue. No observer
     * call can start from now on: every path to the observer goes through a strong
     * reference to this machine (blocks, completions, held completions) or through the
     * delegate's weak one, which reads nil once deallocation has begun. Observer events
     * still held in _deliveries are dropped with it. */
    avz_context_release_fn release = _observerRelease;
    void *context = _observerContext;
    _observer = NULL;
    _observerRelease = NULL;
    __block VZVirtualMachine *vm = _vm; /* the only strong reference from here on */
    _vm = nil;
    if (vm == nil) {
        /* -init failed before the framework object existed: no observation, no delegate,
         * no observer call ever happened, and the observer context is not ours
         * (avz_vm_create releases it before returning NULL). */
        return;
    }
    /* Detach and release on the queue, in a work item of its own, never inline: this
     * -dealloc may run on a thread the framework owns (dropping its last reference to a
     * completion handler), where waiting for the queue could deadlock, or on the queue
     * inside one of the framework's callouts (a completion, a key-value notification),
     * where the framework object must not be detached or destroyed. Never blocks. */
    AVZMachineDelegate *delegate = _delegate;
    /* Nobody else can reach the table any more: safe to read here on any thread. */
    NSArray<AVZListener *> *listeners = _listeners.allValues;
    _listeners = [NSMutableDictionary dictionary];
    dispatch_async(_queue, ^{
        @autoreleasepool {
            [vm removeObserver:delegate forKeyPath:@"state" context:&kAVZStateObservation];
            vm.delegate = nil;
            /* The listeners still installed: each context exactly once (removal and
             * replacement released the others), before the observer's, as the simulator
             * does. On the queue, so no accept call is running; none starts afterwards
             * (-releaseContext). */
            for (NSUInteger i = 0; i < listeners.count; i++) {
                [listeners[i] releaseContext];
            }
            /* After the last observer call (see above): the context is no longer in use. */
            if (release != NULL) {
                release(context);
            }
            vm = nil; /* the framework object goes here, on its queue */
        }
    });
}

- (VZVirtualMachine *)vm
{
    return (VZVirtualMachine *_Nonnull)_vm;
}

- (dispatch_queue_t)queue
{
    return _queue;
}

- (BOOL)isOnQueue
{
    return avz_is_on_queue(_queue);
}

- (nullable AVZListener *)exchangeListener:(nullable AVZListener *)listener forPort:(uint32_t)port
{
    NSNumber *key = [NSNumber numberWithUnsignedInt:port];
    AVZListener *previous = _listeners[key];
    if (listener != nil) {
        _listeners[key] = listener;
    } else {
        [_listeners removeObjectForKey:key];
    }
    return previous;
}

- (void)syncOnQueue:(__attribute__((noescape)) dispatch_block_t)block
{
    if (avz_is_on_queue(_queue)) {
        @autoreleasepool {
            block();
        }
    } else {
        dispatch_sync(_queue, ^{
            @autoreleasepool {
                block();
            }
        });
    }
}

- (void)asyncOnQueue:(dispatch_block_t)block
{
    dispatch_async(_queue, ^{
        @autoreleasepool {
            block();
        }
    });
}

- (void)performOnQueue:(dispatch_block_t)block
{
    if (avz_is_on_queue(_queue)) {
        block();
    } else {
        [self asyncOnQueue:block];
    }
}

/* On the queue. The error is borrowed for the call (the observer retains it to keep it). */
- (void)notifyObserver:(int32_t)event error:(nullable NSError *)error
{
    avz_state_observer_fn observer = _observer;
    if (observer != NULL) {
        observer(_observerContext, (int32_t)_reportedState, event, (__bridge CFErrorRef)error);
    }
}

/* On the queue: whether `delivery`'s wait is over (see AVZWait). */
- (BOOL)isReady:(AVZDelivery *)delivery
{
    NSInteger state = _reportedState;
    switch (delivery.wait) {
    case AVZWaitNothing:
        return YES;
    case AVZWaitSettled:
        return !avz_state_is_transitional(state);
    case AVZWaitStop:
        return avz_state_ends_a_stop(state);
    case AVZWaitState:
        return state == delivery.state || (delivery.moved && !avz_state_is_transitional(state));
    }
    return YES;
}

/* On the queue: runs the deliveries at the head of the line whose wait is over, in
 * order. With `until` (still waiting), first runs every delivery up to and including
 * it, ready or not. */
- (void)runDeliveriesUntil:(nullable AVZDelivery *)until
{
    /* A completion or observer call may drop the last other reference to this machine. */
    __attribute__((objc_precise_lifetime)) AVZMachine *keepAlive = self;
    (void)keepAlive;
    while (_deliveries.count > 0) {
        AVZDelivery *head = _deliveries[0];
        BOOL forced = until != nil && !until.done;
        if (!forced && ![self isReady:head]) {
            return;
        }
        [_deliveries removeObjectAtIndex:0];
        head.done = YES;
        dispatch_block_t completion = head.completion;
        if (completion != nil) {
            completion();
        } else {
            [self notifyObserver:head.event error:head.error];
        }
        head.machine = nil; /* a held completion's reference to this machine */
    }
}

/* On the queue: queues `delivery` behind those waiting and runs what can run. One that
 * still waits gets a deadline (see -deliveryExpired:). */
- (void)enqueue:(AVZDelivery *)delivery
{
    [_deliveries addObject:delivery];
    [self runDeliveriesUntil:nil];
    if (delivery.done) {
        return;
    }
    __weak AVZMachine *weakSelf = self;
    dispatch_after(dispatch_time(DISPATCH_TIME_NOW, AVZ_HOLD_LIMIT_NS), _queue, ^{
        @autoreleasepool {
            [weakSelf deliveryExpired:delivery];
        }
    });
}

/* On the queue, AVZ_HOLD_LIMIT_NS after `delivery` came and found its state not
 * reported: the framework's key-value notification did not come (or not yet). Last
 * resort, never the normal path: read `state` once, report it if it differs from the
 * state last reported, then run every delivery up to and including this one. A
 * notification still in flight then reports its (older) value afterwards. */
- (void)deliveryExpired:(AVZDelivery *)delivery
{
    if (delivery.done) {
        return;
    }
    VZVirtualMachine *vm = _vm;
    if (vm != nil) {
        [self reportState:vm.state];
    }
    [self runDeliveriesUntil:delivery];
}

/* On the queue: reports `state` (STATE_CHANGED) unless it is the state last reported,
 * then runs the deliveries this lets through. */
- (void)reportState:(NSInteger)state
{
    if (state == _reportedState) {
        return;
    }
    _reportedState = state;
    for (NSUInteger i = 0; i < _deliveries.count; i++) {
        _deliveries[i].moved = YES;
    }
    __attribute__((objc_precise_lifetime)) AVZMachine *keepAlive = self;
    (void)keepAlive;
    [self notifyObserver:AVZ_EVENT_STATE_CHANGED error:nil];
    [self runDeliveriesUntil:nil];
}

- (void)stateDidChange:(nullable id)newValue
{
    BOOL carried = [newValue isKindOfClass:[NSNumber class]];
    NSInteger state = carried ? ((NSNumber *)newValue).integerValue : AVZ_STATE_STOPPED;
    [self performOnQueue:^{
        /* A notification without a new value (never seen; the observation asks for one)
         * falls back to reading `state`. */
        VZVirtualMachine *vm = self->_vm;
        if (carried) {
            [self reportState:state];
        } else if (vm != nil) {
            [self reportState:vm.state];
        }
    }];
}

- (void)stopEvent:(int32_t)event error:(nullable NSError *)error
{
    NSError *stopError = error;
    if (event == AVZ_EVENT_STOPPED_WITH_ERROR && stopError == nil) {
        stopError = avz_error(AVZ_ERROR_INTERNAL,
                              @"the virtual machine stopped because of an unspecified error");
    }
    AVZDelivery *delivery = [[AVZDelivery alloc] initWithWait:AVZWaitStop
                                                        state:AVZ_NO_STATE
                                                        event:event
                                                        error:stopError
                                                   completion:nil];
    [self performOnQueue:^{
        [self enqueue:delivery];
    }];
}

- (void)networkDevice:(VZNetworkDevice *)networkDevice
    disconnectedWithError:(nullable NSError *)error
{
    [self performOnQueue:^{
        NSUInteger index = NSNotFound;
        VZVirtualMachine *vm = self->_vm;
        if (vm != nil) {
            NSArray<VZNetworkDevice *> *devices = vm.networkDevices;
            for (NSUInteger i = 0; i < devices.count && index == NSNotFound; i++) {
                if (devices[i] == networkDevice) {
                    index = i;
                }
            }
        }
        [self enqueue:[[AVZDelivery alloc] initWithWait:AVZWaitNothing
                                                   state:AVZ_NO_STATE
                                                   event:AVZ_EVENT_NETWORK_DISCONNECTED
                                                   error:avz_network_disconnected_error(error, index)
                                              completion:nil]];
    }];
}

- (void)deliverCompletion:(dispatch_block_t)completion wait:(AVZWait)wait state:(NSInteger)state
{
    AVZDelivery *delivery = [[AVZDelivery alloc] initWithWait:wait
                                                        state:state
                                                        event:AVZ_EVENT_STATE_CHANGED
                                                        error:nil
                                                   completion:completion];
    delivery.machine = self; /* until it ran: a completion is due exactly once */
    [self enqueue:delivery];
}

@end

@implementation AVZCompletion {
    AVZMachine *_machine; /* strong: the VM lives until each of its completions ran */
    NSInteger _successState;
    AVZDeliverBlock _Nullable _deliver; /* nil once an outcome counted */
    BOOL _called;                       /* queue only: an outcome counted */
}

- (instancetype)initWithMachine:(AVZMachine *)machine
                   successState:(NSInteger)successState
                        deliver:(AVZDeliverBlock)deliver
{
    self = [super init];
    if (self != nil) {
        _machine = machine;
        _successState = successState;
        _deliver = deliver;
    }
    return self;
}

- (void)completeWithError:(nullable NSError *)error
{
    [self completeWithError:error descriptor:-1];
}

- (void)completeWithError:(nullable NSError *)error descriptor:(int)descriptor
{
    [_machine performOnQueue:^{
        [self finishWithError:error descriptor:descriptor fromFramework:YES];
    }];
}

- (void)refuseWithError:(NSError *)error
{
    [_machine performOnQueue:^{
        [self finishWithError:error descriptor:-1 fromFramework:NO];
    }];
}

/* On the queue: the first outcome is handed to the machine, to run in its turn once the
 * state it implies was reported: a success, the operation's state; a failure from the
 * framework, a settled state (the operation is over); the shim's own refusal, nothing. */
- (void)finishWithError:(nullable NSError *)error
             descriptor:(int)descriptor
          fromFramework:(BOOL)fromFramework
{
    if (_called) {
        if (descriptor >= 0) {
            close(descriptor); /* a second outcome: nobody takes its descriptor */
        }
        return;
    }
    _called = YES;
    AVZDeliverBlock deliver = _deliver;
    _deliver = nil;
    AVZWait wait = AVZWaitNothing;
    if (fromFramework && _successState != AVZ_NO_STATE) {
        wait = error == nil ? AVZWaitState : AVZWaitSettled;
    }
    [_machine deliverCompletion:^{
        if (deliver != nil) {
            deliver(error, descriptor);
        } else if (descriptor >= 0) {
            close(descriptor);
        }
    }
                           wait:wait
                          state:_successState];
}

- (void)dealloc
{
    if (_called || _deliver == nil) {
        return;
    }
    /* The framework released the handler without calling it: the completion is still
     * due exactly once. Never inline (this may run on any thread, or on the queue inside
     * a framework callout): a work item of its own on the queue calls it, after the
     * deliveries already waiting. Never capture `self` here. */
    AVZDeliverBlock deliver = _deliver;
    AVZMachine *machine = _machine;
    NSError *error = avz_error(AVZ_ERROR_INTERNAL,
                               @"the framework dropped the operation without completing it");
    [machine asyncOnQueue:^{
        [machine deliverCompletion:^{
            deliver(error, -1);
        }
                              wait:AVZWaitNothing
                             state:AVZ_NO_STATE];
    }];
}

@end

/* Borrows the object behind an avz_vm handle (+0). */
static AVZMachine *_Nullable avz_machine(avz_vm *_Nullable vm)
{
    return (__bridge AVZMachine *)(void *)vm;
}

/* The delivery of an avz_completion_fn: the error leaves +1. */
static AVZDeliverBlock avz_completion_delivery(avz_completion_fn _Nullable function,
                                               void *_Nullable context)
{
    return ^(NSError *_Nullable error, int descriptor) {
        if (descriptor >= 0) {
            close(descriptor); /* never set for these operations */
        }
        if (function != NULL) {
            function(context, error != nil ? (__bridge_retained CFErrorRef)error : NULL);
        }
    };
}

/* The delivery of an avz_connect_fn: a connected descriptor (owned by the callee) and no
 * error, or -1 and a +1 error. */
static AVZDeliverBlock avz_connect_delivery(avz_connect_fn _Nullable function,
                                            void *_Nullable context)
{
    return ^(NSError *_Nullable error, int descriptor) {
        NSError *failure = error;
        if (failure == nil && descriptor < 0) {
            failure = avz_error(AVZ_ERROR_INTERNAL, @"the vsock connection failed without an "
                                                    @"error from the framework");
        }
        if (failure != nil && descriptor >= 0) {
            close(descriptor);
            descriptor = -1;
        }
        if (function == NULL) {
            if (descriptor >= 0) {
                close(descriptor);
            }
            return;
        }
        function(context, descriptor, failure != nil ? (__bridge_retained CFErrorRef)failure : NULL);
    };
}

/* The common shape of the asynchronous ABI functions: returns at once; `operation` runs
 * on the VM's queue and must end by calling `done` with the framework's outcome
 * (directly or as the framework's completion handler) or `refuse` with the shim's own
 * refusal. Either may be called any number of times from any thread; the completion runs
 * exactly once (see AVZCompletion), also when `operation` raises. A successful `done`
 * implies `successState` (see ORDER OF EVENTS). */
typedef void (^AVZOperationBlock)(VZVirtualMachine *virtualMachine, AVZCompletionBlock done,
                                  AVZCompletionBlock refuse);

static void avz_vm_async(avz_vm *_Nullable vm, avz_completion_fn _Nullable completion,
                         void *_Nullable context, NSString *what, NSInteger successState,
                         AVZOperationBlock operation)
{
    @autoreleasepool {
        AVZMachine *machine = avz_machine(vm);
        if (machine == nil) {
            /* No queue to complete on: a programming error, reported inline (documented
             * in include/applevz.h). */
            if (completion != NULL) {
                NSError *error = avz_error(AVZ_ERROR_INTERNAL, @"no virtual machine (NULL avz_vm)");
                completion(context, (__bridge_retained CFErrorRef)error);
            }
            return;
        }
        AVZCompletion *pending =
            [[AVZCompletion alloc] initWithMachine:machine
                                      successState:successState
                                           deliver:avz_completion_delivery(completion, context)];
        AVZCompletionBlock done = ^(NSError *_Nullable error) {
            [pending completeWithError:error];
        };
        AVZCompletionBlock refuse = ^(NSError *_Nullable error) {
            [pending refuseWithError:error != nil ? (NSError *_Nonnull)error
                                                  : avz_error(AVZ_ERROR_INTERNAL, what)];
        };
        [machine asyncOnQueue:^{
            @try {
                operation(machine.vm, done, refuse);
            } @catch (NSException *exception) {
                refuse(avz_exception_error(exception, what));
            }
        }];
    }
}

/* Reads a BOOL property of the VM on its queue. */
static bool avz_vm_read_bool(avz_vm *_Nullable vm,
                             BOOL (^__attribute__((noescape)) getter)(VZVirtualMachine *))
{
    AVZMachine *machine = avz_machine(vm);
    if (machine == nil) {
        return false;
    }
    __block BOOL value = NO;
    [machine syncOnQueue:^{
        value = getter(machine.vm);
    }];
    return value;
}

/* The synchronous runtime-device functions: hops onto the VM's queue (inline when the
 * caller is already on it), runs `body` there with the framework's exceptions caught
 * (one must not unwind through dispatch_sync), and applies the ABI's error convention. */
typedef NSError *_Nullable (^AVZSyncBody)(AVZMachine *machine, VZVirtualMachine *virtualMachine);

static bool avz_vm_sync(avz_vm *_Nullable vm, CFErrorRef _Nullable *_Nullable error, NSString *what,
                        __attribute__((noescape)) AVZSyncBody body)
{
    return avz_run(error, ^NSError *_Nullable {
        AVZMachine *machine = avz_machine(vm);
        if (machine == nil) {
            return avz_error(AVZ_ERROR_INTERNAL, @"no virtual machine (NULL avz_vm)");
        }
        __block NSError *failure = nil;
        [machine syncOnQueue:^{
            @try {
                failure = body(machine, machine.vm);
            } @catch (NSException *exception) {
                failure = avz_exception_error(exception, what);
            }
        }];
        return failure;
    });
}

/* On the queue: the VM's virtio socket device, or nil (and *error, code 2) without one. */
static VZVirtioSocketDevice *_Nullable avz_socket_device(VZVirtualMachine *virtualMachine,
                                                         NSString *what, uint32_t port,
                                                         NSError *_Nullable *_Nonnull error)
{
    NSArray<VZSocketDevice *> *devices = virtualMachine.socketDevices;
    for (NSUInteger i = 0; i < devices.count; i++) {
        if ([devices[i] isKindOfClass:[VZVirtioSocketDevice class]]) {
            return (VZVirtioSocketDevice *)devices[i];
        }
    }
    *error = avz_error(AVZ_ERROR_INVALID_CONFIGURATION,
                       [NSString stringWithFormat:@"Cannot %@ vsock port %u: the virtual machine "
                                                  @"has no socket device",
                                                  what, port]);
    return nil;
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

/* On the queue: releases a listener taken out of the table. Called from a callback (the
 * caller was already on the queue before the synchronous hop) the release waits for a
 * work item of its own, so that it never runs inside that listener's own accept call. */
static void avz_release_listener(AVZMachine *machine, AVZListener *_Nullable listener,
                                 BOOL callerOnQueue)
{
    if (listener == nil) {
        return;
    }
    if (callerOnQueue) {
        [machine asyncOnQueue:^{
            [listener releaseContext];
        }];
    } else {
        [listener releaseContext];
    }
}

NS_ASSUME_NONNULL_END

/* ================================================================================== */
/* Host                                                                               */
/* ================================================================================== */

bool avz_is_supported(void)
{
    @autoreleasepool {
        return [VZVirtualMachine isSupported];
    }
}

bool avz_save_restore_supported(void)
{
#if defined(__arm64__)
    if (@available(macOS 14, *)) {
        return true;
    }
#endif
    return false;
}

void avz_get_limits(avz_limits *out)
{
    if (out == NULL) {
        return;
    }
    @autoreleasepool {
        out->min_cpu_count = avz_clamp_u32(VZVirtualMachineConfiguration.minimumAllowedCPUCount);
        out->max_cpu_count = avz_clamp_u32(VZVirtualMachineConfiguration.maximumAllowedCPUCount);
        out->min_memory_size = VZVirtualMachineConfiguration.minimumAllowedMemorySize;
        out->max_memory_size = VZVirtualMachineConfiguration.maximumAllowedMemorySize;
    }
}

bool avz_machine_identifier_create(uint8_t *buffer, size_t capacity, size_t *length,
                                   CFErrorRef *error)
{
    return avz_run(error, ^NSError *_Nullable {
        if (@available(macOS 13, *)) {
            NSData *data = [[VZGenericMachineIdentifier alloc] init].dataRepresentation;
            size_t needed = (size_t)data.length;
            if (length != NULL) {
                *length = needed;
            }
            if (needed > capacity || (needed > 0 && buffer == NULL)) {
                return avz_error(AVZ_ERROR_INTERNAL,
                                 [NSString stringWithFormat:@"the machine identifier needs %zu "
                                                            @"bytes, the buffer has %zu",
                                                            needed, capacity]);
            }
            if (needed > 0) {
                [data getBytes:buffer length:needed];
            }
            return nil;
        }
        return avz_not_supported(@"A generic machine identifier", @"macOS 13");
    });
}

/* ================================================================================== */
/* Configuration                                                                      */
/* ================================================================================== */

avz_config *avz_config_create(void)
{
    @autoreleasepool {
        AVZConfiguration *config = [[AVZConfiguration alloc] init];
        return (__bridge_retained avz_config *)config;
    }
}

void avz_config_set_cpu_count(avz_config *config, uint32_t cpu_count)
{
    @autoreleasepool {
        avz_config_object(config).configuration.CPUCount = cpu_count;
    }
}

void avz_config_set_memory_size(avz_config *config, uint64_t memory_size)
{
    @autoreleasepool {
        avz_config_object(config).configuration.memorySize = memory_size;
    }
}

bool avz_config_set_linux_boot_loader(avz_config *config, const char *kernel_path,
                                      const char *initrd_path, const char *command_line,
                                      CFErrorRef *error)
{
    return avz_config_run(config, error, ^NSError *_Nullable(AVZConfiguration *c) {
        NSError *failure = nil;
        NSURL *kernel = avz_existing_file_url(kernel_path, @"kernel",
                                              AVZ_ERROR_INVALID_CONFIGURATION, &failure);
        if (kernel == nil) {
            return failure;
        }
        NSURL *initrd = nil;
        if (initrd_path != NULL) {
            initrd = avz_existing_file_url(initrd_path, @"initial RAM disk",
                                           AVZ_ERROR_INVALID_CONFIGURATION, &failure);
            if (initrd == nil) {
                return failure;
            }
        }
        NSString *commandLine = @"";
        if (command_line != NULL) {
            NSString *decoded = [NSString stringWithUTF8String:command_line];
            if (decoded == nil) {
                return avz_error(AVZ_ERROR_INVALID_CONFIGURATION,
                                 @"the kernel command line is not valid UTF-8");
            }
            commandLine = decoded;
        }
        VZLinuxBootLoader *loader = [[VZLinuxBootLoader alloc] initWithKernelURL:kernel];
        loader.commandLine = commandLine;
        loader.initialRamdiskURL = initrd;
        c.configuration.bootLoader = loader;
        return nil;
    });
}

bool avz_config_set_efi_boot_loader(avz_config *config, const char *variable_store_path,
                                    bool create, CFErrorRef *error)
{
    return avz_config_run(config, error, ^NSError *_Nullable(AVZConfiguration *c) {
        if (@available(macOS 13, *)) {
            NSError *failure = nil;
            NSURL *url = avz_path_url(variable_store_path, @"EFI variable store",
                                      AVZ_ERROR_INVALID_CONFIGURATION, &failure);
            if (url == nil) {
                return failure;
            }
            VZEFIVariableStore *store = nil;
            if (create) {
                store = [[VZEFIVariableStore alloc]
                    initCreatingVariableStoreAtURL:url
                                           options:VZEFIVariableStoreInitializationOptionAllowOverwrite
                                             error:&failure];
                if (store == nil) {
                    return avz_or(failure, AVZ_ERROR_INTERNAL,
                                  [NSString stringWithFormat:@"cannot create the EFI variable "
                                                             @"store %@",
                                                             url.path]);
                }
            } else {
                /* -initWithURL: does not look at the file: report a missing one now, with
                 * the file system's own error. */
                if (![url checkResourceIsReachableAndReturnError:&failure]) {
                    return avz_or(failure, AVZ_ERROR_INVALID_CONFIGURATION,
                                  [NSString stringWithFormat:@"the EFI variable store %@ does "
                                                             @"not exist",
                                                             url.path]);
                }
                store = [[VZEFIVariableStore alloc] initWithURL:url];
            }
            VZEFIBootLoader *loader = [[VZEFIBootLoader alloc] init];
            loader.variableStore = store;
            c.configuration.bootLoader = loader;
            return nil;
        }
        return avz_not_supported(@"The EFI boot loader", @"macOS 13");
    });
}

bool avz_config_set_generic_platform(avz_config *config, const uint8_t *machine_identifier,
                                     size_t length, CFErrorRef *error)
{
    return avz_config_run(config, error, ^NSError *_Nullable(AVZConfiguration *c) {
        if (@available(macOS 12, *)) {
            VZGenericPlatformConfiguration *platform = [[VZGenericPlatformConfiguration alloc] init];
            if (machine_identifier != NULL) {
                if (@available(macOS 13, *)) {
                    NSData *data = [NSData dataWithBytes:machine_identifier length:length];
                    VZGenericMachineIdentifier *identifier =
                        [[VZGenericMachineIdentifier alloc] initWithDataRepresentation:data];
                    if (identifier == nil) {
                        return avz_error(AVZ_ERROR_INVALID_CONFIGURATION,
                                         [NSString stringWithFormat:@"these %zu bytes are not "
                                                                    @"the data representation of "
                                                                    @"a machine identifier",
                                                                    length]);
                    }
                    platform.machineIdentifier = identifier;
                } else {
                    return avz_not_supported(@"A persistent machine identifier", @"macOS 13");
                }
            }
            c.configuration.platform = platform;
            return nil;
        }
        return avz_not_supported(@"The generic platform configuration", @"macOS 12");
    });
}

bool avz_config_add_storage_device(avz_config *config, int32_t interface, const char *path,
                                   bool read_only, int32_t caching_mode, int32_t sync_mode,
                                   const char *block_device_identifier, CFErrorRef *error)
{
    return avz_config_run(config, error, ^NSError *_Nullable(AVZConfiguration *c) {
        if (interface != AVZ_STORAGE_VIRTIO_BLOCK && interface != AVZ_STORAGE_NVME) {
            return avz_error(AVZ_ERROR_INVALID_CONFIGURATION,
                             [NSString stringWithFormat:@"storage interface %d is not virtio "
                                                        @"block (0) or NVMe (1)",
                                                        interface]);
        }
        if (interface == AVZ_STORAGE_NVME) {
            if (@available(macOS 14, *)) {
            } else {
                return avz_not_supported(@"An NVMe storage device", @"macOS 14");
            }
        }
        NSError *failure = nil;
        /* The identifier names a virtio block device; NVMe has none and ignores it. */
        NSString *identifier = nil;
        if (interface == AVZ_STORAGE_VIRTIO_BLOCK && block_device_identifier != NULL) {
            if (@available(macOS 12.3, *)) {
                identifier = avz_string(block_device_identifier, @"block device identifier",
                                        AVZ_ERROR_INVALID_CONFIGURATION, &failure);
                if (identifier == nil) {
                    return failure;
                }
                NSError *invalid = nil;
                if (![VZVirtioBlockDeviceConfiguration validateBlockDeviceIdentifier:identifier
                                                                               error:&invalid]) {
                    return avz_as_code(invalid, AVZ_ERROR_INVALID_CONFIGURATION,
                                       [NSString stringWithFormat:@"the block device identifier "
                                                                  @"\"%@\" is not valid (at "
                                                                  @"most 20 ASCII bytes)",
                                                                  identifier]);
                }
            } else {
                return avz_not_supported(@"A block device identifier", @"macOS 12.3");
            }
        }
        VZDiskImageStorageDeviceAttachment *attachment =
            avz_disk_attachment(path, read_only, caching_mode, sync_mode, &failure);
        if (attachment == nil) {
            return failure;
        }
        if (interface == AVZ_STORAGE_NVME) {
            if (@available(macOS 14, *)) {
                [c addStorageDevice:[[VZNVMExpressControllerDeviceConfiguration alloc]
                                        initWithAttachment:attachment]];
                return nil;
            }
            return avz_not_supported(@"An NVMe storage device", @"macOS 14");
        }
        VZVirtioBlockDeviceConfiguration *device =
            [[VZVirtioBlockDeviceConfiguration alloc] initWithAttachment:attachment];
        if (identifier != nil) {
            if (@available(macOS 12.3, *)) {
                device.blockDeviceIdentifier = identifier;
            }
        }
        [c addStorageDevice:device];
        return nil;
    });
}

bool avz_config_add_nat_network_device(avz_config *config, const char *mac_address,
                                       CFErrorRef *error)
{
    return avz_config_run(config, error, ^NSError *_Nullable(AVZConfiguration *c) {
        NSError *failure = nil;
        VZMACAddress *address = avz_mac_address(mac_address, &failure);
        if (address == nil) {
            return failure;
        }
        VZVirtioNetworkDeviceConfiguration *device = [[VZVirtioNetworkDeviceConfiguration alloc] init];
        device.MACAddress = address;
        device.attachment = [[VZNATNetworkDeviceAttachment alloc] init];
        [c addNetworkDevice:device];
        return nil;
    });
}

/* The framework's MTU range for a file-handle attachment (its default is the minimum). */
#define AVZ_MTU_MIN 1500u
#define AVZ_MTU_MAX 65535u

bool avz_config_add_file_handle_network_device(avz_config *config, int socket_fd,
                                               const char *mac_address, uint32_t mtu,
                                               CFErrorRef *error)
{
    return avz_config_run(config, error, ^NSError *_Nullable(AVZConfiguration *c) {
        /* The framework wants a connected datagram socket and would only find out later
         * (or raise): check the descriptor now, as the simulator does. */
        int type = 0;
        socklen_t size = sizeof type;
        if (socket_fd < 0 || getsockopt(socket_fd, SOL_SOCKET, SO_TYPE, &type, &size) != 0) {
            int code = socket_fd < 0 ? EBADF : errno;
            return avz_posix_error(code, [NSString stringWithFormat:@"cannot use descriptor %d "
                                                                    @"for a network device: %s",
                                                                    socket_fd, strerror(code)]);
        }
        if (type != SOCK_DGRAM) {
            return avz_error(AVZ_ERROR_INVALID_CONFIGURATION,
                             [NSString stringWithFormat:@"descriptor %d is not a datagram socket "
                                                        @"(a file-handle network attachment "
                                                        @"needs a connected SOCK_DGRAM socket)",
                                                        socket_fd]);
        }
        NSError *failure = nil;
        VZMACAddress *address = avz_mac_address(mac_address, &failure);
        if (address == nil) {
            return failure;
        }
        if (mtu != 0) {
            if (@available(macOS 13, *)) {
                if (mtu < AVZ_MTU_MIN || mtu > AVZ_MTU_MAX) {
                    return avz_error(AVZ_ERROR_INVALID_CONFIGURATION,
                                     [NSString stringWithFormat:@"an MTU of %u is outside "
                                                                @"%u...%u",
                                                                mtu, AVZ_MTU_MIN, AVZ_MTU_MAX]);
                }
            } else {
                return avz_not_supported(@"Setting a network device's MTU", @"macOS 13");
            }
        }
        /* The attachment's handle owns a duplicate: the caller keeps its descriptor. The
         * duplicate is the same socket, so its buffer sizes are the caller's: Apple asks
         * for SO_RCVBUF at least twice SO_SNDBUF (four times for best throughput), and
         * the shim leaves both as the caller set them (include/applevz.h). */
        NSFileHandle *handle = avz_duplicate_handle(socket_fd, @"a network device", &failure);
        if (handle == nil) {
            return failure;
        }
        VZFileHandleNetworkDeviceAttachment *attachment =
            [[VZFileHandleNetworkDeviceAttachment alloc] initWithFileHandle:handle];
        if (mtu != 0) {
            if (@available(macOS 13, *)) {
                attachment.maximumTransmissionUnit = (NSInteger)mtu;
            }
        }
        VZVirtioNetworkDeviceConfiguration *device = [[VZVirtioNetworkDeviceConfiguration alloc] init];
        device.MACAddress = address;
        device.attachment = attachment;
        [c addNetworkDevice:device];
        return nil;
    });
}

bool avz_config_add_entropy_device(avz_config *config, CFErrorRef *error)
{
    return avz_config_run(config, error, ^NSError *_Nullable(AVZConfiguration *c) {
        [c addEntropyDevice:[[VZVirtioEntropyDeviceConfiguration alloc] init]];
        return nil;
    });
}

bool avz_config_add_memory_balloon_device(avz_config *config, CFErrorRef *error)
{
    return avz_config_run(config, error, ^NSError *_Nullable(AVZConfiguration *c) {
        [c addMemoryBalloonDevice:[[VZVirtioTraditionalMemoryBalloonDeviceConfiguration alloc] init]];
        return nil;
    });
}

bool avz_config_add_socket_device(avz_config *config, CFErrorRef *error)
{
    return avz_config_run(config, error, ^NSError *_Nullable(AVZConfiguration *c) {
        [c addSocketDevice:[[VZVirtioSocketDeviceConfiguration alloc] init]];
        return nil;
    });
}

bool avz_validate_directory_share_tag(const char *tag, CFErrorRef *error)
{
    return avz_run(error, ^NSError *_Nullable {
        if (@available(macOS 12, *)) {
            NSError *failure = nil;
            return avz_share_tag(tag, &failure) != nil ? nil : failure;
        }
        return avz_not_supported(@"Directory sharing (virtio-fs)", @"macOS 12");
    });
}

bool avz_config_add_directory_share(avz_config *config, const char *tag,
                                    const char *const *names, const char *const *paths,
                                    const bool *read_only, size_t count, CFErrorRef *error)
{
    return avz_config_run(config, error, ^NSError *_Nullable(AVZConfiguration *c) {
        if (@available(macOS 12, *)) {
            NSError *failure = nil;
            NSString *tagString = avz_share_tag(tag, &failure);
            if (tagString == nil) {
                return failure;
            }
            if (count == 0) {
                return avz_error(AVZ_ERROR_INVALID_CONFIGURATION,
                                 [NSString stringWithFormat:@"the directory share \"%@\" shares "
                                                            @"no directory",
                                                            tagString]);
            }
            if (names == NULL && count != 1) {
                return avz_error(AVZ_ERROR_INVALID_CONFIGURATION,
                                 [NSString stringWithFormat:@"the directory share \"%@\" shares "
                                                            @"%zu directories without names "
                                                            @"(only a single directory can go "
                                                            @"without a name)",
                                                            tagString, count]);
            }
            if (paths == NULL || read_only == NULL) {
                return avz_error(AVZ_ERROR_INVALID_CONFIGURATION,
                                 [NSString stringWithFormat:@"the directory share \"%@\" has no "
                                                            @"paths or no read-only flags",
                                                            tagString]);
            }
            /* Names first (a name error is a configuration error whatever the paths),
             * with the framework's own rules: -initWithDirectories: raises on a bad one. */
            NSMutableArray<NSString *> *directoryNames = [NSMutableArray array];
            if (names != NULL) {
                for (size_t i = 0; i < count; i++) {
                    NSString *name = avz_string(names[i], @"directory name",
                                                AVZ_ERROR_INVALID_CONFIGURATION, &failure);
                    if (name == nil) {
                        return failure;
                    }
                    NSError *invalid = nil;
                    if (![VZMultipleDirectoryShare validateName:name error:&invalid]) {
                        return avz_as_code(invalid, AVZ_ERROR_INVALID_CONFIGURATION,
                                           [NSString stringWithFormat:@"in the directory share "
                                                                      @"\"%@\", \"%@\" is not a "
                                                                      @"valid directory name",
                                                                      tagString, name]);
                    }
                    for (NSUInteger j = 0; j < directoryNames.count; j++) {
                        if ([directoryNames[j] isEqualToString:name]) {
                            return avz_error(AVZ_ERROR_INVALID_CONFIGURATION,
                                             [NSString stringWithFormat:@"in the directory share "
                                                                        @"\"%@\", the name "
                                                                        @"\"%@\" is used twice",
                                                                        tagString, name]);
                        }
                    }
                    [directoryNames addObject:name];
                }
            }
            NSMutableArray<VZSharedDirectory *> *directories = [NSMutableArray array];
            for (size_t i = 0; i < count; i++) {
                VZSharedDirectory *directory =
                    avz_shared_directory(paths[i], read_only[i], &failure);
                if (directory == nil) {
                    return failure;
                }
                [directories addObject:directory];
            }
            VZDirectoryShare *share = nil;
            if (names == NULL) {
                share = [[VZSingleDirectoryShare alloc] initWithDirectory:directories[0]];
            } else {
                NSMutableDictionary<NSString *, VZSharedDirectory *> *byName =
                    [NSMutableDictionary dictionary];
                for (NSUInteger i = 0; i < directories.count; i++) {
                    byName[directoryNames[i]] = directories[i];
                }
                share = [[VZMultipleDirectoryShare alloc] initWithDirectories:byName];
            }
            VZVirtioFileSystemDeviceConfiguration *device =
                [[VZVirtioFileSystemDeviceConfiguration alloc] initWithTag:tagString];
            device.share = share;
            [c addDirectorySharingDevice:device];
            return nil;
        }
        return avz_not_supported(@"Directory sharing (virtio-fs)", @"macOS 12");
    });
}

int32_t avz_rosetta_availability(void)
{
#if defined(__arm64__)
    if (@available(macOS 13, *)) {
        @autoreleasepool {
            @try {
                switch (VZLinuxRosettaDirectoryShare.availability) {
                case VZLinuxRosettaAvailabilityInstalled:
                    return AVZ_ROSETTA_INSTALLED;
                case VZLinuxRosettaAvailabilityNotInstalled:
                    return AVZ_ROSETTA_NOT_INSTALLED;
                case VZLinuxRosettaAvailabilityNotSupported:
                    break;
                }
            } @catch (NSException *exception) {
                (void)exception; /* treated as "not supported" */
            }
        }
    }
#endif
    /* Intel Macs, macOS before 13, and values this file does not know. */
    return AVZ_ROSETTA_NOT_SUPPORTED;
}

bool avz_config_add_rosetta_share(avz_config *config, const char *tag, CFErrorRef *error)
{
    return avz_config_run(config, error, ^NSError *_Nullable(AVZConfiguration *c) {
#if defined(__arm64__)
        if (@available(macOS 13, *)) {
            NSError *failure = nil;
            NSString *tagString = avz_share_tag(tag, &failure);
            if (tagString == nil) {
                return failure;
            }
            VZLinuxRosettaAvailability availability = VZLinuxRosettaDirectoryShare.availability;
            if (availability == VZLinuxRosettaAvailabilityNotSupported) {
                return avz_not_supported(@"Rosetta for Linux",
                                         @"a host system that provides Rosetta for Linux");
            }
            /* Not installed: the framework's own error (the ABI passes it through). */
            VZLinuxRosettaDirectoryShare *share =
                [[VZLinuxRosettaDirectoryShare alloc] initWithError:&failure];
            if (share == nil) {
                return avz_or(failure, AVZ_ERROR_NOT_SUPPORTED,
                              availability == VZLinuxRosettaAvailabilityNotInstalled
                                  ? @"Rosetta for Linux is not installed (softwareupdate "
                                    @"--install-rosetta)"
                                  : @"cannot share Rosetta for Linux");
            }
            VZVirtioFileSystemDeviceConfiguration *device =
                [[VZVirtioFileSystemDeviceConfiguration alloc] initWithTag:tagString];
            device.share = share;
            [c addDirectorySharingDevice:device];
            return nil;
        }
        return avz_not_supported(@"Rosetta for Linux", @"macOS 13");
#else
        (void)c;
        (void)tag;
        return avz_not_supported(@"Rosetta for Linux", @"Apple silicon and macOS 13");
#endif
    });
}

bool avz_config_add_console_port(avz_config *config, const char *name, bool is_console,
                                 int read_fd, int write_fd, CFErrorRef *error)
{
    return avz_config_run(config, error, ^NSError *_Nullable(AVZConfiguration *c) {
        if (@available(macOS 13, *)) {
            NSError *failure = nil;
            NSString *portName = avz_string(name, @"console port name",
                                            AVZ_ERROR_INVALID_CONFIGURATION, &failure);
            if (portName == nil) {
                return failure;
            }
            if (portName.length == 0) {
                return avz_error(AVZ_ERROR_INVALID_CONFIGURATION, @"a console port needs a name");
            }
            /* Duplicates, as for avz_config_add_serial_port_fds. */
            NSFileHandle *reading =
                avz_duplicate_handle(read_fd, @"reading from the console port", &failure);
            if (reading == nil && failure != nil) {
                return failure;
            }
            NSFileHandle *writing =
                avz_duplicate_handle(write_fd, @"writing to the console port", &failure);
            if (writing == nil && failure != nil) {
                return failure; /* `reading` closes its duplicate as it goes away */
            }
            VZVirtioConsolePortConfiguration *port = [[VZVirtioConsolePortConfiguration alloc] init];
            port.name = portName;
            port.isConsole = is_console;
            port.attachment =
                [[VZFileHandleSerialPortAttachment alloc] initWithFileHandleForReading:reading
                                                                  fileHandleForWriting:writing];
            VZVirtioConsoleDeviceConfiguration *device =
                [[VZVirtioConsoleDeviceConfiguration alloc] init];
            device.ports[0] = port;
            [c addConsoleDevice:device];
            return nil;
        }
        return avz_not_supported(@"A named console port (VZVirtioConsoleDeviceConfiguration)",
                                 @"macOS 13");
    });
}

bool avz_config_add_serial_port_file(avz_config *config, const char *path, bool append,
                                     CFErrorRef *error)
{
    return avz_config_run(config, error, ^NSError *_Nullable(AVZConfiguration *c) {
        NSError *failure = nil;
        NSURL *url = avz_path_url(path, @"serial port log", AVZ_ERROR_INVALID_CONFIGURATION,
                                  &failure);
        if (url == nil) {
            return failure;
        }
        /* The guest's output (the port's write direction) goes to the file; `append`
         * keeps what is already there instead of truncating it. */
        VZFileSerialPortAttachment *attachment =
            [[VZFileSerialPortAttachment alloc] initWithURL:url append:append error:&failure];
        if (attachment == nil) {
            return avz_or(failure, AVZ_ERROR_INVALID_CONFIGURATION,
                          [NSString stringWithFormat:@"cannot open the serial port log %@",
                                                     url.path]);
        }
        VZVirtioConsoleDeviceSerialPortConfiguration *port =
            [[VZVirtioConsoleDeviceSerialPortConfiguration alloc] init];
        port.attachment = attachment;
        [c addSerialPort:port];
        return nil;
    });
}

bool avz_config_add_serial_port_fds(avz_config *config, int read_fd, int write_fd,
                                    CFErrorRef *error)
{
    return avz_config_run(config, error, ^NSError *_Nullable(AVZConfiguration *c) {
        /* The shim owns duplicates: the caller may close its descriptors at once. The
         * handles close them when the attachment (shared by this configuration and
         * every VM made from it) goes away. */
        NSError *failure = nil;
        NSFileHandle *reading = avz_duplicate_handle(read_fd, @"reading from the serial port", &failure);
        if (reading == nil && failure != nil) {
            return failure;
        }
        NSFileHandle *writing = avz_duplicate_handle(write_fd, @"writing to the serial port", &failure);
        if (writing == nil && failure != nil) {
            return failure; /* `reading` closes its duplicate as it goes away */
        }
        VZFileHandleSerialPortAttachment *attachment =
            [[VZFileHandleSerialPortAttachment alloc] initWithFileHandleForReading:reading
                                                              fileHandleForWriting:writing];
        VZVirtioConsoleDeviceSerialPortConfiguration *port =
            [[VZVirtioConsoleDeviceSerialPortConfiguration alloc] init];
        port.attachment = attachment;
        [c addSerialPort:port];
        return nil;
    });
}

bool avz_config_validate(avz_config *config, CFErrorRef *error)
{
    return avz_config_run(config, error, ^NSError *_Nullable(AVZConfiguration *c) {
        NSError *failure = nil;
        if ([c.configuration validateWithError:&failure]) {
            return nil;
        }
        return avz_or(failure, AVZ_ERROR_INVALID_CONFIGURATION,
                      @"the virtual machine configuration is not valid");
    });
}

bool avz_config_validate_save_restore(avz_config *config, CFErrorRef *error)
{
    return avz_config_run(config, error, ^NSError *_Nullable(AVZConfiguration *c) {
#if defined(__arm64__)
        if (@available(macOS 14, *)) {
            NSError *failure = nil;
            if ([c.configuration validateSaveRestoreSupportWithError:&failure]) {
                return nil;
            }
            return avz_or(failure, AVZ_ERROR_INVALID_CONFIGURATION,
                          @"this configuration does not support saving and restoring");
        }
        return avz_not_supported(@"Saving and restoring a virtual machine", @"macOS 14");
#else
        (void)c;
        return avz_not_supported(@"Saving and restoring a virtual machine",
                                 @"Apple silicon and macOS 14");
#endif
    });
}

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

/* Save ends where it began (paused, through saving); restore ends paused (through
 * restoring). */
void avz_vm_save_state(avz_vm *vm, const char *path, avz_completion_fn completion, void *context)
{
#if defined(__arm64__)
    @autoreleasepool {
        /* `path` is borrowed for this call only: turn it into a URL now. */
        NSError *invalid = nil;
        NSURL *url = avz_path_url(path, @"saved state", AVZ_ERROR_SAVE, &invalid);
        avz_vm_async(vm, completion, context, @"save", AVZ_STATE_PAUSED,
                     ^(VZVirtualMachine *virtualMachine, AVZCompletionBlock done,
                       AVZCompletionBlock refuse) {
                         if (url == nil) {
                             refuse(invalid);
                         } else if (@available(macOS 14, *)) {
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
        avz_vm_async(vm, completion, context, @"restore", AVZ_STATE_PAUSED,
                     ^(VZVirtualMachine *virtualMachine, AVZCompletionBlock done,
                       AVZCompletionBlock refuse) {
                         if (url == nil) {
                             refuse(invalid);
                         } else if (@available(macOS 14, *)) {
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
    return avz_run(error, ^NSError *_Nullable {
        AVZMachine *machine = avz_machine(vm);
        if (machine == nil) {
            return avz_error(AVZ_ERROR_INTERNAL, @"no virtual machine (NULL avz_vm)");
        }
        __block NSError *failure = nil;
        [machine syncOnQueue:^{
            @try {
                VZVirtualMachine *virtualMachine = machine.vm;
                /* The framework's own predicate first: the ABI promises code 3 when the
                 * guest cannot be asked (the framework documents only NO + an error). */
                if (!virtualMachine.canRequestStop) {
                    failure = avz_error(
                        AVZ_ERROR_INVALID_STATE,
                        [NSString stringWithFormat:@"Cannot ask the guest to stop: the virtual "
                                                   @"machine is %@ (canRequestStop is false; "
                                                   @"only a running guest can be asked)",
                                                   avz_state_name(virtualMachine.state)]);
                    return;
                }
                NSError *frameworkError = nil;
                if (![virtualMachine requestStopWithError:&frameworkError]) {
                    failure = avz_or(frameworkError, AVZ_ERROR_INVALID_STATE,
                                     @"the guest cannot be asked to stop in the virtual "
                                     @"machine's current state");
                }
            } @catch (NSException *exception) {
                failure = avz_exception_error(exception, @"request stop");
            }
        }];
        return failure;
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
        state = machine.vm.state;
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

void avz_vm_vsock_connect(avz_vm *vm, uint32_t port, avz_connect_fn completion, void *context)
{
    @autoreleasepool {
        AVZMachine *machine = avz_machine(vm);
        if (machine == nil) {
            /* No queue to complete on: a programming error, reported inline (documented
             * in include/applevz.h). */
            if (completion != NULL) {
                NSError *error = avz_error(AVZ_ERROR_INTERNAL, @"no virtual machine (NULL avz_vm)");
                completion(context, -1, (__bridge_retained CFErrorRef)error);
            }
            return;
        }
        /* Exactly once, on the queue, through the same machinery as start/stop/...; the
         * completion keeps the machine alive until it ran. A connection changes no state:
         * its completion waits for nothing but the deliveries ahead of it. */
        AVZCompletion *pending =
            [[AVZCompletion alloc] initWithMachine:machine
                                      successState:AVZ_NO_STATE
                                           deliver:avz_connect_delivery(completion, context)];
        [machine asyncOnQueue:^{
            @try {
                VZVirtualMachine *virtualMachine = machine.vm;
                NSError *failure = nil;
                VZVirtioSocketDevice *device =
                    avz_socket_device(virtualMachine, @"connect to", port, &failure);
                if (device == nil) {
                    [pending completeWithError:failure];
                    return;
                }
                NSInteger state = virtualMachine.state;
                if (state != AVZ_STATE_RUNNING) {
                    NSString *why = [NSString stringWithFormat:@"Cannot connect to vsock port %u: "
                                                               @"the virtual machine is %@, not "
                                                               @"running",
                                                               port, avz_state_name(state)];
                    [pending completeWithError:avz_error(AVZ_ERROR_INVALID_STATE, why)];
                    return;
                }
                [device connectToPort:port
                    completionHandler:^(VZVirtioSocketConnection *_Nullable connection,
                                        NSError *_Nullable frameworkError) {
                        if (connection == nil) {
                            [pending completeWithError:avz_or(frameworkError, AVZ_ERROR_INTERNAL,
                                                              [NSString stringWithFormat:
                                                                            @"cannot connect to "
                                                                            @"vsock port %u",
                                                                            port])];
                            return;
                        }
                        /* The connection object closes its descriptor when it goes: the
                         * callee gets a duplicate, then the object is closed. */
                        int fd = fcntl(connection.fileDescriptor, F_DUPFD_CLOEXEC, 0);
                        int code = fd < 0 ? errno : 0;
                        [connection close];
                        if (fd < 0) {
                            [pending completeWithError:
                                         avz_posix_error(code,
                                                         [NSString stringWithFormat:
                                                                       @"cannot use the connection "
                                                                       @"to vsock port %u: %s",
                                                                       port, strerror(code)])];
                            return;
                        }
                        [pending completeWithError:nil descriptor:fd];
                    }];
            } @catch (NSException *exception) {
                [pending refuseWithError:avz_exception_error(exception, @"vsock connect")];
            }
        }];
    }
}

bool avz_vm_vsock_listen(avz_vm *vm, uint32_t port, avz_accept_fn accept, void *context,
                         avz_context_release_fn release, CFErrorRef *error)
{
    AVZMachine *machine = avz_machine(vm);
    if (machine == nil || accept == NULL) {
        /* Never installed: the context is released before returning false. */
        if (release != NULL) {
            release(context);
        }
        return avz_run(error, ^NSError *_Nullable {
            return avz_error(AVZ_ERROR_INTERNAL, machine == nil
                                                     ? @"no virtual machine (NULL avz_vm)"
                                                     : @"no accept function (NULL avz_accept_fn)");
        });
    }
    BOOL callerOnQueue = [machine isOnQueue];
    return avz_vm_sync(vm, error, @"vsock listen",
                       ^NSError *_Nullable(AVZMachine *m, VZVirtualMachine *virtualMachine) {
                           AVZListener *listener = nil; /* owns the context once made */
                           NSError *failure = nil;
                           @try {
                               VZVirtioSocketDevice *device = avz_socket_device(
                                   virtualMachine, @"listen on", port, &failure);
                               if (device != nil) {
                                   listener = [[AVZListener alloc] initWithQueue:m.queue
                                                                          accept:accept
                                                                         context:context
                                                                         release:release];
                                   [device setSocketListener:listener.socketListener
                                                     forPort:port];
                                   /* The framework replaced any listener on this port: so
                                    * does the table; the one replaced is released once. */
                                   avz_release_listener(
                                       m, [m exchangeListener:listener forPort:port],
                                       callerOnQueue);
                                   return nil;
                               }
                           } @catch (NSException *exception) {
                               failure = avz_exception_error(exception, @"vsock listen");
                           }
                           /* Not installed: the context is released before this function
                            * returns false (by the listener once it holds it). */
                           if (listener != nil) {
                               [listener releaseContext];
                           } else if (release != NULL) {
                               release(context);
                           }
                           return failure;
                       });
}

bool avz_vm_vsock_remove_listener(avz_vm *vm, uint32_t port, CFErrorRef *error)
{
    AVZMachine *machine = avz_machine(vm);
    BOOL callerOnQueue = machine != nil && [machine isOnQueue];
    return avz_vm_sync(vm, error, @"vsock remove listener",
                       ^NSError *_Nullable(AVZMachine *m, VZVirtualMachine *virtualMachine) {
                           NSError *failure = nil;
                           VZVirtioSocketDevice *device = avz_socket_device(
                               virtualMachine, @"stop listening on", port, &failure);
                           if (device == nil) {
                               return failure;
                           }
                           /* Nothing listening on `port` is not an error (nor for the
                            * framework). */
                           [device removeSocketListenerForPort:port];
                           avz_release_listener(m, [m exchangeListener:nil forPort:port],
                                                callerOnQueue);
                           return nil;
                       });
}
