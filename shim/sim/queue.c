/*
 * queue.c — each VM's dispatch queue: a serial queue (task FIFO, timers, outbox of
 * callbacks) run by a small pool of worker threads shared by every VM, one timer thread
 * for every queue's timers, synchronous hops onto a queue, and the VM's creation and
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

/* A queue's turn on a worker handles at most this many tasks and timers, then goes to
 * the back of the ready list, so that a busy VM does not hold a worker from the others. */
#define TURN_BUDGET 16
/* Workers: one per online CPU, at least 2 (a callback that waits for another VM's
 * queue then still leaves one to run it), at most 4. */
#define MIN_WORKERS 2
#define MAX_WORKERS 4

static void vm_last_release(void *object);

static const avz_sim_class vm_class = {"avz_vm", vm_last_release};

/* ---------------------------------------------------------------------------------- */
/* The worker pool                                                                    */
/* ---------------------------------------------------------------------------------- */

/* Like libdispatch's serial queues on its global pool: a queue with work is
 * "scheduled", which puts it on the ready list exactly once; a worker takes it from
 * there and runs its turn (tasks, then due timers, in order), so a VM's callbacks never
 * run on two threads at once. A queue that ends its turn with timers left gets one
 * entry in the timer heap (its earliest deadline); the timer thread sleeps on
 * CLOCK_MONOTONIC until the first one falls due and then schedules that queue. Lock
 * order: a VM's mutex, then the pool's. The threads live as long as the process. */
typedef struct pool_worker {
    pthread_cond_t wake;
    bool woken;
    struct pool_worker *next_idle;
} pool_worker;

static struct {
    pthread_mutex_t mutex;
    pthread_cond_t timer; /* the timer thread waits here */
    bool initialised;
    pool_worker workers[MAX_WORKERS];
    unsigned worker_count, wanted;
    /* Idle workers, the last one to become idle on top: work goes to the worker that
     * ran last (its CPU and cache are warm; a caller that waits for one operation
     * after another keeps talking to the same thread). */
    pool_worker *idle;
    bool timer_thread;
    avz_vm *ready_head, *ready_tail;
    avz_vm **heap; /* min-heap on heap_deadline */
    size_t heap_count, heap_capacity;
} pool = {.mutex = PTHREAD_MUTEX_INITIALIZER};

static void heap_swap(size_t a, size_t b) {
    avz_vm *vm = pool.heap[a];
    pool.heap[a] = pool.heap[b];
    pool.heap[b] = vm;
    pool.heap[a]->heap_index = a + 1;
    pool.heap[b]->heap_index = b + 1;
}

static void heap_sift_up(size_t i) {
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (pool.heap[parent]->heap_deadline <= pool.heap[i]->heap_deadline) {
            break;
        }
        heap_swap(i, parent);
        i = parent;
    }
}

static void heap_sift_down(size_t i) {
    for (;;) {
        size_t smallest = i, left = 2 * i + 1, right = 2 * i + 2;
        if (left < pool.heap_count &&
            pool.heap[left]->heap_deadline < pool.heap[smallest]->heap_deadline) {
            smallest = left;
        }
        if (right < pool.heap_count &&
            pool.heap[right]->heap_deadline < pool.heap[smallest]->heap_deadline) {
            smallest = right;
        }
        if (smallest == i) {
            return;
        }
        heap_swap(i, smallest);
        i = smallest;
    }
}

/* Pool mutex held: takes `vm` out of the timer heap (if it is in it). */
static void heap_remove(avz_vm *vm) {
    if (vm->heap_index == 0) {
        return;
    }
    size_t i = vm->heap_index - 1;
    vm->heap_index = 0;
    pool.heap_count--;
    if (i == pool.heap_count) {
        return;
    }
    avz_vm *moved = pool.heap[pool.heap_count];
    pool.heap[i] = moved;
    moved->heap_index = i + 1;
    heap_sift_up(i);
    heap_sift_down(moved->heap_index - 1);
}

/* Pool mutex held: the timer thread schedules `vm` at `deadline` (its one entry). */
static void heap_set(avz_vm *vm, uint64_t deadline) {
    if (vm->heap_index != 0 && vm->heap_deadline == deadline) {
        return;
    }
    heap_remove(vm);
    avz_sim_array_reserve((void **)&pool.heap, &pool.heap_capacity, pool.heap_count + 1,
                          sizeof *pool.heap);
    vm->heap_deadline = deadline;
    pool.heap[pool.heap_count] = vm;
    vm->heap_index = ++pool.heap_count;
    heap_sift_up(pool.heap_count - 1);
    if (pool.heap[0] == vm) {
        /* A new first deadline: the timer thread sleeps until an older one. */
        pthread_cond_signal(&pool.timer);
    }
}

/* Pool mutex held: puts an idle queue on the ready list. Returns the idle worker to
 * wake, if any (the caller wakes it with wake_worker once it released the mutex). */
static pool_worker *schedule_locked(avz_vm *vm) {
    if (vm->scheduled) {
        return NULL; /* on the ready list already, or its turn will see the new work */
    }
    vm->scheduled = true;
    vm->ready_next = NULL;
    if (pool.ready_tail != NULL) {
        pool.ready_tail->ready_next = vm;
    } else {
        pool.ready_head = vm;
    }
    pool.ready_tail = vm;
    pool_worker *worker = pool.idle;
    if (worker != NULL) {
        pool.idle = worker->next_idle;
        worker->woken = true;
    }
    return worker;
}

/* Wakes a worker schedule_locked picked (NULL: none). The workers live as long as the
 * process, so this is safe after the pool's mutex was released. */
static void wake_worker(pool_worker *worker) {
    if (worker != NULL) {
        pthread_cond_signal(&worker->wake);
    }
}

/* The VM whose queue the current thread runs, if any. */
static _Thread_local avz_vm *current_worker_vm;

static void vm_free(avz_vm *vm);
static void outbox_deliver(avz_vm *vm, outbox *out);

/* Mutex held, after each item of a turn: while a state notification is late
 * (vm->holding), the item's callbacks join those held, in order, and `out` is emptied;
 * once it is no longer late, returns the held callbacks (detached), to be delivered
 * before the item's own. */
static held_outbox *hold_or_release(avz_vm *vm, outbox *out) {
    if (vm->holding) {
        if (out->count > 0 || out->vm_releases > 0 || out->serial_line) {
            held_outbox *held = avz_sim_alloc(sizeof *held);
            held->out = *out;
            if (vm->held_tail != NULL) {
                vm->held_tail->next = held;
            } else {
                vm->held = held;
            }
            vm->held_tail = held;
            memset(out, 0, sizeof *out);
        }
        return NULL;
    }
    held_outbox *released = vm->held;
    vm->held = vm->held_tail = NULL;
    return released;
}

/* Without the mutex: delivers (and frees) held callbacks, then `out`. */
static void deliver_turn_item(avz_vm *vm, held_outbox *released, outbox *out) {
    while (released != NULL) {
        held_outbox *next = released->next;
        outbox_deliver(vm, &released->out);
        free(released);
        released = next;
    }
    outbox_deliver(vm, out);
}

/* One turn of `vm`'s queue on a worker: queued tasks first, then due timers, each with
 * its callbacks delivered (without the mutex) before the next. Ends when nothing is
 * left to do now, after TURN_BUDGET items (back to the end of the ready list), or by
 * freeing the VM once its last reference is gone. */
static void vm_turn(avz_vm *vm) {
    current_worker_vm = vm;
    outbox out;
    memset(&out, 0, sizeof out);
    pthread_mutex_lock(&vm->mutex);
    for (unsigned handled = 0;; handled++) {
        if (atomic_load_explicit(&vm->dying, memory_order_relaxed)) {
            pthread_mutex_unlock(&vm->mutex);
            current_worker_vm = NULL;
            vm_free(vm);
            return;
        }
        if (handled == TURN_BUDGET) {
            /* Still scheduled: straight back onto the ready list. */
            pthread_mutex_lock(&pool.mutex);
            vm->scheduled = false;
            pool_worker *worker = schedule_locked(vm);
            pthread_mutex_unlock(&pool.mutex);
            pthread_mutex_unlock(&vm->mutex);
            current_worker_vm = NULL;
            wake_worker(worker);
            return;
        }
        sim_task *task = vm->tasks;
        if (task != NULL) {
            vm->tasks = task->next;
            if (vm->tasks == NULL) {
                vm->tasks_tail = NULL;
            }
            avz_sim_handle_task(vm, &out, task);
            held_outbox *released = hold_or_release(vm, &out);
            pthread_mutex_unlock(&vm->mutex);
            free(task->path);
            free(task);
            deliver_turn_item(vm, released, &out);
            pthread_mutex_lock(&vm->mutex);
            continue;
        }
        sim_timer *timer = vm->timers;
        if (timer != NULL && timer->deadline_ns <= avz_sim_monotonic_ns()) {
            vm->timers = timer->next;
            avz_sim_handle_timer(vm, &out, timer);
            held_outbox *released = hold_or_release(vm, &out);
            pthread_mutex_unlock(&vm->mutex);
            free(timer);
            deliver_turn_item(vm, released, &out);
            pthread_mutex_lock(&vm->mutex);
            continue;
        }
        break;
    }
    /* Idle until a task is posted or its first timer falls due. Decided under both
     * mutexes: a task posted after this is seen unscheduled and schedules the queue. */
    pthread_mutex_lock(&pool.mutex);
    vm->scheduled = false;
    if (vm->timers != NULL) {
        heap_set(vm, vm->timers->deadline_ns);
    } else {
        heap_remove(vm);
    }
    pthread_mutex_unlock(&pool.mutex);
    pthread_mutex_unlock(&vm->mutex);
    current_worker_vm = NULL;
}

static void *worker_main(void *arg) {
    pool_worker *self = arg;
    pthread_mutex_lock(&pool.mutex);
    for (;;) {
        avz_vm *vm = pool.ready_head;
        if (vm == NULL) {
            self->next_idle = pool.idle;
            pool.idle = self;
            while (!self->woken) {
                pthread_cond_wait(&self->wake, &pool.mutex);
            }
            self->woken = false;
            continue;
        }
        pool.ready_head = vm->ready_next;
        if (pool.ready_head == NULL) {
            pool.ready_tail = NULL;
        }
        vm->ready_next = NULL;
        pthread_mutex_unlock(&pool.mutex);
        vm_turn(vm);
        pthread_mutex_lock(&pool.mutex);
    }
    return NULL;
}

static void *pool_timer(void *arg) {
    (void)arg;
    pthread_mutex_lock(&pool.mutex);
    for (;;) {
        if (pool.heap_count == 0) {
            pthread_cond_wait(&pool.timer, &pool.mutex);
            continue;
        }
        avz_vm *vm = pool.heap[0];
        if (vm->heap_deadline > avz_sim_monotonic_ns()) {
            avz_sim_cond_wait_until(&pool.timer, &pool.mutex, vm->heap_deadline);
            continue;
        }
        /* Due: the queue's turn handles its due timers (and re-enters the heap with its
         * next deadline when it ends). While the VM has an entry here it cannot be
         * freed: vm_free takes it out under this mutex first. */
        heap_remove(vm);
        pool_worker *worker = schedule_locked(vm);
        if (worker != NULL) {
            pthread_mutex_unlock(&pool.mutex);
            wake_worker(worker);
            pthread_mutex_lock(&pool.mutex);
        }
    }
    return NULL;
}

/* Starts the pool's threads that are missing (the first VM starts them all). False, with
 * the error set, when there is no worker or no timer thread. */
static bool pool_start(CFErrorRef *error) {
    char buf[ERRBUF];
    pthread_mutex_lock(&pool.mutex);
    if (!pool.initialised) {
        for (unsigned i = 0; i < MAX_WORKERS; i++) {
            pthread_cond_init(&pool.workers[i].wake, NULL);
        }
        avz_sim_cond_init_monotonic(&pool.timer);
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        pool.wanted = cpus < MIN_WORKERS   ? MIN_WORKERS
                      : cpus > MAX_WORKERS ? MAX_WORKERS
                                           : (unsigned)cpus;
        pool.initialised = true;
    }
    int rc = 0;
    if (pool.worker_count < pool.wanted || !pool.timer_thread) {
        /* The pool's threads run with every signal blocked, like a dispatch queue's
         * threads: a serial write to a closed pipe then fails with EPIPE instead of
         * killing the process, and the caller's signal handling is left alone. */
        sigset_t all, previous;
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &previous);
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pthread_t thread;
        while (rc == 0 && pool.worker_count < pool.wanted) {
            rc = pthread_create(&thread, &attr, worker_main, &pool.workers[pool.worker_count]);
            pool.worker_count += rc == 0;
        }
        if (rc == 0 && !pool.timer_thread) {
            rc = pthread_create(&thread, &attr, pool_timer, NULL);
            pool.timer_thread = rc == 0;
        }
        pthread_attr_destroy(&attr);
        pthread_sigmask(SIG_SETMASK, &previous, NULL);
    }
    bool ok = pool.worker_count > 0 && pool.timer_thread;
    pthread_mutex_unlock(&pool.mutex);
    if (!ok) {
        avz_sim_fail(error, VZ, AVZ_ERROR_INTERNAL,
                     "Cannot create the virtual machine: no thread for its queue: %s.",
                     avz_sim_strerror(rc, buf, sizeof buf));
    }
    return ok;
}

/* ---------------------------------------------------------------------------------- */
/* The VM's queue                                                                     */
/* ---------------------------------------------------------------------------------- */

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

/* Whether the last reference is gone (it never comes back, so no lock is needed to
 * read it on the queue). */
static bool vm_is_dying(avz_vm *vm) {
    return atomic_load_explicit(&vm->dying, memory_order_acquire);
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
    /* Only the queue arms timers: the pool learns of them when the turn ends (or right
     * after a synchronous call run in place). */
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

/* Frees the VM; runs in its queue's last turn, once it is dying. */
static void vm_free(avz_vm *vm) {
    /* Still "scheduled" (this turn), so never put on the ready list again; out of the
     * timer heap, so the timer thread forgets it. */
    pthread_mutex_lock(&pool.mutex);
    heap_remove(vm);
    pthread_mutex_unlock(&pool.mutex);
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
    /* Callbacks still held for a late notification: only observer events can be left
     * (a held completion holds a reference), and those are dropped as the VM is dying. */
    held_outbox *held = vm->held;
    vm->held = vm->held_tail = NULL;
    deliver_turn_item(vm, held, &(outbox){.count = 0});
    /* The framework lets go of the handlers it kept: each gets the shim's error for a
     * dropped handler, exactly once. */
    for (size_t i = 0; i < vm->withheld_count; i++) {
        const sim_withheld *kept = &vm->withheld[i];
        if (kept->completion != NULL) {
            kept->completion(kept->context, avz_sim_dropped_completion_error());
        } else if (kept->connect != NULL) {
            kept->connect(kept->context, -1, avz_sim_dropped_completion_error());
        }
    }
    free(vm->withheld);
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
    pthread_cond_destroy(&vm->sync_done);
    pthread_mutex_destroy(&vm->mutex);
    avz_sim_object_free(&vm->base);
}

/* The last reference went (on any thread, the queue's own included): the queue's next
 * turn frees the VM. Never blocks. */
static void vm_last_release(void *object) {
    avz_vm *vm = object;
    pthread_mutex_lock(&vm->mutex);
    atomic_store_explicit(&vm->dying, true, memory_order_release);
    /* Scheduled under the VM's mutex: a turn running now frees the VM as soon as it
     * takes the mutex again, so `vm` must not be touched after it is released. */
    pthread_mutex_lock(&pool.mutex);
    pool_worker *worker = schedule_locked(vm);
    pthread_mutex_unlock(&pool.mutex);
    pthread_mutex_unlock(&vm->mutex);
    wake_worker(worker);
}

/* VM mutex held: appends `task` to the queue and schedules the queue. Returns the worker
 * to wake once the VM's mutex is released (its turn starts by taking it). */
static pool_worker *post_locked(avz_vm *vm, sim_task *task) {
    task->next = NULL;
    if (vm->tasks_tail != NULL) {
        vm->tasks_tail->next = task;
    } else {
        vm->tasks = task;
    }
    vm->tasks_tail = task;
    /* Under the VM's mutex, so that a queue with tasks is always scheduled (a turn
     * decides to end under this mutex too). */
    pthread_mutex_lock(&pool.mutex);
    pool_worker *worker = schedule_locked(vm);
    pthread_mutex_unlock(&pool.mutex);
    return worker;
}

void avz_sim_vm_post(avz_vm *vm, sim_task *task) {
    pthread_mutex_lock(&vm->mutex);
    pool_worker *worker = post_locked(vm, task);
    pthread_mutex_unlock(&vm->mutex);
    wake_worker(worker);
}

void avz_sim_vm_sync(avz_vm *vm, sync_call *call) {
    pthread_mutex_lock(&vm->mutex);
    if (current_worker_vm == vm) {
        /* A callback: run in place (the real framework would deadlock); a timer armed
         * here reaches the pool when this turn ends. */
        avz_sim_handle_sync(vm, call);
        pthread_mutex_unlock(&vm->mutex);
        return;
    }
    pthread_mutex_lock(&pool.mutex);
    bool idle = !vm->scheduled;
    pthread_mutex_unlock(&pool.mutex);
    if (idle) {
        /* Nothing queued and no turn running (a queue with tasks is scheduled): like
         * dispatch_sync on an idle queue, the call runs here, in queue order. A turn the
         * timer thread starts meanwhile waits for the mutex. */
        avz_sim_handle_sync(vm, call);
        if (vm->timers != NULL) {
            pthread_mutex_lock(&pool.mutex);
            if (!vm->scheduled) {
                heap_set(vm, vm->timers->deadline_ns);
            }
            pthread_mutex_unlock(&pool.mutex);
        }
        pthread_mutex_unlock(&vm->mutex);
        return;
    }
    sim_task *task = avz_sim_alloc(sizeof *task);
    task->kind = TASK_SYNC;
    task->sync = call;
    pool_worker *worker = post_locked(vm, task);
    pthread_mutex_unlock(&vm->mutex);
    wake_worker(worker);
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
    vm->unsavable = avz_sim_config_unsavable(config);
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

    if (!pool_start(error)) {
        goto fail_fds;
    }
    pthread_mutex_init(&vm->mutex, NULL);
    avz_sim_cond_init_monotonic(&vm->sync_done);
    avz_sim_object_init(&vm->base, &vm_class);
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
