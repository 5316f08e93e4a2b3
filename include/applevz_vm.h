/*
 * applevz_vm.h — the C API of applevz, for C and C++ programs that manage VMs.
 *
 * This is the header for callers of the static library libapplevz.a. It is NOT
 * include/applevz.h: that one is applevz's internal ABI between its Rust crate and its
 * native half (the Objective-C shim over Virtualization.framework, or the simulator),
 * and a program never includes or calls it. Everything declared here is implemented in
 * Rust (src/capi/) on top of the crate's VirtualMachine, with exactly its lifecycle
 * (README, "Lifecycle"). Hand-written; tests/capi.rs fails when it and the library's
 * exports disagree (names, prototypes, constants, types), tests/capi_install.rs when
 * its version macros are not Cargo.toml's version.
 *
 * Installing, building and linking (README, "From C and C++"):
 *   scripts/install-c.sh PREFIX    -> PREFIX/include/applevz_vm.h,
 *                                     PREFIX/lib/libapplevz.a, PREFIX/lib/pkgconfig/applevz.pc
 *   cc prog.c $(pkg-config --cflags --libs --static applevz)
 *   CMake: find_package(PkgConfig REQUIRED)
 *          pkg_check_modules(applevz REQUIRED IMPORTED_TARGET applevz)
 *          target_link_libraries(prog PRIVATE PkgConfig::applevz ${applevz_STATIC_LDFLAGS})
 *   (the library is static: --static and _STATIC_LDFLAGS add what it needs, its
 *   Libs.private).
 *   On macOS the program is then signed with the com.apple.security.virtualization
 *   entitlement (codesign --force --sign - --entitlements applevz.entitlements prog);
 *   without it every start fails.
 *
 * Versions and compatibility (the ABI policy):
 *   APPLEVZ_VERSION_MAJOR/MINOR/PATCH below are the version of this header;
 *   applevz_version_number() is the library's. They follow semantic versioning, and
 *   from 1.0.0 on a release keeps this promise (before 1.0.0, a MINOR release counts as
 *   a MAJOR one and a PATCH release as a MINOR one):
 *   - a PATCH release changes no declaration in this header;
 *   - a MINOR release may add functions, opaque types, and values to the enumerations
 *     (states, event kinds, error kinds, shutdown policies): a caller treats a value it
 *     does not know as "something else" (a default: branch), never as a crash. It never
 *     removes or renames a function, changes a prototype, renumbers a constant or
 *     changes what an existing one means;
 *   - only a MAJOR release breaks any of that.
 *   Every object is opaque (read through functions, allocated by the library), so no
 *   struct layout is part of the ABI: an event gains a field as a new
 *   applevz_event_get_* function. A program built against this header links a library
 *   of the same MAJOR and at least its MINOR; it can check at run time:
 *     applevz_version_number() / 1000000 == APPLEVZ_VERSION_MAJOR &&
 *     applevz_version_number() >= APPLEVZ_VERSION_NUMBER
 *
 * Ownership, CoreFoundation style, written on every declaration:
 *   "+1"        the caller owns the returned object and frees it with the *_free
 *               function named there, exactly once;
 *   "owned by"  a returned pointer stays valid as long as the named object lives; the
 *               caller never frees it;
 *   "static"    valid for the life of the process; never freed;
 *   "borrows"   the library uses the argument only during the call.
 *
 * Errors: a function that can fail returns false (or NULL) and, when its
 * `applevz_error **error` argument is not NULL, stores a new error there (+1, free it
 * with applevz_error_free), overwriting the pointer without reading it. On success
 * *error is left untouched. Passing NULL for `error` means "I do not want the details".
 *
 * NULL: a NULL pointer where an object or a string is required never crashes: functions
 * with an error argument fail with APPLEVZ_ERROR_INVALID_ARGUMENT, the others return
 * the defined value written on them. A dangling pointer (an object already freed) is
 * undefined behaviour, as anywhere in C.
 *
 * Threads: an applevz_vm may be used from any number of threads at once (the
 * lifecycle calls serialize among themselves exactly as in Rust: VirtualMachine is
 * Send + Sync), except applevz_vm_free, which must be the last call on it. The
 * lifecycle calls block until the operation finished or timed out (timeouts come from
 * the definition's [timeouts]). Errors are immutable and may be read from any thread.
 *
 * Panics: no Rust panic crosses into C. A bug inside applevz is reported as an
 * APPLEVZ_ERROR_INTERNAL error (or the defined value of a function without one).
 */
#ifndef APPLEVZ_VM_H
#define APPLEVZ_VM_H

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The version of this header: Cargo.toml's version (tests/capi.rs checks them; after
 * a version bump `APPLEVZ_UPDATE_HEADER_VERSION=1 cargo test --test capi` rewrites these
 * lines), and MAJOR * 1000000 + MINOR * 1000 + PATCH, which applevz_version_number()
 * returns for the library. */
#define APPLEVZ_VERSION_MAJOR 0
#define APPLEVZ_VERSION_MINOR 1
#define APPLEVZ_VERSION_PATCH 0
#define APPLEVZ_VERSION_STRING "0.1.0"
#define APPLEVZ_VERSION_NUMBER \
    (APPLEVZ_VERSION_MAJOR * 1000000 + APPLEVZ_VERSION_MINOR * 1000 + APPLEVZ_VERSION_PATCH)

/* -------------------------------------------------------------------------------- */
/* Types and constants                                                              */
/* -------------------------------------------------------------------------------- */

/* An open VM (opaque). +1 from applevz_vm_open; free with applevz_vm_free. */
typedef struct applevz_vm applevz_vm;

/* An error (opaque). +1 through an `applevz_error **error` argument; free with
 * applevz_error_free. The error of an event is borrowed instead (see
 * applevz_event_get_error). */
typedef struct applevz_error applevz_error;

/* A state-event subscription (opaque). +1 from applevz_vm_subscribe; free with
 * applevz_subscription_free. */
typedef struct applevz_subscription applevz_subscription;

/* The state of a VM: the framework's ten (values 0-9 in VZVirtualMachineState's order)
 * plus SUSPENDED, stopped with a saved state that applevz_vm_start restores. */
typedef int32_t applevz_vm_state;
enum {
    APPLEVZ_STATE_INVALID = -1,  /* not a state: applevz_vm_get_state(NULL) */
    APPLEVZ_STATE_STOPPED = 0,   /* not running; no saved state */
    APPLEVZ_STATE_RUNNING = 1,   /* the guest runs */
    APPLEVZ_STATE_PAUSED = 2,    /* the guest is frozen in memory */
    APPLEVZ_STATE_ERROR = 3,     /* the VM stopped because of an error; start boots it afresh */
    APPLEVZ_STATE_STARTING = 4,  /* booting */
    APPLEVZ_STATE_PAUSING = 5,   /* running -> paused */
    APPLEVZ_STATE_RESUMING = 6,  /* paused -> running */
    APPLEVZ_STATE_STOPPING = 7,  /* running or paused -> stopped */
    APPLEVZ_STATE_SAVING = 8,    /* writing the VM's state to a file (during suspend) */
    APPLEVZ_STATE_RESTORING = 9, /* reading it back (during start from suspended) */
    APPLEVZ_STATE_SUSPENDED = 10 /* stopped, with a saved state that start restores */
};

/* How applevz_vm_shutdown stops the VM. */
typedef int32_t applevz_shutdown_policy;
enum {
    /* Ask the guest to power off (ACPI power button) and wait up to the graceful
     * timeout; then fail with APPLEVZ_ERROR_TIMEOUT, or force the VM off when the
     * definition says on_graceful_timeout = "force-stop". A paused VM is resumed first. */
    APPLEVZ_SHUTDOWN_POWERDOWN = 0,
    /* Force the VM off, after an operation under way has settled; a suspended VM
     * keeps its saved state. */
    APPLEVZ_SHUTDOWN_HALT = 1,
    /* Force the VM off, after an operation under way has settled; a VM that was
     * already suspended has its saved state discarded. */
    APPLEVZ_SHUTDOWN_POWEROFF = 2
};

/* What went wrong: a stable number, never reused. */
typedef int32_t applevz_error_kind;
enum {
    APPLEVZ_ERROR_NONE = 0,              /* not an error: applevz_error_code(NULL) */
    APPLEVZ_ERROR_INVALID_ARGUMENT = 1,  /* a NULL pointer where one is required, or a
                                            value outside its enumeration */
    APPLEVZ_ERROR_INVALID_STATE = 2,     /* not possible in the VM's state; the message
                                            names the state and the way out */
    APPLEVZ_ERROR_TIMEOUT = 3,           /* did not finish in time (a late completion is
                                            harmless) */
    APPLEVZ_ERROR_FRAMEWORK = 4,         /* the framework refused or failed: see
                                            applevz_error_framework_domain/_code */
    APPLEVZ_ERROR_NOT_SUPPORTED = 5,     /* not on this host or for this configuration
                                            (suspend on an Intel Mac or before macOS 14,
                                            Rosetta, the framework's NotSupported code);
                                            the VM keeps running */
    APPLEVZ_ERROR_IO = 6,                /* a file operation failed (reading the
                                            definition, moving the saved state) */
    APPLEVZ_ERROR_INVALID_CONFIG = 7,    /* the definition file, or the configuration it
                                            describes, is invalid: the message names the
                                            file, the key and the reason */
    APPLEVZ_ERROR_SAVED_STATE_CHANGED = 8, /* the saved-state file appeared or vanished
                                            behind the VM's back; nothing was changed */
    APPLEVZ_ERROR_RESTORE_FAILED = 9,    /* restoring the saved state failed; the file is
                                            kept (a Poweroff discards it) */
    APPLEVZ_ERROR_NO_SAVED_STATE_PATH = 10, /* suspend without saved_state in the
                                            definition */
    APPLEVZ_ERROR_INTERNAL = 11          /* a bug in applevz (a caught panic) */
};

/* What caused an event. */
typedef int32_t applevz_event_kind;
enum {
    APPLEVZ_EVENT_INVALID = -1,             /* not a kind: applevz_event_get_kind(NULL) */
    APPLEVZ_EVENT_STATE_CHANGED = 0,        /* the framework's state changed */
    APPLEVZ_EVENT_GUEST_STOPPED = 1,        /* the guest powered itself off */
    APPLEVZ_EVENT_STOPPED_WITH_ERROR = 2,   /* the VM failed; the event's error says why */
    APPLEVZ_EVENT_NETWORK_DISCONNECTED = 3, /* a network attachment was disconnected; the
                                               event's error names the device and why; the
                                               state does not change */
    APPLEVZ_EVENT_SUSPENDED = 4,            /* suspend stored the VM: it is suspended (a
                                               suspending VM is never reported stopped) */
    APPLEVZ_EVENT_SAVED_STATE_REMOVED = 5   /* a saved state was restored and deleted, or
                                               discarded by a Poweroff */
};

/* One state change (opaque: read it with applevz_event_get_state, _get_kind and
 * _get_error, so that a later release can add to it). The event and its error are
 * borrowed by the callback: valid only until it returns (copy what you need; never
 * free them). */
typedef struct applevz_event applevz_event;

/* A subscriber's callback. See applevz_vm_subscribe for the thread it runs on and what
 * it may do. It must return normally: a C++ exception must not escape it. */
typedef void (*applevz_event_callback)(void *user_data, const applevz_event *event);

/* -------------------------------------------------------------------------------- */
/* The library                                                                       */
/* -------------------------------------------------------------------------------- */

/* The library's version, e.g. "0.1.0" (APPLEVZ_VERSION_STRING of its header). Static. */
const char *applevz_version(void);

/* The library's version as MAJOR * 1000000 + MINOR * 1000 + PATCH, e.g. 1000 for 0.1.0:
 * APPLEVZ_VERSION_NUMBER of the header it was built with. Compare the two to detect a
 * program built against another header than the library it runs with. */
int applevz_version_number(void);

/* True when the library drives the simulator (every non-Apple build) instead of
 * Virtualization.framework. */
bool applevz_is_simulator(void);

/* The name of a state: "stopped", "running", "paused", "error", "starting", "pausing",
 * "resuming", "stopping", "saving", "restoring", "suspended"; "invalid" for any other
 * value. Static. */
const char *applevz_state_name(applevz_vm_state state);

/* -------------------------------------------------------------------------------- */
/* VMs                                                                               */
/* -------------------------------------------------------------------------------- */

/* Opens a VM definition file (vm.toml) exactly as the applevz command-line tool reads
 * it (README, "Definition files"; relative paths are relative to the file) and creates
 * the VM. It starts out STOPPED, or SUSPENDED when the definition's saved_state file
 * exists. Nothing boots yet.
 *
 * vm_toml_path: borrows; NUL-terminated, in the file system's encoding.
 * Returns +1 (free with applevz_vm_free), or NULL and an error: INVALID_ARGUMENT for a
 * NULL path, IO when the file cannot be read, INVALID_CONFIG for any bad content (the
 * message names the file, the key and the reason), FRAMEWORK or NOT_SUPPORTED when the
 * framework rejects the configuration.
 *
 * On the simulator only, the environment variable APPLEVZ_SIM_GUEST scripts the guest,
 * as for `applevz run`: e.g. "boot_delay_ms=200,ignores_stop_request"; keys
 * boot_delay_ms, stop_delay_ms, operation_delay_ms, power_off_after_ms, crash_after_ms,
 * ignores_stop_request, save_restore_unsupported, not_savable. */
applevz_vm *applevz_vm_open(const char *vm_toml_path, applevz_error **error);

/* Frees a VM; NULL is ignored. A running or paused VM is forced off without waiting
 * (like pulling the plug, as dropping a Rust VirtualMachine does): call
 * applevz_vm_shutdown or applevz_vm_suspend first to stop it cleanly. Never blocks on
 * the guest. Must be the last call on `vm`: no other thread may still be inside a call
 * on it. Its subscriptions are ended first, as by applevz_subscription_free (waiting
 * for a callback under way on another thread; from inside a callback, that callback is
 * the last): once this returns no callback runs, so callbacks may use `vm` freely. The
 * subscription handles stay valid and must still be freed. */
void applevz_vm_free(applevz_vm *vm);

/* Starts the VM: stopped or error -> boots it (afresh); paused -> resumes it;
 * running -> nothing; suspended -> restores the saved state, resumes, and only then
 * deletes the file (a failed restore keeps it: RESTORE_FAILED). Blocks until running or
 * failed.
 * Start, pause, resume and suspend wait their turn behind another lifecycle call under
 * way on the same VM, then act on the state it left; a VM still in transition (an
 * earlier call timed out while the framework went on) gives INVALID_STATE. */
bool applevz_vm_start(applevz_vm *vm, applevz_error **error);

/* Stops the VM under `policy`:
 *   state \ policy      POWERDOWN                    HALT            POWEROFF
 *   stopped, error      nothing                      nothing         nothing
 *   running             ask the guest, wait (above)  forced stop     forced stop
 *   paused              resume, then as running      forced stop     forced stop
 *   suspended           INVALID_STATE                nothing         discard the saved state
 *   in flight (*)       wait for it to settle, then act on where it ended (the rows
 *                       above), each policy alike; POWEROFF then never discards a
 *                       saved state
 * (*) starting, pausing, resuming, stopping, saving, restoring, or another lifecycle call
 * under way (a callback reacting to an event may call this while the call that caused
 * the event has not returned yet). The wait is bounded by the timeouts of each operation
 * ahead; past that: APPLEVZ_ERROR_TIMEOUT, nothing changed. Calls on one VM are served
 * in the order they came, so a HALT or POWEROFF goes before every call made after it,
 * and one asked while a POWERDOWN waits for the guest cuts that wait short. A policy
 * value not listed above: INVALID_ARGUMENT. */
bool applevz_vm_shutdown(applevz_vm *vm, applevz_shutdown_policy policy,
                         applevz_error **error);

/* Suspends a running or paused VM: pause, save to a temporary file next to the
 * definition's saved_state, stop, rename into place; it ends SUSPENDED (its last event
 * is APPLEVZ_EVENT_SUSPENDED) and applevz_vm_start restores it. Until the stop is
 * issued any failure resumes a VM that was running and leaves an existing saved state
 * untouched. NOT_SUPPORTED (the VM keeps running) on an Intel Mac, before macOS 14, or
 * for a configuration that cannot be saved; NO_SAVED_STATE_PATH without saved_state. */
bool applevz_vm_suspend(applevz_vm *vm, applevz_error **error);

/* Pauses a running VM (a paused one: nothing). Other states: INVALID_STATE. */
bool applevz_vm_pause(applevz_vm *vm, applevz_error **error);

/* Resumes a paused VM (a running one: nothing). A suspended VM is resumed by
 * applevz_vm_start. Other states: INVALID_STATE. */
bool applevz_vm_resume(applevz_vm *vm, applevz_error **error);

/* Waits until the VM is in `state`, up to timeout_ms milliseconds (event-driven): true
 * once it is, false with TIMEOUT when it was not in time, INVALID_ARGUMENT for a value
 * that is not a state. */
bool applevz_vm_wait_for_state(const applevz_vm *vm, applevz_vm_state state,
                               uint64_t timeout_ms, applevz_error **error);

/* The VM's state (one of the eleven); APPLEVZ_STATE_INVALID for NULL. Never blocks on
 * an operation in flight. */
applevz_vm_state applevz_vm_get_state(const applevz_vm *vm);

/* -------------------------------------------------------------------------------- */
/* State events                                                                      */
/* -------------------------------------------------------------------------------- */

/* Subscribes to the VM's state changes from now on: `callback(user_data, event)` for
 * every event, in order.
 *
 * Thread: each subscription has its own thread, started here; every callback of this
 * subscription runs on it, one at a time (never on the caller's thread, never on the
 * framework's queue). `user_data` (not used by the library, only passed back) and
 * `callback` must be usable from that thread until the subscription is freed.
 * Re-entrancy: the callback may call any function of this API, including
 * applevz_subscription_free on its own subscription and blocking calls such as
 * applevz_vm_shutdown on the same VM; while it blocks, later events wait in an
 * unbounded queue (other subscriptions are not held up). It must not throw.
 *
 * Returns +1 (free with applevz_subscription_free), or NULL and an error:
 * INVALID_ARGUMENT when `vm` or `callback` is NULL, IO when no thread could be started.
 * A subscription may outlive its VM: applevz_vm_free ends its deliveries, and it must
 * still be freed. */
applevz_subscription *applevz_vm_subscribe(applevz_vm *vm, applevz_event_callback callback,
                                           void *user_data, applevz_error **error);

/* Ends a subscription; NULL is ignored. When it returns, no callback of this
 * subscription runs any more: called from another thread it waits for a callback under
 * way to return (so do not call it while holding a lock that callback needs); called
 * from inside the callback it returns at once and that callback is the last.
 * The subscription's own thread ends with it (from inside the callback: as soon as
 * that callback returns). */
void applevz_subscription_free(applevz_subscription *subscription);

/* The VM's state after the event; APPLEVZ_STATE_INVALID for NULL. */
applevz_vm_state applevz_event_get_state(const applevz_event *event);

/* What happened; APPLEVZ_EVENT_INVALID for NULL. */
applevz_event_kind applevz_event_get_kind(const applevz_event *event);

/* STOPPED_WITH_ERROR, NETWORK_DISCONNECTED: the framework's error, owned by the event
 * (borrowed like it: valid until the callback returns; never freed). NULL for any
 * other kind, or for NULL. */
const applevz_error *applevz_event_get_error(const applevz_event *event);

/* -------------------------------------------------------------------------------- */
/* Errors                                                                            */
/* -------------------------------------------------------------------------------- */

/* The error's kind; APPLEVZ_ERROR_NONE for NULL. */
applevz_error_kind applevz_error_code(const applevz_error *error);

/* The full message, UTF-8: what was asked, in which state, why, and what to do, e.g.
 * "cannot pause while the VM is stopped: the VM is not running: applevz_vm_start boots
 * it". The way out names this API's functions and constants, and the definition
 * file's keys; the framework's or the system's reason follows the message.
 * Owned by the error (valid until applevz_error_free). "no error" (static) for NULL. */
const char *applevz_error_message(const applevz_error *error);

/* The framework's error domain, e.g. "VZErrorDomain" (the simulator uses the same
 * domain and codes), when the error came from the framework (kinds FRAMEWORK,
 * NOT_SUPPORTED, RESTORE_FAILED, and an event's error); NULL otherwise or for NULL.
 * Owned by the error. */
const char *applevz_error_framework_domain(const applevz_error *error);

/* The framework's code in that domain (VZErrorDomain: 1 internal, 2 invalid
 * configuration, 3 invalid state, 4 invalid state transition, ... 10 not supported,
 * 11 save, 12 restore); 0 when there is no framework error or for NULL. */
int64_t applevz_error_framework_code(const applevz_error *error);

/* Frees an error received through an `applevz_error **` argument; NULL is ignored.
 * Never free the borrowed error of an event. */
void applevz_error_free(applevz_error *error);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* APPLEVZ_VM_H */
