/*
 * internal.h — shared between the simulator's own files only (not installed, not
 * part of the ABI). Every function and variable here carries the avz_sim_ prefix and
 * hidden visibility, so that two copies of the simulator never clash at link time;
 * types and macros are not linker symbols and keep short names.
 *
 * Which file does what: README.md beside this file.
 */
#ifndef APPLEVZ_SIM_INTERNAL_H
#define APPLEVZ_SIM_INTERNAL_H

#include "cf.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#if defined(__GNUC__) || defined(__clang__)
#define AVZ_SIM_HIDDEN __attribute__((visibility("hidden")))
#define AVZ_SIM_PRINTF(fmt, args) __attribute__((format(printf, fmt, args)))
#else
#define AVZ_SIM_HIDDEN
#define AVZ_SIM_PRINTF(fmt, args)
#endif

#define AVZ_SIM_VZ_DOMAIN "VZErrorDomain"
#define AVZ_SIM_POSIX_DOMAIN "NSPOSIXErrorDomain"

/* The class of a simulator object: its name (for diagnostics) and what happens when
 * its reference count reaches zero. */
typedef struct avz_sim_class {
    const char *name;
    void (*last_release)(void *object);
} avz_sim_class;

/* The common header every simulator object starts with. */
typedef struct avz_sim_object {
    uint32_t magic;
    const avz_sim_class *cls;
    atomic_long refcount;
} avz_sim_object;

/* Initialises the header with one reference and counts one more live object. */
AVZ_SIM_HIDDEN void avz_sim_object_init(avz_sim_object *object, const avz_sim_class *cls);
/* Frees an object whose reference count reached zero and counts one live object less.
 * `object` is the start of the malloc'd block. */
AVZ_SIM_HIDDEN void avz_sim_object_free(avz_sim_object *object);
/* Returns `cf` as an object of class `cls`; aborts with a message naming `function`
 * when it is NULL, not alive or of another class (`cls` NULL: any class). */
AVZ_SIM_HIDDEN avz_sim_object *avz_sim_object_check(CFTypeRef cf, const avz_sim_class *cls,
                                                   const char *function);

/* Prints "applevz simulator: <message>" to stderr and aborts. */
_Noreturn AVZ_SIM_HIDDEN void avz_sim_fatal(const char *fmt, ...) AVZ_SIM_PRINTF(1, 2);

/* Allocation that aborts when memory is exhausted. */
AVZ_SIM_HIDDEN void *avz_sim_alloc(size_t size);
AVZ_SIM_HIDDEN char *avz_sim_strdup(const char *string); /* NULL stays NULL */

/* Returns +1: a new CFError. The description is formatted with printf rules. */
AVZ_SIM_HIDDEN CFErrorRef avz_sim_error_create(const char *domain, CFIndex code,
                                               const char *fmt, ...) AVZ_SIM_PRINTF(3, 4);
AVZ_SIM_HIDDEN CFErrorRef avz_sim_error_createv(const char *domain, CFIndex code,
                                                const char *fmt, va_list args);
/* Stores a new error in *error when `error` is non-NULL; always returns false so that
 * a failing function can `return avz_sim_fail(...)`. */
AVZ_SIM_HIDDEN bool avz_sim_fail(CFErrorRef *error, const char *domain, CFIndex code,
                                 const char *fmt, ...) AVZ_SIM_PRINTF(4, 5);

/* Thread-safe strerror: writes into `buffer` when needed and returns the text. */
AVZ_SIM_HIDDEN const char *avz_sim_strerror(int errnum, char *buffer, size_t size);

/* CLOCK_MONOTONIC in nanoseconds, and condition variables that wait on it. */
AVZ_SIM_HIDDEN uint64_t avz_sim_monotonic_ns(void);
AVZ_SIM_HIDDEN void avz_sim_cond_init_monotonic(pthread_cond_t *cond);
/* pthread_cond_timedwait until the monotonic `deadline_ns`; returns its result. */
AVZ_SIM_HIDDEN int avz_sim_cond_wait_until(pthread_cond_t *cond, pthread_mutex_t *mutex,
                                           uint64_t deadline_ns);

/* ---------------------------------------------------------------------------------- */
/* Constants                                                                          */
/* ---------------------------------------------------------------------------------- */

#define VZ AVZ_SIM_VZ_DOMAIN
#define POSIX AVZ_SIM_POSIX_DOMAIN

#define MIB ((uint64_t)1024 * 1024)
#define MIN_MEMORY_SIZE (128 * MIB)
#define MACHINE_ID_SIZE 32
#define MACHINE_ID_MAGIC "AVZSIMID"
#define MACHINE_ID_MAGIC_SIZE 8
#define ERRBUF 128
/* Files the framework creates (saved state, EFI variable store, serial output) get the
 * default mode under the process's umask, as the framework's own files do: keeping guest
 * data private is the caller's job (fidelity rule 18). */
#define FRAMEWORK_FILE_MODE 0666
/* What the shim reports when the framework releases a completion handler without calling
 * it (AVZCompletion -dealloc in shim/applevz_machine.m): code 1 with this description. */
#define DROPPED_COMPLETION_TEXT "the framework dropped the operation without completing it"
/* How long the shim holds a delivery waiting for its state notification before it reads
 * the state itself (AVZ_HOLD_LIMIT_NS in shim/applevz_machine.m). */
#define SHIM_HOLD_LIMIT_MS 2000

#define REQUIRE(pointer, function)                                                       \
    do {                                                                                 \
        if ((pointer) == NULL) {                                                         \
            avz_sim_fatal("%s: NULL %s", function, #pointer);                            \
        }                                                                                \
    } while (0)

/* ---------------------------------------------------------------------------------- */
/* Configuration data (config.c, config_devices.c)                                    */
/* ---------------------------------------------------------------------------------- */

enum boot_kind { BOOT_NONE, BOOT_LINUX, BOOT_EFI };

typedef struct sim_knobs {
    uint32_t boot_delay_ms;
    uint32_t stop_delay_ms;
    uint32_t operation_delay_ms;
    bool ignores_stop_request;
    uint32_t power_off_after_ms;
    uint32_t crash_after_ms;
    int64_t crash_code;
    bool save_restore_unsupported;
    bool not_savable;
    bool vsock_unanswered; /* a connect to a port nobody listens on never completes */
} sim_knobs;

typedef struct sim_disk {
    char *path;
    int32_t interface; /* AVZ_STORAGE_* */
    bool read_only;
    int32_t caching_mode;
    int32_t sync_mode;
    char *identifier; /* virtio block only; NULL: none */
} sim_disk;

typedef struct sim_net {
    uint8_t mac[6];
    int fd;       /* file-handle attachment: our duplicate; -1: NAT */
    uint32_t mtu; /* file-handle attachment: 1500...65535 */
} sim_net;

typedef struct sim_serial {
    bool file;    /* a file attachment (VZFileSerialPortAttachment), else file handles */
    int read_fd;  /* -1: none */
    int write_fd; /* -1: none */
} sim_serial;

typedef struct sim_share {
    char *tag;
    bool rosetta;      /* a Rosetta share: no directories */
    size_t count;      /* directories */
    char **names;      /* NULL: a single-directory share */
    char **paths;
    bool *read_only;
} sim_share;

typedef struct sim_console {
    char *name;
    bool is_console;
    int read_fd;  /* -1: none */
    int write_fd; /* -1: none */
} sim_console;

struct avz_config {
    avz_sim_object base;
    uint32_t cpu_count;
    uint64_t memory_size;

    enum boot_kind boot;
    char *kernel_path;
    char *initrd_path;
    char *command_line;
    char *efi_store_path;

    bool has_platform;
    uint8_t machine_identifier[MACHINE_ID_SIZE];

    sim_disk *disks;
    size_t disk_count, disk_capacity;
    sim_net *nets;
    size_t net_count, net_capacity;
    sim_serial *serials;
    size_t serial_count, serial_capacity;
    sim_share *shares;
    size_t share_count, share_capacity;
    sim_console *consoles;
    size_t console_count, console_capacity;
    size_t entropy_count, balloon_count, socket_count;
    uint32_t *guest_ports; /* avz_sim_config_add_guest_vsock_listener */
    size_t guest_port_count, guest_port_capacity;

    sim_knobs knobs;
};

/* ---------------------------------------------------------------------------------- */
/* Virtual machine data (queue.c, vm.c, devices.c, saved_state.c)                     */
/* ---------------------------------------------------------------------------------- */

#define OP_KINDS 7 /* AVZ_SIM_OP_START ... AVZ_SIM_OP_REQUEST_STOP */

enum task_kind {
    TASK_OPERATION, /* an asynchronous operation; holds one VM reference */
    TASK_SYNC,      /* a synchronous call waiting on sync_done */
    TASK_POWER_OFF, /* avz_sim_vm_guest_power_off */
    TASK_CRASH,     /* avz_sim_vm_crash */
    TASK_FAIL_NEXT, /* avz_sim_vm_fail_next */
    TASK_SET_OPERATION_DELAY, /* avz_sim_vm_set_operation_delay_ms */
    TASK_VSOCK_CONNECT,       /* avz_vm_vsock_connect; holds one VM reference */
    TASK_GUEST_VSOCK_CONNECT, /* avz_sim_vm_guest_vsock_connect */
    TASK_NETWORK_DISCONNECT,  /* avz_sim_vm_network_disconnect */
    TASK_LISTENER_RELEASE,    /* a listener dropped by a synchronous call made on the
                                 worker: its release runs after the current callback */
    TASK_WITHHOLD_NEXT,       /* avz_sim_vm_withhold_next_completion */
    TASK_DROP_NEXT,           /* avz_sim_vm_drop_next_completion */
    TASK_LATE_NEXT            /* avz_sim_vm_delay_next_notification */
};

enum timer_kind {
    TIMER_OPERATION,       /* an operation's transitional state ends */
    TIMER_GUEST_POWER_OFF, /* power_off_after */
    TIMER_GUEST_CRASH,     /* crash_after */
    TIMER_STOP_REQUEST,    /* the guest acts on a stop request */
    TIMER_DEFERRED_POWER_OFF, /* a power-off that fell due while the guest did not run */
    TIMER_LATE_NOTIFICATION   /* held deliveries go out (avz_sim_vm_delay_next_notification) */
};

enum sync_kind {
    SYNC_STATE,
    SYNC_REQUEST_STOP,
    SYNC_BALLOON_GET,
    SYNC_BALLOON_SET,
    SYNC_VSOCK_LISTEN,
    SYNC_VSOCK_REMOVE
};

/* A host vsock listener (avz_vm_vsock_listen). */
typedef struct sim_listener {
    uint32_t port;
    avz_accept_fn accept;
    void *context;
    avz_context_release_fn release;
} sim_listener;

typedef struct sync_call {
    enum sync_kind kind;
    bool done;
    int32_t state;
    bool ok;
    CFErrorRef error;
    uint64_t bytes;         /* balloon: in (set) and out */
    sim_listener listener;  /* listen: the new listener; remove: its port */
    bool dropped;           /* listen/remove: `released` must be released */
    sim_listener released;  /* the replaced or removed listener (or the refused one) */
} sync_call;

typedef struct sim_task {
    struct sim_task *next;
    enum task_kind kind;
    int32_t op;
    avz_completion_fn completion;
    avz_connect_fn connect;
    void *context;
    char *path;
    int64_t code;
    uint32_t port; /* vsock port; TASK_NETWORK_DISCONNECT: the device index */
    avz_context_release_fn release;
    sync_call *sync;
} sim_task;

/* A completion handler the framework keeps and never calls (avz_sim_vm_withhold_next_
 * completion, avz_sim_config_set_vsock_unanswered): released uncalled when the VM is
 * freed, so the callee then gets the shim's dropped-handler error. */
typedef struct sim_withheld {
    avz_completion_fn completion; /* an operation's, or NULL */
    avz_connect_fn connect;       /* a vsock connect's, or NULL */
    void *context;
} sim_withheld;

typedef struct sim_timer {
    struct sim_timer *next;
    uint64_t id;
    uint64_t deadline_ns;
    enum timer_kind kind;
} sim_timer;

/* An accepted asynchronous operation. It owns one VM reference, released after its
 * completion ran. */
typedef struct sim_op {
    int32_t kind;
    avz_completion_fn completion;
    void *context;
    char *path;
    int32_t origin;      /* the state before the operation */
    uint64_t timer;      /* its TIMER_OPERATION */
    bool inject;         /* avz_sim_vm_fail_next applies */
    int64_t inject_code;
    bool withhold;       /* avz_sim_vm_withhold_next_completion applies */
    bool drop;           /* avz_sim_vm_drop_next_completion applies */
    int save_fd;         /* save: the partial file being written */
} sim_op;

struct avz_vm {
    avz_sim_object base;

    /* Immutable after creation. */
    sim_knobs knobs;
    uint64_t fingerprint;
    avz_state_observer_fn observer;
    void *observer_context;
    avz_context_release_fn observer_release;
    int *fds; /* every descriptor the VM owns */
    size_t fd_count;
    int *output_fds; /* the serial outputs among them */
    size_t output_count;
    int *console_fds;     /* the console port outputs among them */
    char **console_lines; /* what each console port output gets when the guest boots */
    size_t console_count;
    bool has_balloon;
    bool has_socket_device;
    size_t net_count; /* network devices */
    uint64_t memory_size;
    uint32_t *guest_ports; /* where the simulated guest listens */
    size_t guest_port_count;
    const char *unsavable; /* why the configuration cannot be saved; NULL: it can */

    /* The queue's place in the worker pool (queue.c), guarded by the pool's mutex. */
    bool scheduled;               /* on the ready list or in a worker's turn */
    struct avz_vm *ready_next;    /* the ready list's link */
    size_t heap_index;            /* 1 + position in the pool's timer heap; 0: none */
    uint64_t heap_deadline;       /* when the pool schedules the queue for its timers */

    /* Guarded by mutex. */
    pthread_mutex_t mutex;
    pthread_cond_t sync_done; /* synchronous callers wait on it */
    sim_task *tasks, *tasks_tail;
    sim_timer *timers; /* by deadline, then id */
    uint64_t next_timer_id;
    atomic_bool dying; /* set under mutex once; callbacks read it without */

    int32_t state;
    bool left_stopped; /* has ever been in a state other than Stopped */
    sim_op *op;        /* the operation in flight (at most one) */
    bool fail_next[OP_KINDS];
    int64_t fail_code[OP_KINDS];
    bool guest_booted; /* reached Running since it was last stopped */
    bool power_off_pending; /* the guest powers off as soon as it runs again */
    uint64_t power_off_timer, crash_timer, stop_request_timer, deferred_power_off_timer;
    uint64_t balloon_target;
    sim_listener *listeners; /* host vsock listeners, at most one per port */
    size_t listener_count, listener_capacity;
    uint32_t guest_connections; /* source ports handed out so far */
    bool withhold_next[OP_KINDS];     /* avz_sim_vm_withhold_next_completion */
    bool drop_next[OP_KINDS];         /* avz_sim_vm_drop_next_completion */
    sim_withheld *withheld;           /* handlers the framework keeps without calling */
    size_t withheld_count, withheld_capacity;
    uint32_t late_next_ms;            /* avz_sim_vm_delay_next_notification */
    bool holding;                     /* deliveries wait for a late notification */
    struct held_outbox *held, *held_tail; /* what waits, in order */
};

enum outbox_kind {
    OUT_OBSERVER,
    OUT_COMPLETION,
    OUT_CONNECT, /* a vsock connect completion */
    OUT_ACCEPT,  /* a host listener accepts a guest connection */
    OUT_RELEASE  /* a dropped listener's release */
};

typedef struct outbox_item {
    enum outbox_kind kind;
    int32_t state;
    int32_t event;
    CFErrorRef error; /* observer: released after the call; completions: handed over */
    avz_completion_fn completion;
    avz_connect_fn connect;
    avz_accept_fn accept;
    avz_context_release_fn release;
    void *context;
    int fd; /* connect, accept: handed over */
    uint32_t guest_port, host_port;
} outbox_item;

#define OUTBOX_CAPACITY 16

typedef struct outbox {
    outbox_item items[OUTBOX_CAPACITY];
    size_t count;
    unsigned vm_releases; /* operation references to drop after every callback */
    bool serial_line;     /* write the "guest is running" line */
} outbox;

/* One turn's callbacks held back while a state notification is late. */
typedef struct held_outbox {
    struct held_outbox *next;
    outbox out;
} held_outbox;

/* ---------------------------------------------------------------------------------- */
/* Functions, by the file that defines them                                           */
/* ---------------------------------------------------------------------------------- */

/* ---- util.c ---- */

/* Grows a malloc'd array so that it can hold `needed` elements of `size` bytes. */
AVZ_SIM_HIDDEN void avz_sim_array_reserve(void **items, size_t *capacity, size_t needed,
                                          size_t size);

/* open(2) with O_CLOEXEC, retried on EINTR. */
AVZ_SIM_HIDDEN int avz_sim_open_cloexec(const char *path, int flags, mode_t mode);

/* Writes all `size` bytes (retrying on EINTR and short writes); false on an error. */
AVZ_SIM_HIDDEN bool avz_sim_write_all(int fd, const void *data, size_t size);

/* Reads up to `size` bytes (fewer only at end of file). Returns the count or -1. */
AVZ_SIM_HIDDEN ssize_t avz_sim_read_full(int fd, void *data, size_t size);

/* Closes `fd` unless it is negative. */
AVZ_SIM_HIDDEN void avz_sim_close_fd(int fd);

/* Random bytes from /dev/urandom; a splitmix64 stream seeded from the clock, the pid
 * and a counter if it cannot be read. */
AVZ_SIM_HIDDEN void avz_sim_fill_random(uint8_t *buffer, size_t size);

/* The value of a hexadecimal digit, or -1. */
AVZ_SIM_HIDDEN int avz_sim_hex_digit(char c);

/* A duplicate of `fd` with FD_CLOEXEC, or -1 with errno set. */
AVZ_SIM_HIDDEN int avz_sim_dup_cloexec(int fd);

/* ---- host.c ---- */

/* The simulated host is an Intel Mac (avz_sim_set_host_architecture). */
AVZ_SIM_HIDDEN bool avz_sim_host_is_intel(void);

/* A new random machine identifier (the magic, then random bytes). */
AVZ_SIM_HIDDEN void avz_sim_machine_identifier_fresh(uint8_t out[MACHINE_ID_SIZE]);

/* ---- config.c ---- */

/* Returns `config` checked to be a live configuration (aborts naming `function`). */
AVZ_SIM_HIDDEN avz_config *avz_sim_config_check(avz_config *config, const char *function);

/* Why `config` cannot be saved (a device the framework does not save, or the
 * not_savable knob), or NULL when it can (fidelity rule 19). A static string. */
AVZ_SIM_HIDDEN const char *avz_sim_config_unsavable(const avz_config *config);

/* What avz_config_validate and avz_vm_create check. */
AVZ_SIM_HIDDEN bool avz_sim_config_validate(const avz_config *config, CFErrorRef *error);

/* Returns +1: code 10, save/restore is not supported on this host; `what` names the
 * refused action. */
AVZ_SIM_HIDDEN CFErrorRef avz_sim_save_restore_unsupported_error(const char *what);

/* ---- saved_state.c ---- */

/* Everything a saved state is bound to: the whole configuration except descriptor
 * numbers (and the simulator's knobs). Each device class starts with its count, so
 * devices cannot slide from one class into the next. */
AVZ_SIM_HIDDEN uint64_t avz_sim_config_fingerprint(const avz_config *config);

/* Removes a save's partial file. */
AVZ_SIM_HIDDEN void avz_sim_save_discard(sim_op *op);

/* Save: checks the configuration and creates the state file exclusively (it stays a
 * partial file until the save finishes). Returns NULL or why it cannot save (+1). */
AVZ_SIM_HIDDEN CFErrorRef avz_sim_save_prepare(avz_vm *vm, sim_op *op);

/* Save: write the state file. Returns NULL or the failure (+1). */
AVZ_SIM_HIDDEN CFErrorRef avz_sim_save_finish(avz_vm *vm, sim_op *op);

/* Restore: read and check the state file. Returns NULL or the failure (+1). The file is
 * only read. */
AVZ_SIM_HIDDEN CFErrorRef avz_sim_restore_check(avz_vm *vm, const char *path);

/* ---- queue.c ---- */

/* Returns `vm` checked to be a live VM (aborts naming `function`). */
AVZ_SIM_HIDDEN avz_vm *avz_sim_vm_check(avz_vm *vm, const char *function);

/* A new, zeroed callback at the end of `out` (its fd -1). */
AVZ_SIM_HIDDEN outbox_item *avz_sim_outbox_push(outbox *out);

/* Arms a timer of `kind` `delay_ms` from now (on the VM's queue, mutex held: the pool
 * learns of it when the queue's turn ends, or right after a synchronous call run in
 * place); returns its id. */
AVZ_SIM_HIDDEN uint64_t avz_sim_timer_add(avz_vm *vm, uint32_t delay_ms, enum timer_kind kind);

/* Removes the timer *id (if armed) and clears *id. */
AVZ_SIM_HIDDEN void avz_sim_timer_cancel(avz_vm *vm, uint64_t *id);

/* Appends `task` (owned from now on) to the VM's queue and schedules the queue on the
 * worker pool when it is idle. */
AVZ_SIM_HIDDEN void avz_sim_vm_post(avz_vm *vm, sim_task *task);

/* Runs a synchronous call on the VM's queue: in place when the queue is idle (nothing
 * queued, no turn running: as dispatch_sync does) or when already on the queue (a
 * callback; the real framework would deadlock there); otherwise posts it and waits. */
AVZ_SIM_HIDDEN void avz_sim_vm_sync(avz_vm *vm, sync_call *call);

/* Hands a failed synchronous call's error to the caller. Returns call->ok. */
AVZ_SIM_HIDDEN bool avz_sim_sync_result(sync_call *call, CFErrorRef *error);

/* Keeps a completion handler the framework never calls (mutex held): released uncalled,
 * with the shim's dropped-handler error, when the VM is freed. */
AVZ_SIM_HIDDEN void avz_sim_withhold(avz_vm *vm, avz_completion_fn completion,
                                     avz_connect_fn connect, void *context);

/* Returns +1: the error the shim reports for a completion handler dropped uncalled. */
AVZ_SIM_HIDDEN CFErrorRef avz_sim_dropped_completion_error(void);

/* Whether the current thread runs `vm`'s queue (a callback running on it). */
AVZ_SIM_HIDDEN bool avz_sim_on_worker(const avz_vm *vm);

/* ---- vm.c ---- */

/* "it is %s" */
AVZ_SIM_HIDDEN const char *avz_sim_state_phrase(int32_t state);

/* A timer fell due (worker, mutex held; the caller frees it). */
AVZ_SIM_HIDDEN void avz_sim_handle_timer(avz_vm *vm, outbox *out, const sim_timer *timer);

/* A synchronous call; marks it done and wakes its caller. */
AVZ_SIM_HIDDEN void avz_sim_handle_sync(avz_vm *vm, sync_call *call);

/* A queued task (worker, mutex held; the caller frees it). */
AVZ_SIM_HIDDEN void avz_sim_handle_task(avz_vm *vm, outbox *out, sim_task *task);

/* ---- devices.c ---- */

/* avz_vm_vsock_connect (the task owns one VM reference, handed to the completion). */
AVZ_SIM_HIDDEN void avz_sim_handle_vsock_connect(avz_vm *vm, outbox *out, const sim_task *task);

/* avz_sim_vm_guest_vsock_connect: ignored unless running with a listener on `port`. */
AVZ_SIM_HIDDEN void avz_sim_handle_guest_vsock_connect(avz_vm *vm, outbox *out, uint32_t port);

/* Balloon target: read or set (rounded down to a MiB, clamped to the host's minimum
 * memory size and the configured memory size). */
AVZ_SIM_HIDDEN void avz_sim_handle_balloon(avz_vm *vm, sync_call *call);

/* Host vsock listeners: install (replacing) or remove one. A dropped listener goes back
 * to the caller in call->released, to be released outside the mutex. */
AVZ_SIM_HIDDEN void avz_sim_handle_listener(avz_vm *vm, sync_call *call);

#endif /* APPLEVZ_SIM_INTERNAL_H */
