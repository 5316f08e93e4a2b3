/*
 * devices.c — runtime devices: the memory balloon target and vsock (host and guest
 * connections, listeners, the simulated guest's end).
 * See README.md beside this file for what the simulator models.
 */
#if !defined(_GNU_SOURCE) && !defined(_DEFAULT_SOURCE)
#define _DEFAULT_SOURCE 1
#endif

#include "internal.h"
#include "avz_sim.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#ifdef MSG_NOSIGNAL
#define SEND_FLAGS MSG_NOSIGNAL
#else
#define SEND_FLAGS 0
#endif

typedef struct guest_conn {
    int fd;
    size_t greeting_size;
    char greeting[64];
} guest_conn;

static bool send_all(int fd, const char *data, size_t size) {
    while (size > 0) {
        ssize_t n = send(fd, data, size, SEND_FLAGS);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return false;
        }
        data += n;
        size -= (size_t)n;
    }
    return true;
}

/* The guest's end: the greeting, then every byte back until the host closes its end (or
 * the connection fails). Owns `arg`; never touches a VM. */
static void *guest_conn_main(void *arg) {
    guest_conn *conn = arg;
    char buffer[4096];
    bool ok = send_all(conn->fd, conn->greeting, conn->greeting_size);
    while (ok) {
        ssize_t n = recv(conn->fd, buffer, sizeof buffer, 0);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            break;
        }
        ok = send_all(conn->fd, buffer, (size_t)n);
    }
    close(conn->fd);
    free(conn);
    return NULL;
}

static int socketpair_cloexec(int fds[2]) {
#ifdef SOCK_CLOEXEC
    return socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds);
#else
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, fds) != 0) {
        return -1;
    }
    (void)fcntl(fds[0], F_SETFD, FD_CLOEXEC);
    (void)fcntl(fds[1], F_SETFD, FD_CLOEXEC);
    return 0;
#endif
}

/* Opens a connected stream socket pair and serves one end as the guest on a detached
 * thread (greeting first, then an echo). Returns the host's end, or -1 with an errno
 * value in *error_number. Runs on a worker, whose signals are all blocked: the thread
 * inherits that mask. */
static int guest_conn_open(const char *greeting, int *error_number) {
    int fds[2];
    if (socketpair_cloexec(fds) != 0) {
        *error_number = errno;
        return -1;
    }
    guest_conn *conn = avz_sim_alloc(sizeof *conn);
    conn->fd = fds[1];
    if (greeting != NULL) {
        conn->greeting_size = strlen(greeting);
        if (conn->greeting_size >= sizeof conn->greeting) {
            avz_sim_fatal("internal error: vsock greeting too long");
        }
        memcpy(conn->greeting, greeting, conn->greeting_size);
    }
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_t thread;
    int rc = pthread_create(&thread, &attr, guest_conn_main, conn);
    pthread_attr_destroy(&attr);
    if (rc != 0) {
        close(fds[0]);
        close(fds[1]);
        free(conn);
        *error_number = rc;
        return -1;
    }
    return fds[0];
}

static bool guest_listens(const avz_vm *vm, uint32_t port) {
    for (size_t i = 0; i < vm->guest_port_count; i++) {
        if (vm->guest_ports[i] == port) {
            return true;
        }
    }
    return false;
}

static sim_listener *find_listener(avz_vm *vm, uint32_t port) {
    for (size_t i = 0; i < vm->listener_count; i++) {
        if (vm->listeners[i].port == port) {
            return &vm->listeners[i];
        }
    }
    return NULL;
}

void avz_sim_handle_vsock_connect(avz_vm *vm, outbox *out, const sim_task *task) {
    char buf[ERRBUF];
    const char *prefix = "Cannot connect to vsock port";
    CFErrorRef error = NULL;
    int fd = -1;
    if (!vm->has_socket_device) {
        error = avz_sim_error_create(VZ, AVZ_ERROR_INVALID_CONFIGURATION,
                                     "%s %" PRIu32 ": the virtual machine has no socket device.",
                                     prefix, task->port);
    } else if (vm->state != AVZ_STATE_RUNNING) {
        error = avz_sim_error_create(VZ, AVZ_ERROR_INVALID_STATE,
                                     "%s %" PRIu32 ": the virtual machine is %s, not running.",
                                     prefix, task->port, avz_sim_state_phrase(vm->state));
    } else if (!guest_listens(vm, task->port) && vm->knobs.vsock_unanswered) {
        /* Apple: connectToPort: does nothing when the guest does not listen. The
         * framework keeps the handler uncalled; it is dropped with the VM. */
        avz_sim_withhold(vm, NULL, task->connect, task->context);
        out->vm_releases++;
        return;
    } else if (!guest_listens(vm, task->port)) {
        /* Observed on Macs: the handler gets POSIX error 54 (ECONNRESET). */
        error = avz_sim_error_create(POSIX, ECONNRESET,
                                     "%s %" PRIu32 ": the guest does not listen on it "
                                     "(connection reset).",
                                     prefix, task->port);
    } else {
        int e = 0;
        fd = guest_conn_open(NULL, &e);
        if (fd < 0) {
            error = avz_sim_error_create(POSIX, e, "%s %" PRIu32 ": %s.", prefix, task->port,
                                         avz_sim_strerror(e, buf, sizeof buf));
        }
    }
    outbox_item *item = avz_sim_outbox_push(out);
    item->kind = OUT_CONNECT;
    item->connect = task->connect;
    item->context = task->context;
    item->fd = fd;
    item->error = error;
    out->vm_releases++;
}

void avz_sim_handle_guest_vsock_connect(avz_vm *vm, outbox *out, uint32_t port) {
    sim_listener *listener = find_listener(vm, port);
    if (vm->state != AVZ_STATE_RUNNING || listener == NULL) {
        return;
    }
    char greeting[64];
    snprintf(greeting, sizeof greeting, "hello from guest port %" PRIu32 "\n", port);
    int e = 0;
    int fd = guest_conn_open(greeting, &e);
    if (fd < 0) {
        return; /* nobody to tell: the guest's connect failed */
    }
    outbox_item *item = avz_sim_outbox_push(out);
    item->kind = OUT_ACCEPT;
    item->accept = listener->accept;
    item->context = listener->context;
    item->fd = fd;
    item->guest_port = 1024u + vm->guest_connections++;
    item->host_port = port;
}

void avz_sim_handle_balloon(avz_vm *vm, sync_call *call) {
    const char *what = call->kind == SYNC_BALLOON_SET ? "set" : "read";
    if (!vm->has_balloon) {
        call->ok = false;
        call->error = avz_sim_error_create(
            VZ, AVZ_ERROR_INVALID_CONFIGURATION,
            "Cannot %s the memory balloon target: the virtual machine has no memory balloon "
            "device.",
            what);
        return;
    }
    if (vm->state != AVZ_STATE_RUNNING && vm->state != AVZ_STATE_PAUSED) {
        call->ok = false;
        call->error = avz_sim_error_create(
            VZ, AVZ_ERROR_INVALID_STATE,
            "Cannot %s the memory balloon target: the virtual machine is %s, not running or "
            "paused.",
            what, avz_sim_state_phrase(vm->state));
        return;
    }
    if (call->kind == SYNC_BALLOON_SET) {
        avz_limits limits;
        avz_get_limits(&limits);
        uint64_t target = call->bytes - call->bytes % MIB;
        if (target < limits.min_memory_size) {
            target = limits.min_memory_size;
        }
        if (target > vm->memory_size) {
            target = vm->memory_size;
        }
        vm->balloon_target = target;
    }
    call->bytes = vm->balloon_target;
    call->ok = true;
}

void avz_sim_handle_listener(avz_vm *vm, sync_call *call) {
    bool listen = call->kind == SYNC_VSOCK_LISTEN;
    if (!vm->has_socket_device) {
        call->ok = false;
        call->error = avz_sim_error_create(
            VZ, AVZ_ERROR_INVALID_CONFIGURATION,
            "Cannot %s vsock port %" PRIu32 ": the virtual machine has no socket device.",
            listen ? "listen on" : "stop listening on", call->listener.port);
        if (listen) {
            call->dropped = true; /* the refused listener itself */
            call->released = call->listener;
        }
        return;
    }
    call->ok = true;
    sim_listener *existing = find_listener(vm, call->listener.port);
    if (existing != NULL) {
        call->dropped = true;
        call->released = *existing;
        if (listen) {
            *existing = call->listener;
        } else {
            *existing = vm->listeners[--vm->listener_count];
        }
    } else if (listen) {
        avz_sim_array_reserve((void **)&vm->listeners, &vm->listener_capacity,
                              vm->listener_count + 1, sizeof *vm->listeners);
        vm->listeners[vm->listener_count++] = call->listener;
    }
}

bool avz_vm_balloon_target(avz_vm *vm, uint64_t *bytes, CFErrorRef *error) {
    avz_sim_vm_check(vm, "avz_vm_balloon_target");
    REQUIRE(bytes, "avz_vm_balloon_target");
    sync_call call = {.kind = SYNC_BALLOON_GET};
    avz_sim_vm_sync(vm, &call);
    if (call.ok) {
        *bytes = call.bytes;
    }
    return avz_sim_sync_result(&call, error);
}

bool avz_vm_set_balloon_target(avz_vm *vm, uint64_t bytes, CFErrorRef *error) {
    avz_sim_vm_check(vm, "avz_vm_set_balloon_target");
    sync_call call = {.kind = SYNC_BALLOON_SET, .bytes = bytes};
    avz_sim_vm_sync(vm, &call);
    return avz_sim_sync_result(&call, error);
}

void avz_vm_vsock_connect(avz_vm *vm, uint32_t port, avz_connect_fn completion,
                          void *context) {
    avz_sim_vm_check(vm, "avz_vm_vsock_connect");
    sim_task *task = avz_sim_alloc(sizeof *task);
    task->kind = TASK_VSOCK_CONNECT;
    task->connect = completion;
    task->context = context;
    task->port = port;
    CFRetain(vm); /* held until the completion ran */
    avz_sim_vm_post(vm, task);
}

/* Releases the listener a synchronous call dropped. Called on the worker (from a
 * callback) the release is queued instead, so that it runs after the current callback
 * returns — which may be that very listener's accept. */
static void release_dropped(avz_vm *vm, const sync_call *call, bool now) {
    if (!call->dropped || call->released.release == NULL) {
        return;
    }
    if (now || !avz_sim_on_worker(vm)) {
        call->released.release(call->released.context);
        return;
    }
    sim_task *task = avz_sim_alloc(sizeof *task);
    task->kind = TASK_LISTENER_RELEASE;
    task->release = call->released.release;
    task->context = call->released.context;
    avz_sim_vm_post(vm, task);
}

bool avz_vm_vsock_listen(avz_vm *vm, uint32_t port, avz_accept_fn accept, void *context,
                         avz_context_release_fn release, CFErrorRef *error) {
    avz_sim_vm_check(vm, "avz_vm_vsock_listen");
    REQUIRE(accept, "avz_vm_vsock_listen");
    sync_call call = {.kind = SYNC_VSOCK_LISTEN,
                      .listener = {.port = port,
                                   .accept = accept,
                                   .context = context,
                                   .release = release}};
    avz_sim_vm_sync(vm, &call);
    /* A refused listener was never installed: release it before returning. */
    release_dropped(vm, &call, !call.ok);
    return avz_sim_sync_result(&call, error);
}

bool avz_vm_vsock_remove_listener(avz_vm *vm, uint32_t port, CFErrorRef *error) {
    avz_sim_vm_check(vm, "avz_vm_vsock_remove_listener");
    sync_call call = {.kind = SYNC_VSOCK_REMOVE, .listener = {.port = port}};
    avz_sim_vm_sync(vm, &call);
    release_dropped(vm, &call, false);
    return avz_sim_sync_result(&call, error);
}

void avz_sim_vm_guest_vsock_connect(avz_vm *vm, uint32_t port) {
    avz_sim_vm_check(vm, "avz_sim_vm_guest_vsock_connect");
    sim_task *task = avz_sim_alloc(sizeof *task);
    task->kind = TASK_GUEST_VSOCK_CONNECT;
    task->port = port;
    avz_sim_vm_post(vm, task);
}
