/*
 * applevz.h — the one C ABI between the applevz Rust crate and its native half.
 *
 * Implemented twice with identical behaviour:
 *   - shim/applevz.m  (macOS, ARC Objective-C over Virtualization.framework)
 *   - shim/sim/       (every other target: a portable simulator of the framework)
 *
 * Ownership rules, used on every declaration below:
 *   "returns +1"  the caller owns the returned object and releases it with CFRelease.
 *   "borrows"     the callee uses the pointer only during the call (or, for callback
 *                 arguments, only during the callback); the caller keeps ownership.
 *   CFErrorRef *error out-parameters receive +1 on failure and NULL on success; a
 *                 function that fails always stores an error object (never NULL with
 *                 a false result) unless the out-parameter itself is NULL.
 *
 * Threads:
 *   Every VM owns one private serial queue (a dispatch queue on macOS, a serial queue on
 *   a small pool of worker threads shared by every VM in the simulator). Completions and
 *   observer callbacks run on that queue. A callback must not block and must not call
 *   any avz_vm_* function synchronously; the functions documented as "synchronous" hop
 *   onto the VM's queue and may be called from any other thread.
 *
 * Callbacks that can run before the function that caused them returns (every other
 * callback runs later, on the VM's queue, never inside the call):
 *   - avz_vm_create failing: `observer_release(observer_context)`, inline on the
 *     caller's thread, before NULL returns.
 *   - avz_vm_start/stop/pause/resume/save_state/restore_state and avz_vm_vsock_connect
 *     with `vm` NULL (a programming error; the Rust side never passes NULL): the macOS
 *     shim calls `completion` inline with a +1 AVZ_ERROR_INTERNAL error (there is no
 *     queue to call it on); the simulator aborts the process instead.
 *   - avz_vm_vsock_listen with `vm` NULL or `accept` NULL: the macOS shim calls
 *     `release(context)` inline, then returns false with AVZ_ERROR_INTERNAL; the
 *     simulator aborts the process instead.
 *   - avz_vm_vsock_listen refused (no socket device), and avz_vm_vsock_listen /
 *     avz_vm_vsock_remove_listener replacing or removing a listener: the listener's
 *     `release` runs before the function returns, synchronously (the macOS shim calls it
 *     on the VM's queue while the caller waits; the simulator on the caller's thread).
 *     Called from the VM's queue (a callback: not part of the contract, see above), a
 *     replaced or removed listener is released later instead, in a work item of its own.
 *   The synchronous functions report their own errors through their `error`
 *   out-parameter (or result), never through a callback.
 *   No other function calls a completion, observer or release function before it
 *   returns: asynchronous operations report every refusal (wrong state, not supported,
 *   bad path) through their completion, later, on the VM's queue.
 *
 * Strings and paths cross as NUL-terminated UTF-8. The caller has already rejected
 * interior NUL bytes.
 *
 * Errors come in the Virtualization framework's domain ("VZErrorDomain") with its codes
 * (AVZ_ERROR_*), or in NSPOSIXErrorDomain/NSCocoaErrorDomain for file-system failures.
 */
#ifndef APPLEVZ_H
#define APPLEVZ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#if defined(__APPLE__)
#include <CoreFoundation/CoreFoundation.h>
#else
/* The simulator provides these CoreFoundation types and functions under their real
 * names (shim/sim/cf.h) so that the Rust side is identical on every target. */
typedef const void *CFTypeRef;
typedef struct __CFError *CFErrorRef;
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------------------------- */
/* Constants                                                                          */
/* ---------------------------------------------------------------------------------- */

/* VZVirtualMachineState, raw values 0...9 in the framework's order. */
#define AVZ_STATE_STOPPED 0
#define AVZ_STATE_RUNNING 1
#define AVZ_STATE_PAUSED 2
#define AVZ_STATE_ERROR 3
#define AVZ_STATE_STARTING 4
#define AVZ_STATE_PAUSING 5
#define AVZ_STATE_RESUMING 6
#define AVZ_STATE_STOPPING 7
#define AVZ_STATE_SAVING 8
#define AVZ_STATE_RESTORING 9

/* VZErrorCode values (domain "VZErrorDomain"). */
#define AVZ_ERROR_INTERNAL 1
#define AVZ_ERROR_INVALID_CONFIGURATION 2
#define AVZ_ERROR_INVALID_STATE 3
#define AVZ_ERROR_INVALID_STATE_TRANSITION 4
#define AVZ_ERROR_INVALID_DISK_IMAGE 5
#define AVZ_ERROR_LIMIT_EXCEEDED 6
#define AVZ_ERROR_NETWORK 7
#define AVZ_ERROR_OUT_OF_DISK_SPACE 8
#define AVZ_ERROR_OPERATION_CANCELLED 9
#define AVZ_ERROR_NOT_SUPPORTED 10
#define AVZ_ERROR_SAVE 11
#define AVZ_ERROR_RESTORE 12

/* VZDiskImageCachingMode. */
#define AVZ_CACHING_AUTOMATIC 0
#define AVZ_CACHING_UNCACHED 1
#define AVZ_CACHING_CACHED 2

/* VZDiskImageSynchronizationMode. */
#define AVZ_SYNC_FULL 1
#define AVZ_SYNC_FSYNC 2
#define AVZ_SYNC_NONE 3

/* What an observer event reports (see avz_state_observer_fn). */
#define AVZ_EVENT_STATE_CHANGED 0    /* the VM's `state` property changed */
#define AVZ_EVENT_GUEST_STOPPED 1    /* delegate: guestDidStopVirtualMachine: */
#define AVZ_EVENT_STOPPED_WITH_ERROR 2 /* delegate: virtualMachine:didStopWithError: */
/* delegate: virtualMachine:networkDevice:attachmentWasDisconnectedWithError: (macOS 12).
 * The error's domain and code are the framework's; its description begins with
 * "network device N: " where N is the device's index in the order the configuration
 * added network devices (on a Mac: its index in VZVirtualMachine.networkDevices, which
 * has one runtime device per configured one, assumed in the same order; "?" if the
 * device is not in that list). The VM's state does not change. The framework reports
 * this each time a network interface fails to start (also at boot, device reset or
 * reboot, so possibly several times per run); the device has no attachment afterwards.
 * The error is made by the native half and borrowed by the observer for the call. */
#define AVZ_EVENT_NETWORK_DISCONNECTED 3

/* Storage device interfaces (avz_config_add_storage_device). */
#define AVZ_STORAGE_VIRTIO_BLOCK 0 /* VZVirtioBlockDeviceConfiguration (macOS 11) */
#define AVZ_STORAGE_NVME 1         /* VZNVMExpressControllerDeviceConfiguration (macOS 14) */

/* VZLinuxRosettaAvailability. */
#define AVZ_ROSETTA_NOT_SUPPORTED 0
#define AVZ_ROSETTA_NOT_INSTALLED 1
#define AVZ_ROSETTA_INSTALLED 2

/* Largest machine identifier data representation the ABI carries. */
#define AVZ_MACHINE_IDENTIFIER_MAX 4096

/* ---------------------------------------------------------------------------------- */
/* Handles                                                                            */
/* ---------------------------------------------------------------------------------- */

/* A VZVirtualMachineConfiguration being built. CoreFoundation-compatible: released
 * with CFRelease. Not thread-safe: build it on one thread, then hand it to
 * avz_vm_create. */
typedef struct avz_config avz_config;

/* A virtual machine with its queue, delegate and observer. CoreFoundation-compatible:
 * released with CFRelease. Thread-safe: every function hops onto the VM's queue. */
typedef struct avz_vm avz_vm;

/* Called exactly once per asynchronous operation, on the VM's queue (a NULL `vm` is the
 * one exception, see "Callbacks that can run before ..." above), in its place in the
 * order of events below.
 * `error` is +1 (the callee releases it) or NULL on success. */
typedef void (*avz_completion_fn)(void *context, CFErrorRef error);

/* Called on the VM's queue for every state change and delegate event, in order.
 * `state` is the VM state after the event (AVZ_STATE_*): for STATE_CHANGED the new
 * state, for the other events the state last reported; `event` is AVZ_EVENT_*;
 * `error` is borrowed (retain it to keep it) and non-NULL only for
 * AVZ_EVENT_STOPPED_WITH_ERROR and AVZ_EVENT_NETWORK_DISCONNECTED.
 *
 * Order of events (one sequence per VM, shared by the observer and the completions):
 *   - STATE_CHANGED reports each value of the framework's `state` property, as its
 *     key-value notifications carry it, in order; a value equal to the state last
 *     reported is not repeated, and no change is left out (a failed start seen as
 *     stopped -> starting -> stopped gives two events, never none).
 *   - A completion is called only after the STATE_CHANGED for the state its outcome
 *     implies: on success, start and resume -> running, pause, save and restore ->
 *     paused, stop -> stopped (or any settled state reported after the framework
 *     answered, if the VM moved on); on an error from the framework, a settled state
 *     (not starting/pausing/resuming/stopping/saving/restoring). So the state an
 *     observer cached is the operation's outcome when the completion runs. A refusal
 *     that changed nothing (wrong state, not supported, bad path), a vsock connection
 *     and an operation the framework dropped without completing wait for nothing but
 *     the events ahead of them.
 *   - GUEST_STOPPED and STOPPED_WITH_ERROR come only after the STATE_CHANGED to
 *     stopped or error.
 *   - NETWORK_DISCONNECTED comes in the order it happened; the state does not change.
 *   - Whichever the framework sends first, the shim holds the later-due event. If the
 *     framework never reports the implied state, the macOS shim waits 2 seconds, then
 *     reads `state` once, reports it if it differs from the state last reported, and
 *     delivers what it held (a notification arriving after that is still reported, in
 *     the order it arrives).
 *   Both native halves keep this order; the simulator holds deliveries this way only
 *   when a test makes a notification late (avz_sim_vm_delay_next_notification). */
typedef void (*avz_state_observer_fn)(void *context, int32_t state, int32_t event,
                                      CFErrorRef error);

/* Releases an observer context; called exactly once. */
typedef void (*avz_context_release_fn)(void *context);

/* Configuration limits of this host (class properties of
 * VZVirtualMachineConfiguration). */
typedef struct avz_limits {
    uint32_t min_cpu_count;
    uint32_t max_cpu_count;
    uint64_t min_memory_size; /* bytes */
    uint64_t max_memory_size; /* bytes */
} avz_limits;

/* ---------------------------------------------------------------------------------- */
/* Host                                                                               */
/* ---------------------------------------------------------------------------------- */

/* VZVirtualMachine.isSupported: false on hardware without virtualization. */
bool avz_is_supported(void);

/* True when this host can save and restore VM state at all (Apple silicon, macOS 14+).
 * A given configuration may still not be savable: see avz_config_validate_save_restore. */
bool avz_save_restore_supported(void);

/* Fills *out with the host's configuration limits. `out` borrowed. */
void avz_get_limits(avz_limits *out);

/* Creates a new VZGenericMachineIdentifier and writes its data representation to
 * `buffer` (borrowed, `capacity` bytes). On success stores the length in *length.
 * Errors: AVZ_ERROR_NOT_SUPPORTED before macOS 13; AVZ_ERROR_INTERNAL when `capacity`
 * is too small (*length then holds the size needed). */
bool avz_machine_identifier_create(uint8_t *buffer, size_t capacity, size_t *length,
                                   CFErrorRef *error);

/* ---------------------------------------------------------------------------------- */
/* Configuration                                                                      */
/* ---------------------------------------------------------------------------------- */

/* Returns +1: an empty configuration (no boot loader, no devices). */
avz_config *avz_config_create(void);

/* CPUCount and memorySize (bytes). Range checks happen in validate. `config` borrowed. */
void avz_config_set_cpu_count(avz_config *config, uint32_t cpu_count);
void avz_config_set_memory_size(avz_config *config, uint64_t memory_size);

/* VZLinuxBootLoader. `kernel_path`, `command_line` borrowed; `initrd_path` borrowed
 * and may be NULL. Errors: AVZ_ERROR_INVALID_CONFIGURATION when a file is missing. */
bool avz_config_set_linux_boot_loader(avz_config *config, const char *kernel_path,
                                      const char *initrd_path, const char *command_line,
                                      CFErrorRef *error);

/* VZEFIBootLoader with a VZEFIVariableStore at `variable_store_path` (borrowed):
 * opened when `create` is false, created (overwriting) when true.
 * Errors: AVZ_ERROR_NOT_SUPPORTED before macOS 13; file-system errors. */
bool avz_config_set_efi_boot_loader(avz_config *config, const char *variable_store_path,
                                    bool create, CFErrorRef *error);

/* VZGenericPlatformConfiguration. `machine_identifier` (borrowed, `length` bytes) is a
 * data representation from avz_machine_identifier_create, or NULL for a fresh
 * identity (which cannot be persisted: a state saved under it cannot be restored by
 * another process). Errors: AVZ_ERROR_NOT_SUPPORTED before macOS 12 (13 with an identifier);
 * AVZ_ERROR_INVALID_CONFIGURATION for bytes that are not an identifier. */
bool avz_config_set_generic_platform(avz_config *config, const uint8_t *machine_identifier,
                                     size_t length, CFErrorRef *error);

/* A storage device over a VZDiskImageStorageDeviceAttachment. `interface` is
 * AVZ_STORAGE_VIRTIO_BLOCK or AVZ_STORAGE_NVME (macOS 14, generic platform only: validate
 * reports AVZ_ERROR_INVALID_CONFIGURATION otherwise). `path` borrowed; `caching_mode` is
 * AVZ_CACHING_*, `sync_mode` AVZ_SYNC_*; modes other than automatic/full need macOS 12.
 * `block_device_identifier` (borrowed, may be NULL) names a virtio block device to the
 * guest (/dev/disk/by-id; macOS 12.3; at most 20 ASCII bytes); NVMe ignores it.
 * Errors: AVZ_ERROR_NOT_SUPPORTED (interface or option newer than this Mac),
 * AVZ_ERROR_INVALID_DISK_IMAGE, AVZ_ERROR_INVALID_CONFIGURATION (bad identifier),
 * file-system errors. */
bool avz_config_add_storage_device(avz_config *config, int32_t interface, const char *path,
                                   bool read_only, int32_t caching_mode, int32_t sync_mode,
                                   const char *block_device_identifier, CFErrorRef *error);

/* VZVirtioNetworkDeviceConfiguration with a VZNATNetworkDeviceAttachment.
 * `mac_address` borrowed, "xx:xx:xx:xx:xx:xx", or NULL for a random locally
 * administered address. Errors: AVZ_ERROR_INVALID_CONFIGURATION for a bad address. */
bool avz_config_add_nat_network_device(avz_config *config, const char *mac_address,
                                       CFErrorRef *error);

/* VZVirtioNetworkDeviceConfiguration with a VZFileHandleNetworkDeviceAttachment over a
 * connected datagram socket `socket_fd` (borrowed: the callee duplicates it). `mac_address`
 * as for NAT. `mtu` is the maximum transmission unit (macOS 13; 0 = the framework's
 * default 1500; 1500...65535). Errors: AVZ_ERROR_NOT_SUPPORTED (an MTU before macOS 13),
 * AVZ_ERROR_INVALID_CONFIGURATION, file-system errors (bad descriptor).
 * Socket buffers: Apple asks for this socket's SO_RCVBUF to be at least twice its
 * SO_SNDBUF, and recommends four times for best throughput (set with setsockopt; the
 * larger the MTU, the larger the buffers need to be). The caller sets them; the macOS
 * shim leaves both as they are (the duplicate is the same socket, so options set before
 * or after this call apply) and does not check them. */
bool avz_config_add_file_handle_network_device(avz_config *config, int socket_fd,
                                               const char *mac_address, uint32_t mtu,
                                               CFErrorRef *error);

/* VZVirtioEntropyDeviceConfiguration. Errors: none in practice. */
bool avz_config_add_entropy_device(avz_config *config, CFErrorRef *error);

/* VZVirtioTraditionalMemoryBalloonDeviceConfiguration (at most one is useful). */
bool avz_config_add_memory_balloon_device(avz_config *config, CFErrorRef *error);

/* VZVirtioSocketDeviceConfiguration (virtio-vsock; at most one). */
bool avz_config_add_socket_device(avz_config *config, CFErrorRef *error);

/* +[VZVirtioFileSystemDeviceConfiguration validateTag:error:] (macOS 12).
 * Errors: AVZ_ERROR_INVALID_CONFIGURATION with the reason; AVZ_ERROR_NOT_SUPPORTED. */
bool avz_validate_directory_share_tag(const char *tag, CFErrorRef *error);

/* VZVirtioFileSystemDeviceConfiguration (macOS 12) with tag `tag`, sharing `count`
 * directories: `paths[i]` (borrowed) read-only when `read_only[i]`. With `names` NULL and
 * `count` 1 it is a VZSingleDirectoryShare; otherwise a VZMultipleDirectoryShare where
 * `names[i]` (borrowed) is the directory's name under the tag's mount point.
 * Errors: AVZ_ERROR_INVALID_CONFIGURATION (bad tag, name, or count),
 * AVZ_ERROR_NOT_SUPPORTED, file-system errors. */
bool avz_config_add_directory_share(avz_config *config, const char *tag,
                                    const char *const *names, const char *const *paths,
                                    const bool *read_only, size_t count, CFErrorRef *error);

/* VZLinuxRosettaDirectoryShare.availability (macOS 13, arm64): AVZ_ROSETTA_*. Always
 * AVZ_ROSETTA_NOT_SUPPORTED on Intel and before macOS 13. */
int32_t avz_rosetta_availability(void);

/* A virtio file-system device with tag `tag` (borrowed) sharing Rosetta for Linux.
 * Errors: AVZ_ERROR_NOT_SUPPORTED on Intel or before macOS 13; the framework's error
 * when Rosetta is not installed; AVZ_ERROR_INVALID_CONFIGURATION for a bad tag. */
bool avz_config_add_rosetta_share(avz_config *config, const char *tag, CFErrorRef *error);

/* A VZVirtioConsoleDeviceConfiguration (macOS 13) with one
 * VZVirtioConsolePortConfiguration named `name` (borrowed; seen by the guest under
 * /sys/class/virtio-ports), marked as the console when `is_console`, attached to
 * `read_fd`/`write_fd` as for avz_config_add_serial_port_fds (duplicated; -1 disables a
 * direction). Errors: AVZ_ERROR_NOT_SUPPORTED before macOS 13, file-system errors. */
bool avz_config_add_console_port(avz_config *config, const char *name, bool is_console,
                                 int read_fd, int write_fd, CFErrorRef *error);

/* VZVirtioConsoleDeviceSerialPortConfiguration with a VZFileSerialPortAttachment.
 * `path` borrowed. Errors: file-system errors. */
bool avz_config_add_serial_port_file(avz_config *config, const char *path, bool append,
                                     CFErrorRef *error);

/* VZVirtioConsoleDeviceSerialPortConfiguration with a VZFileHandleSerialPortAttachment.
 * The descriptors are borrowed: the callee duplicates them (and closes its duplicates
 * when the configuration and every VM made from it are gone). -1 disables a direction.
 * Errors: file-system errors (bad descriptor). */
bool avz_config_add_serial_port_fds(avz_config *config, int read_fd, int write_fd,
                                    CFErrorRef *error);

/* validateWithError:. Errors: AVZ_ERROR_INVALID_CONFIGURATION with the reason. */
bool avz_config_validate(avz_config *config, CFErrorRef *error);

/* validateSaveRestoreSupportWithError:. Errors: AVZ_ERROR_NOT_SUPPORTED on Intel or
 * before macOS 14; AVZ_ERROR_INVALID_CONFIGURATION (or the framework's code) when this
 * configuration cannot be saved. */
bool avz_config_validate_save_restore(avz_config *config, CFErrorRef *error);

/* ---------------------------------------------------------------------------------- */
/* Virtual machine                                                                    */
/* ---------------------------------------------------------------------------------- */

/* Returns +1: a VM built from a copy of `config` (borrowed) on its own serial queue.
 * `observer` receives every event until the VM is destroyed; `observer_release` is
 * called exactly once with `observer_context`: when the VM is destroyed (on its queue),
 * or, inline, before this function returns NULL. The VM is destroyed after its last
 * CFRelease once no operation is in flight (operations keep it alive until their
 * completion ran). Errors: AVZ_ERROR_INVALID_CONFIGURATION.
 *
 * Limit (macOS): an operation in flight holds the VM. The framework keeps each
 * completion handler the shim gives it (start, stop, pause, resume, save, restore,
 * vsock connect); the handler holds the shim's completion record, which holds the VM
 * object, which holds its queue, the VZVirtualMachine (one of the host's limited VM
 * slots: AVZ_ERROR_LIMIT_EXCEEDED) and the observer context. All of it is freed once
 * the framework calls the handler (the completion then runs) or releases it without
 * calling it (the completion then runs with AVZ_ERROR_INTERNAL), and the last CFRelease
 * was made. If the framework does neither, nothing frees them until the process exits:
 * CFRelease does not, `observer_release` is never called, and the host slot stays
 * taken. The ABI has no call to abandon an operation; after a timeout the Rust side can
 * only stop waiting, release its handle and report that the VM may stay pinned. */
avz_vm *avz_vm_create(avz_config *config, avz_state_observer_fn observer,
                      void *observer_context, avz_context_release_fn observer_release,
                      CFErrorRef *error);

/* Asynchronous operations: each returns at once and calls `completion(context, error)`
 * exactly once on the VM's queue, after the state its outcome implies was reported (see
 * "Order of events"), also when the operation is refused (wrong state:
 * AVZ_ERROR_INVALID_STATE_TRANSITION, or AVZ_ERROR_INVALID_STATE for save, as the
 * framework documents), or when the VM fails during the operation (an error). No
 * operation cancels another: a forced stop is legal only from running or paused, so
 * it never cuts into a start, pause, resume, save or restore. `vm` borrowed;
 * `context` is the caller's. */

/* startWithCompletionHandler:. Errors: AVZ_ERROR_LIMIT_EXCEEDED when the host runs too
 * many VMs, AVZ_ERROR_INVALID_CONFIGURATION (also a missing entitlement). */

void avz_vm_start(avz_vm *vm, avz_completion_fn completion, void *context);
/* stopWithCompletionHandler: (forced; macOS 12: AVZ_ERROR_NOT_SUPPORTED before). */
void avz_vm_stop(avz_vm *vm, avz_completion_fn completion, void *context);
/* pauseWithCompletionHandler:. */
void avz_vm_pause(avz_vm *vm, avz_completion_fn completion, void *context);
/* resumeWithCompletionHandler:. */
void avz_vm_resume(avz_vm *vm, avz_completion_fn completion, void *context);
/* saveMachineStateToURL:completionHandler: (macOS 14, arm64; AVZ_ERROR_NOT_SUPPORTED
 * elsewhere). The VM must be paused. `path` borrowed; it should not exist yet.
 * Errors: AVZ_ERROR_SAVE (also, with no state change, when the VM's configuration
 * cannot be saved: validateSaveRestoreSupportWithError: is checked first). */
void avz_vm_save_state(avz_vm *vm, const char *path, avz_completion_fn completion,
                       void *context);
/* restoreMachineStateFromURL:completionHandler: (macOS 14, arm64). The VM must be
 * stopped; it ends paused. `path` borrowed. Errors: AVZ_ERROR_RESTORE (file from
 * another host or configuration, unreadable file; and, with no state change and the
 * file not read, a configuration that cannot be saved or restored, checked first).
 * The Rust side restores only into a fresh VM (made by avz_vm_create for the restore
 * and never started), every time: Apple documents restoring into a stopped
 * VZVirtualMachine but not into one that already ran, so that is never relied on. */
void avz_vm_restore_state(avz_vm *vm, const char *path, avz_completion_fn completion,
                          void *context);

/* Synchronous (hop onto the VM's queue; never call from a callback). */

/* requestStopWithError: — asks the guest to power off; the guest may ignore it.
 * canRequestStop is checked first. Errors: AVZ_ERROR_INVALID_STATE when canRequestStop
 * is false (the VM is not running; the description names its state); the framework's
 * own error (or AVZ_ERROR_INVALID_STATE when it gives none) when requestStopWithError:
 * fails. */
bool avz_vm_request_stop(avz_vm *vm, CFErrorRef *error);
/* The `state` property (AVZ_STATE_*); AVZ_STATE_ERROR if the framework raises an
 * Objective-C exception reading it (no exception ever leaves an avz_ function). */
int32_t avz_vm_state(avz_vm *vm);
/* canStart, canStop (false before macOS 12), canPause, canResume, canRequestStop; false
 * if the framework raises an exception reading them. */
bool avz_vm_can_start(avz_vm *vm);
bool avz_vm_can_stop(avz_vm *vm);
bool avz_vm_can_pause(avz_vm *vm);
bool avz_vm_can_resume(avz_vm *vm);
bool avz_vm_can_request_stop(avz_vm *vm);

/* Runtime devices. Synchronous like the queries above unless said otherwise. */

/* The memory balloon's targetVirtualMachineMemorySize, in bytes.
 * Errors: AVZ_ERROR_INVALID_CONFIGURATION when the VM has no balloon device,
 * AVZ_ERROR_INVALID_STATE when it is not running or paused. */
bool avz_vm_balloon_target(avz_vm *vm, uint64_t *bytes, CFErrorRef *error);
/* Sets it (the framework rounds to a MiB and clamps to the configured memory).
 * Errors: as avz_vm_balloon_target. */
bool avz_vm_set_balloon_target(avz_vm *vm, uint64_t bytes, CFErrorRef *error);

/* Called exactly once with a connected stream socket: `fd` is owned by the callee
 * (close it) and `error` NULL; or with `fd` -1 and a +1 `error`. */
typedef void (*avz_connect_fn)(void *context, int fd, CFErrorRef error);

/* Asynchronous: connectToPort:completionHandler: on the VM's socket device.
 * Errors (in the completion): AVZ_ERROR_INVALID_CONFIGURATION without a socket device,
 * AVZ_ERROR_INVALID_STATE when the VM is not running, and the framework's error (a POSIX
 * error such as ECONNRESET/ECONNREFUSED) when nothing listens on the guest port. */
void avz_vm_vsock_connect(avz_vm *vm, uint32_t port, avz_connect_fn completion,
                          void *context);

/* Called on the VM's queue for each connection a guest opens to a listened port:
 * `fd` is a connected stream socket owned by the callee. */
typedef void (*avz_accept_fn)(void *context, int fd, uint32_t guest_port, uint32_t host_port);

/* setSocketListener:forPort: — accepts every guest connection to host `port` and hands
 * it to `accept`. `release` is called exactly once with `context`: when the listener is
 * removed or replaced, when the VM is destroyed, or before this function returns false.
 * Errors: AVZ_ERROR_INVALID_CONFIGURATION without a socket device. */
bool avz_vm_vsock_listen(avz_vm *vm, uint32_t port, avz_accept_fn accept, void *context,
                         avz_context_release_fn release, CFErrorRef *error);

/* removeSocketListenerForPort:. Removing a port nobody listens on is not an error. */
bool avz_vm_vsock_remove_listener(avz_vm *vm, uint32_t port, CFErrorRef *error);

#ifdef __cplusplus
}
#endif

#endif /* APPLEVZ_H */
