/*
 * queue.c — the VM's dispatch queue: one worker thread per VM with its task FIFO,
 * timers and outbox of callbacks, synchronous hops onto it, and the VM's creation and
 * lifetime.
 * See README.md beside this file for what the simulator models.
 */
#if !defined(_GNU_SOURCE) && !defined(_DEFAULT_SOURCE)
#define _DEFAULT_SOURCE 1
#endif

#include "internal.h"
#include "avz_sim.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SERIAL_RUNNING_LINE "applevz-sim: guest is running\n"
#define CONSOLE_READY_FORMAT "applevz-sim: console port %s is ready\n"

static void vm_last_release(void *object);

static const avz_sim_class vm_class = {"avz_vm", vm_last_release};

/* The VM whose worker is the current thread, if any. */
static _Thread_local avz_vm *current_worker_vm;

bool avz_sim_on_worker(const avz_vm *vm) {
    return current_worker_vm == vm;
}

avz_vm *avz_sim_vm_check(avz_vm *vm, const char *function) {
    return (avz_vm *)avz_sim_object_check(vm, &vm_class, function);
}

outbox_item *avz_sim_outbox_push(outbox *out) {
    if (out->count == OUTBOX_CAPACITY) {
        avz_sim_fatal("internal error: outbox overflow");
    }
    outbox_item *item = &out->items[out->count++];
    memset(item, 0, sizeof *item);
    item->fd = -1;
    return item;
}

static bool vm_is_dying(avz_vm *vm) {
    pthread_mutex_lock(&vm->mutex);
    bool dying = vm->dying;
    pthread_mutex_unlock(&vm->mutex);
    return dying;
}

/* Runs on the worker without the mutex: every callback in order, then the operation
 * references. The VM stays allocated throughout: only the worker frees it, later.
 * Once the last reference is gone, observer events are dropped (completions cannot be
 * pending then: each holds a reference until it ran). */
static void outbox_deliver(avz_vm *vm, outbox *out) {
    if (out->serial_line) {
        for (size_t i = 0; i < vm->output_count; i++) {
            (void)avz_sim_write_all(vm->output_fds[i], SERIAL_RUNNING_LINE,
                                    sizeof SERIAL_RUNNING_LINE - 1);
        }
        for (size_t i = 0; i < vm->console_count; i++) {
            (void)avz_sim_write_all(vm->console_fds[i], vm->console_lines[i],
                                    strlen(vm->console_lines[i]));
        }
    }
    for (size_t i = 0; i < out->count; i++) {
        outbox_item *item = &out->items[i];
        switch (item->kind) {
        case OUT_OBSERVER:
            if (vm->observer != NULL && !vm_is_dying(vm)) {
                vm->observer(vm->observer_context, item->state, item->event, item->error);
            }
            if (item->error != NULL) {
                CFRelease(item->error);
            }
            break;
        case OUT_COMPLETION:
            if (item->completion != NULL) {
                item->completion(item->context, item->error);
            } else if (item->error != NULL) {
                CFRelease(item->error);
            }
            break;
        case OUT_CONNECT:
            if (item->connect != NULL) {
                item->connect(item->context, item->fd, item->error);
            } else {
                avz_sim_close_fd(item->fd);
                if (item->error != NULL) {
                    CFRelease(item->error);
                }
            }
            break;
        case OUT_ACCEPT:
            /* Like observer events, nothing is accepted once the last reference is gone
             * (the listener is released when the worker frees the VM). */
            if (!vm_is_dying(vm)) {
                item->accept(item->context, item->fd, item->guest_port, item->host_port);
            } else {
                avz_sim_close_fd(item->fd);
            }
            break;
        case OUT_RELEASE:
            item->release(item->context);
            break;
        }
    }
    for (unsigned i = 0; i < out->vm_releases; i++) {
        CFRelease(vm);
    }
    out->count = 0;
    out->vm_releases = 0;
    out->serial_line = false;
}

uint64_t avz_sim_timer_add(avz_vm *vm, uint32_t delay_ms, enum timer_kind kind) {
    sim_timer *timer = avz_sim_alloc(sizeof *timer);
    timer->id = ++vm->next_timer_id;
    timer->deadline_ns = avz_sim_monotonic_ns() + (uint64_t)delay_ms * 1000000ull;
    timer->kind = kind;
    sim_timer **link = &vm->timers;
    while (*link != NULL && (*link)->deadline_ns <= timer->deadline_ns) {
        link = &(*link)->next;
    }
    timer->next = *link;
    *link = timer;
    /* The worker itself arms timers, so it recomputes its wait before sleeping. */
    return timer->id;
}

void avz_sim_timer_cancel(avz_vm *vm, uint64_t *id) {
    if (*id == 0) {
        return;
    }
    for (sim_timer **link = &vm->timers; *link != NULL; link = &(*link)->next) {
        if ((*link)->id == *id) {
            sim_timer *timer = *link;
            *link = timer->next;
            free(timer);
            break;
        }
    }
    *id = 0;
}

/* Closes the VM's descriptors and frees what avz_vm_create copied from the
 * configuration. */
static void vm_free_resources(avz_vm *vm) {
    for (size_t i = 0; i < vm->fd_count; i++) {
        avz_sim_close_fd(vm->fds[i]);
    }
    free(vm->fds);
    free(vm->output_fds);
    free(vm->console_fds);
    for (size_t i = 0; i < vm->console_count; i++) {
        free(vm->console_lines[i]);
    }
    free(vm->console_lines);
    free(vm->guest_ports);
}

/* Frees the VM; runs on its worker once it is dying. */
static void vm_free(avz_vm *vm) {
    /* Nothing is in flight (operations hold references), so what is left are timers and
     * fire-and-forget triggers that no longer matter. */
    while (vm->timers != NULL) {
        sim_timer *timer = vm->timers;
        vm->timers = timer->next;
        free(timer);
    }
    while (vm->tasks != NULL) {
        sim_task *task = vm->tasks;
        vm->tasks = task->next;
        if (task->kind == TASK_LISTENER_RELEASE) {
            task->release(task->context);
        }
        free(task->path);
        free(task);
    }
    if (vm->op != NULL) {
        avz_sim_fatal("internal error: VM destroyed with an operation in flight");
    }
    /* Every listener still installed is released exactly once. */
    for (size_t i = 0; i < vm->listener_count; i++) {
        if (vm->listeners[i].release != NULL) {
            vm->listeners[i].release(vm->listeners[i].context);
        }
    }
    free(vm->listeners);
    vm_free_resources(vm);
    /* Last: by the time the owner hears about it, the descriptors are closed. */
    if (vm->observer_release != NULL) {
        vm->observer_release(vm->observer_context);
    }
    pthread_cond_destroy(&vm->wake);
    pthread_cond_destroy(&vm->sync_done);
    pthread_mutex_destroy(&vm->mutex);
    avz_sim_object_free(&vm->base);
}

static void *vm_worker(void *arg) {
    avz_vm *vm = arg;
    current_worker_vm = vm;
    outbox out;
    memset(&out, 0, sizeof out);

    pthread_mutex_lock(&vm->mutex);
    while (!vm->dying) {
        sim_task *task = vm->tasks;
        if (task != NULL) {
            vm->tasks = task->next;
            if (vm->tasks == NULL) {
                vm->tasks_tail = NULL;
            }
            avz_sim_handle_task(vm, &out, task);
            pthread_mutex_unlock(&vm->mutex);
            free(task->path);
            free(task);
            outbox_deliver(vm, &out);
            pthread_mutex_lock(&vm->mutex);
            continue;
        }
        sim_timer *timer = vm->timers;
        if (timer != NULL && timer->deadline_ns <= avz_sim_monotonic_ns()) {
            vm->timers = timer->next;
            avz_sim_handle_timer(vm, &out, timer);
            pthread_mutex_unlock(&vm->mutex);
            free(timer);
            outbox_deliver(vm, &out);
            pthread_mutex_lock(&vm->mutex);
            continue;
        }
        if (timer != NULL) {
            avz_sim_cond_wait_until(&vm->wake, &vm->mutex, timer->deadline_ns);
        } else {
            pthread_cond_wait(&vm->wake, &vm->mutex);
        }
    }
    pthread_mutex_unlock(&vm->mutex);
    current_worker_vm = NULL;
    vm_free(vm);
    return NULL;
}

/* The last reference went (on any thread, the worker included): the worker frees the
 * VM. Never blocks. */
static void vm_last_release(void *object) {
    avz_vm *vm = object;
    pthread_mutex_lock(&vm->mutex);
    vm->dying = true;
    pthread_cond_signal(&vm->wake);
    pthread_mutex_unlock(&vm->mutex);
}

void avz_sim_vm_post(avz_vm *vm, sim_task *task) {
    pthread_mutex_lock(&vm->mutex);
    if (vm->tasks_tail != NULL) {
        vm->tasks_tail->next = task;
    } else {
        vm->tasks = task;
    }
    vm->tasks_tail = task;
    pthread_cond_signal(&vm->wake);
    pthread_mutex_unlock(&vm->mutex);
}

void avz_sim_vm_sync(avz_vm *vm, sync_call *call) {
    if (current_worker_vm == vm) {
        pthread_mutex_lock(&vm->mutex);
        avz_sim_handle_sync(vm, call);
        pthread_mutex_unlock(&vm->mutex);
        return;
    }
    sim_task *task = avz_sim_alloc(sizeof *task);
    task->kind = TASK_SYNC;
    task->sync = call;
    avz_sim_vm_post(vm, task);
    pthread_mutex_lock(&vm->mutex);
    while (!call->done) {
        pthread_cond_wait(&vm->sync_done, &vm->mutex);
    }
    pthread_mutex_unlock(&vm->mutex);
}

static void vm_add_fd(avz_vm *vm, int fd, bool output) {
    vm->fds[vm->fd_count++] = fd;
    if (output) {
        vm->output_fds[vm->output_count++] = fd;
    }
}

/* The VM's own duplicate of a configuration's descriptor for `what`, or -1 with the
 * error set. */
static int vm_dup_fd(avz_vm *vm, int config_fd, const char *what, bool output,
                     CFErrorRef *error) {
    int fd = avz_sim_dup_cloexec(config_fd);
    if (fd < 0) {
        char buf[ERRBUF];
        int e = errno;
        avz_sim_fail(error, POSIX, e,
                     "Cannot create the virtual machine: duplicating the descriptor of %s "
                     "failed: %s.",
                     what, avz_sim_strerror(e, buf, sizeof buf));
        return -1;
    }
    vm_add_fd(vm, fd, output);
    return fd;
}

avz_vm *avz_vm_create(avz_config *config, avz_state_observer_fn observer,
                      void *observer_context, avz_context_release_fn observer_release,
                      CFErrorRef *error) {
    char buf[ERRBUF];
    avz_sim_config_check(config, "avz_vm_create");
    if (!avz_sim_config_validate(config, error)) {
        goto fail;
    }

    avz_vm *vm = avz_sim_alloc(sizeof *vm);
    vm->knobs = config->knobs;
    vm->fingerprint = avz_sim_config_fingerprint(config);
    vm->observer = observer;
    vm->observer_context = observer_context;
    vm->observer_release = observer_release;
    vm->state = AVZ_STATE_STOPPED;
    vm->has_balloon = config->balloon_count > 0;
    vm->has_socket_device = config->socket_count > 0;
    vm->net_count = config->net_count;
    vm->memory_size = config->memory_size;
    vm->balloon_target = config->memory_size;
    vm->guest_port_count = config->guest_port_count;
    vm->guest_ports = avz_sim_alloc(sizeof *vm->guest_ports * (config->guest_port_count + 1));
    if (config->guest_port_count > 0) {
        memcpy(vm->guest_ports, config->guest_ports,
               sizeof *vm->guest_ports * config->guest_port_count);
    }
    vm->fds = avz_sim_alloc(sizeof *vm->fds * (config->serial_count * 2 +
                                               config->console_count * 2 +
                                               config->net_count + 1));
    vm->output_fds = avz_sim_alloc(sizeof *vm->output_fds * (config->serial_count + 1));
    vm->console_fds = avz_sim_alloc(sizeof *vm->console_fds * (config->console_count + 1));
    vm->console_lines = avz_sim_alloc(sizeof *vm->console_lines * (config->console_count + 1));
    for (size_t i = 0; i < config->serial_count; i++) {
        const sim_serial *serial = &config->serials[i];
        int fds[2] = {serial->read_fd, serial->write_fd};
        for (int j = 0; j < 2; j++) {
            if (fds[j] < 0) {
                continue;
            }
            if (vm_dup_fd(vm, fds[j], "a serial port", j == 1, error) < 0) {
                goto fail_fds;
            }
        }
    }
    for (size_t i = 0; i < config->console_count; i++) {
        const sim_console *console = &config->consoles[i];
        int fds[2] = {console->read_fd, console->write_fd};
        for (int j = 0; j < 2; j++) {
            if (fds[j] < 0) {
                continue;
            }
            int fd = vm_dup_fd(vm, fds[j], "a console port", false, error);
            if (fd < 0) {
                goto fail_fds;
            }
            if (j == 1) {
                size_t size = sizeof CONSOLE_READY_FORMAT + strlen(console->name);
                char *line = avz_sim_alloc(size);
                snprintf(line, size, CONSOLE_READY_FORMAT, console->name);
                vm->console_fds[vm->console_count] = fd;
                vm->console_lines[vm->console_count++] = line;
            }
        }
    }
    for (size_t i = 0; i < config->net_count; i++) {
        if (config->nets[i].fd < 0) {
            continue;
        }
        if (vm_dup_fd(vm, config->nets[i].fd, "a network device", false, error) < 0) {
            goto fail_fds;
        }
    }

    pthread_mutex_init(&vm->mutex, NULL);
    avz_sim_cond_init_monotonic(&vm->wake);
    avz_sim_cond_init_monotonic(&vm->sync_done);
    avz_sim_object_init(&vm->base, &vm_class);

    /* The worker runs with every signal blocked, like a dispatch queue's thread: a
     * serial write to a closed pipe then fails with EPIPE instead of killing the
     * process, and the caller's signal handling is left alone. */
    sigset_t all, previous;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &previous);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_t thread;
    int rc = pthread_create(&thread, &attr, vm_worker, vm);
    pthread_attr_destroy(&attr);
    pthread_sigmask(SIG_SETMASK, &previous, NULL);
    if (rc != 0) {
        avz_sim_fail(error, VZ, AVZ_ERROR_INTERNAL,
                     "Cannot create the virtual machine: no thread for its queue: %s.",
                     avz_sim_strerror(rc, buf, sizeof buf));
        pthread_cond_destroy(&vm->wake);
        pthread_cond_destroy(&vm->sync_done);
        pthread_mutex_destroy(&vm->mutex);
        vm_free_resources(vm);
        avz_sim_object_free(&vm->base);
        goto fail;
    }
    return vm;

fail_fds:
    vm_free_resources(vm);
    free(vm);
fail:
    if (observer_release != NULL) {
        observer_release(observer_context);
    }
    return NULL;
}

bool avz_sim_sync_result(sync_call *call, CFErrorRef *error) {
    if (!call->ok) {
        if (error != NULL) {
            *error = call->error;
        } else {
            CFRelease(call->error);
        }
    }
    return call->ok;
}
