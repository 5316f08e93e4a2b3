/*
 * vm.c — the VM lifecycle: states, operations and which state allows them, the
 * scripted guest, observer events, the public lifecycle calls and the simulator's
 * triggers.
 * See README.md beside this file for what the simulator models.
 */
#if !defined(_GNU_SOURCE) && !defined(_DEFAULT_SOURCE)
#define _DEFAULT_SOURCE 1
#endif

#include "internal.h"
#include "avz_sim.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

static const char *op_name(int32_t kind) {
    switch (kind) {
    case AVZ_SIM_OP_START: return "start";
    case AVZ_SIM_OP_STOP: return "stop";
    case AVZ_SIM_OP_PAUSE: return "pause";
    case AVZ_SIM_OP_RESUME: return "resume";
    case AVZ_SIM_OP_SAVE: return "save";
    case AVZ_SIM_OP_RESTORE: return "restore";
    case AVZ_SIM_OP_REQUEST_STOP: return "stop request";
    default: return "unknown";
    }
}

const char *avz_sim_state_phrase(int32_t state) {
    switch (state) {
    case AVZ_STATE_STOPPED: return "stopped";
    case AVZ_STATE_RUNNING: return "running";
    case AVZ_STATE_PAUSED: return "paused";
    case AVZ_STATE_ERROR: return "in the error state";
    case AVZ_STATE_STARTING: return "starting";
    case AVZ_STATE_PAUSING: return "pausing";
    case AVZ_STATE_RESUMING: return "resuming";
    case AVZ_STATE_STOPPING: return "stopping";
    case AVZ_STATE_SAVING: return "saving its state";
    case AVZ_STATE_RESTORING: return "restoring its state";
    default: return "in an unknown state";
    }
}

static void set_state(avz_vm *vm, outbox *out, int32_t state) {
    if (vm->state == state) {
        return;
    }
    vm->state = state;
    if (state != AVZ_STATE_STOPPED) {
        vm->left_stopped = true;
    }
    outbox_item *item = avz_sim_outbox_push(out);
    item->kind = OUT_OBSERVER;
    item->state = state;
    item->event = AVZ_EVENT_STATE_CHANGED;
}

/* A delegate event, reported with the current state; `error` (+1) is released after the
 * observer returns. */
static void push_event(avz_vm *vm, outbox *out, int32_t event, CFErrorRef error) {
    outbox_item *item = avz_sim_outbox_push(out);
    item->kind = OUT_OBSERVER;
    item->state = vm->state;
    item->event = event;
    item->error = error;
}

static void op_free(sim_op *op) {
    avz_sim_close_fd(op->save_fd);
    free(op->path);
    free(op);
}

/* Queues the operation's completion with `error` (+1 or NULL) and the release of its VM
 * reference, and frees the operation. */
static void op_complete(outbox *out, sim_op *op, CFErrorRef error) {
    outbox_item *item = avz_sim_outbox_push(out);
    item->kind = OUT_COMPLETION;
    item->completion = op->completion;
    item->context = op->context;
    item->error = error;
    out->vm_releases++;
    op_free(op);
}

void avz_sim_withhold(avz_vm *vm, avz_completion_fn completion, avz_connect_fn connect,
                      void *context) {
    avz_sim_array_reserve((void **)&vm->withheld, &vm->withheld_capacity,
                          vm->withheld_count + 1, sizeof *vm->withheld);
    vm->withheld[vm->withheld_count++] =
        (sim_withheld){.completion = completion, .connect = connect, .context = context};
}

CFErrorRef avz_sim_dropped_completion_error(void) {
    return avz_sim_error_create(VZ, AVZ_ERROR_INTERNAL, "%s", DROPPED_COMPLETION_TEXT);
}

/* An accepted operation ends with `error` (+1 or NULL). Its completion goes out as
 * op_complete does, unless a trigger took it: the framework keeps the handler and never
 * calls it (avz_sim_vm_withhold_next_completion), or releases it uncalled
 * (avz_sim_vm_drop_next_completion), where the callee gets the shim's error for a
 * dropped handler instead of the outcome. Either way the VM reference goes now. */
static void op_finish(avz_vm *vm, outbox *out, sim_op *op, CFErrorRef error) {
    if (op->withhold || op->drop) {
        if (error != NULL) {
            CFRelease(error);
        }
        error = NULL;
    }
    if (op->withhold) {
        avz_sim_withhold(vm, op->completion, NULL, op->context);
        out->vm_releases++;
        op_free(op);
        return;
    }
    op_complete(out, op, op->drop ? avz_sim_dropped_completion_error() : error);
}

static void op_refuse(outbox *out, sim_op *op, CFIndex code, const char *fmt, ...)
    AVZ_SIM_PRINTF(4, 5);

static void op_refuse(outbox *out, sim_op *op, CFIndex code, const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    CFErrorRef error = avz_sim_error_createv(VZ, code, fmt, args);
    va_end(args);
    op_complete(out, op, error);
}

static CFErrorRef injected_error(const sim_op *op) {
    return avz_sim_error_create(VZ, (CFIndex)op->inject_code,
                                "The %s operation failed (failure injected by the simulator, "
                                "code %" PRId64 ").",
                                op_name(op->kind), op->inject_code);
}

static void arm_guest_timers(avz_vm *vm) {
    if (vm->knobs.power_off_after_ms > 0 && vm->power_off_timer == 0) {
        vm->power_off_timer =
            avz_sim_timer_add(vm, vm->knobs.power_off_after_ms, TIMER_GUEST_POWER_OFF);
    }
    if (vm->knobs.crash_after_ms > 0 && vm->crash_timer == 0) {
        vm->crash_timer = avz_sim_timer_add(vm, vm->knobs.crash_after_ms, TIMER_GUEST_CRASH);
    }
}

static void disarm_guest_timers(avz_vm *vm) {
    avz_sim_timer_cancel(vm, &vm->power_off_timer);
    avz_sim_timer_cancel(vm, &vm->crash_timer);
    avz_sim_timer_cancel(vm, &vm->stop_request_timer);
    avz_sim_timer_cancel(vm, &vm->deferred_power_off_timer);
    vm->power_off_pending = false;
}

/* The VM reached Running (an operation ended there, or a failed pause or stop went
 * back). The guest "boots" the first time after it was stopped: its timers start and it
 * says so on its serial outputs. A power-off that fell due while its vCPUs were stopped
 * happens now (on the next turn of the worker, after this turn's callbacks). */
static void enter_running(avz_vm *vm, outbox *out) {
    set_state(vm, out, AVZ_STATE_RUNNING);
    if (!vm->guest_booted) {
        vm->guest_booted = true;
        arm_guest_timers(vm);
        out->serial_line = true;
    } else if (vm->power_off_pending && vm->deferred_power_off_timer == 0) {
        vm->deferred_power_off_timer = avz_sim_timer_add(vm, 0, TIMER_DEFERRED_POWER_OFF);
    }
}

/* The VM stopped (or failed): the guest is gone, and with it whatever it was about to
 * do. */
static void guest_gone(avz_vm *vm) {
    disarm_guest_timers(vm);
    vm->guest_booted = false;
    /* The next guest starts with all of its memory. */
    vm->balloon_target = vm->memory_size;
}

/* The guest powers itself off. Only a running guest can: a paused VM's vCPUs do not
 * run (and no operation is in flight while the VM is running). */
static void guest_power_off(avz_vm *vm, outbox *out) {
    if (vm->state != AVZ_STATE_RUNNING) {
        return;
    }
    guest_gone(vm);
    set_state(vm, out, AVZ_STATE_STOPPED);
    push_event(vm, out, AVZ_EVENT_GUEST_STOPPED, NULL);
}

/* A power-off timer (power_off_after or the reaction to a stop request) fell due: the
 * guest acts on it if it runs, or as soon as it runs again. */
static void guest_power_off_due(avz_vm *vm, outbox *out) {
    if (vm->state == AVZ_STATE_RUNNING) {
        guest_power_off(vm, out);
    } else if (vm->guest_booted) {
        vm->power_off_pending = true;
    }
}

/* The VM fails: -> Error, STOPPED_WITH_ERROR, then the operation in flight (if any)
 * completes with an error carrying the same code. A save's partial file is removed. */
static void guest_crash(avz_vm *vm, outbox *out, int64_t code) {
    if (vm->state == AVZ_STATE_STOPPED || vm->state == AVZ_STATE_ERROR) {
        return;
    }
    sim_op *op = vm->op;
    vm->op = NULL;
    if (op != NULL) {
        avz_sim_timer_cancel(vm, &op->timer);
        avz_sim_save_discard(op);
    }
    guest_gone(vm);
    set_state(vm, out, AVZ_STATE_ERROR);
    push_event(vm, out, AVZ_EVENT_STOPPED_WITH_ERROR,
               avz_sim_error_create(VZ, (CFIndex)code,
                                    "The virtual machine stopped unexpectedly."));
    if (op != NULL) {
        op_finish(vm, out, op,
                  avz_sim_error_create(VZ, (CFIndex)code,
                                       "The virtual machine stopped with an error during "
                                       "the %s operation.",
                                       op_name(op->kind)));
    }
}

/* Pending avz_sim_vm_fail_next, _withhold_next_completion and _drop_next_completion
 * triggers apply to `op`, which was just accepted. */
static void take_injection(avz_vm *vm, sim_op *op) {
    if (vm->fail_next[op->kind]) {
        vm->fail_next[op->kind] = false;
        op->inject = true;
        op->inject_code = vm->fail_code[op->kind];
    }
    op->withhold = vm->withhold_next[op->kind];
    vm->withhold_next[op->kind] = false;
    op->drop = vm->drop_next[op->kind];
    vm->drop_next[op->kind] = false;
}

/* Accepts `op`: it becomes the operation in flight and its transitional state lasts
 * `delay_ms`. */
static void op_begin(avz_vm *vm, outbox *out, sim_op *op, int32_t transitional,
                     uint32_t delay_ms) {
    if (vm->op != NULL) {
        /* Cannot happen: every operation needs a non-transitional state. */
        avz_sim_fatal("internal error: two operations in flight");
    }
    op->origin = vm->state;
    take_injection(vm, op);
    vm->op = op;
    set_state(vm, out, transitional);
    op->timer = avz_sim_timer_add(vm, delay_ms, TIMER_OPERATION);
}

/* Refuses `op` because the VM is in the wrong state: `code` with a description naming
 * the state, the states the operation needs and the operation in flight, if any. */
static void refuse_state(avz_vm *vm, outbox *out, sim_op *op, CFIndex code,
                         const char *what, const char *needed) {
    if (vm->op != NULL) {
        op_refuse(out, op, code, "Cannot %s: it is %s, not %s (the %s operation is still in "
                                 "progress).",
                  what, avz_sim_state_phrase(vm->state), needed, op_name(vm->op->kind));
    } else {
        op_refuse(out, op, code, "Cannot %s: it is %s, not %s.", what,
                  avz_sim_state_phrase(vm->state), needed);
    }
}

/* A new asynchronous operation (it owns the task's VM reference). Every operation is
 * legal only from non-transitional states, so an operation in flight (which always
 * holds the VM in its transitional state) refuses every other one: nothing cancels
 * anything. */
static void handle_operation(avz_vm *vm, outbox *out, sim_op *op) {
    int32_t state = vm->state;
    const sim_knobs *knobs = &vm->knobs;

    switch (op->kind) {
    case AVZ_SIM_OP_START:
        /* From Stopped, or from Error: the guest boots afresh. */
        if (state != AVZ_STATE_STOPPED && state != AVZ_STATE_ERROR) {
            refuse_state(vm, out, op, AVZ_ERROR_INVALID_STATE_TRANSITION,
                         "start the virtual machine", "stopped or in the error state");
        } else {
            op_begin(vm, out, op, AVZ_STATE_STARTING, knobs->boot_delay_ms);
        }
        return;

    case AVZ_SIM_OP_STOP:
        /* Only from Running or Paused; the code of a refusal is not documented (the
         * stricter reading: 4, like every other state-transition refusal). */
        if (state != AVZ_STATE_RUNNING && state != AVZ_STATE_PAUSED) {
            refuse_state(vm, out, op, AVZ_ERROR_INVALID_STATE_TRANSITION,
                         "stop the virtual machine", "running or paused");
        } else {
            op_begin(vm, out, op, AVZ_STATE_STOPPING, knobs->stop_delay_ms);
        }
        return;

    case AVZ_SIM_OP_PAUSE:
        if (state != AVZ_STATE_RUNNING) {
            refuse_state(vm, out, op, AVZ_ERROR_INVALID_STATE_TRANSITION,
                         "pause the virtual machine", "running");
        } else {
            op_begin(vm, out, op, AVZ_STATE_PAUSING, knobs->operation_delay_ms);
        }
        return;

    case AVZ_SIM_OP_RESUME:
        if (state != AVZ_STATE_PAUSED) {
            refuse_state(vm, out, op, AVZ_ERROR_INVALID_STATE_TRANSITION,
                         "resume the virtual machine", "paused");
        } else {
            op_begin(vm, out, op, AVZ_STATE_RESUMING, knobs->operation_delay_ms);
        }
        return;

    case AVZ_SIM_OP_SAVE:
        if (knobs->save_restore_unsupported || avz_sim_host_is_intel()) {
            op_complete(out, op, avz_sim_save_restore_unsupported_error(
                                     "save the virtual machine state"));
        } else if (state != AVZ_STATE_PAUSED) {
            /* The framework documents code 3 (not 4) for a save from the wrong state. */
            refuse_state(vm, out, op, AVZ_ERROR_INVALID_STATE,
                         "save the virtual machine state", "paused");
        } else {
            CFErrorRef error = avz_sim_save_prepare(vm, op);
            if (error != NULL) {
                op_complete(out, op, error); /* no state change */
            } else {
                op_begin(vm, out, op, AVZ_STATE_SAVING, knobs->operation_delay_ms);
            }
        }
        return;

    case AVZ_SIM_OP_RESTORE:
        if (knobs->save_restore_unsupported || avz_sim_host_is_intel()) {
            op_complete(out, op, avz_sim_save_restore_unsupported_error(
                                     "restore the virtual machine state"));
        } else if (state != AVZ_STATE_STOPPED) {
            refuse_state(vm, out, op, AVZ_ERROR_INVALID_STATE_TRANSITION,
                         "restore the virtual machine state", "stopped");
        } else if (vm->left_stopped) {
            /* The framework documents restore into a stopped VM and says nothing about a
             * VM object that already ran: the stricter reading refuses it. */
            op_refuse(out, op, AVZ_ERROR_INVALID_STATE_TRANSITION,
                      "Cannot restore the virtual machine state: this virtual machine object "
                      "has already left the stopped state once; restore into a newly created "
                      "virtual machine.");
        } else if (vm->unsavable != NULL) {
            /* The configuration must support saving and restoring (fidelity rule 19):
             * refused before anything is read, the file untouched. */
            op_refuse(out, op, AVZ_ERROR_RESTORE,
                      "Cannot restore the virtual machine state from %s: this configuration "
                      "cannot be saved or restored (%s).",
                      op->path, vm->unsavable);
        } else {
            op_begin(vm, out, op, AVZ_STATE_RESTORING, knobs->operation_delay_ms);
        }
        return;

    default:
        avz_sim_fatal("internal error: operation kind %" PRId32, op->kind);
    }
}

/* An operation's transitional state ended. */
static void finish_operation(avz_vm *vm, outbox *out, sim_op *op) {
    vm->op = NULL;
    op->timer = 0;
    if (vm->late_next_ms > 0 && !vm->holding) {
        /* The notification of the state this operation ends in is late: the shim holds
         * the completion (and what follows it) until the notification comes, or for at
         * most its hold limit, after which it reads the state itself. The state changes
         * now: synchronous reads see it. */
        uint32_t late = vm->late_next_ms;
        vm->late_next_ms = 0;
        vm->holding = true;
        (void)avz_sim_timer_add(vm, late < SHIM_HOLD_LIMIT_MS ? late : SHIM_HOLD_LIMIT_MS,
                                TIMER_LATE_NOTIFICATION);
    }
    CFErrorRef error = op->inject ? injected_error(op) : NULL;

    switch (op->kind) {
    case AVZ_SIM_OP_START:
        if (error != NULL) {
            set_state(vm, out, op->origin);
        } else {
            enter_running(vm, out);
        }
        break;

    case AVZ_SIM_OP_STOP:
        if (error == NULL) {
            guest_gone(vm);
            set_state(vm, out, AVZ_STATE_STOPPED);
        } else if (op->origin == AVZ_STATE_RUNNING) {
            enter_running(vm, out);
        } else {
            set_state(vm, out, op->origin);
        }
        break;

    case AVZ_SIM_OP_PAUSE:
        if (error != NULL) {
            enter_running(vm, out);
        } else {
            set_state(vm, out, AVZ_STATE_PAUSED);
        }
        break;

    case AVZ_SIM_OP_RESUME:
        if (error != NULL) {
            set_state(vm, out, op->origin);
        } else {
            enter_running(vm, out);
        }
        break;

    case AVZ_SIM_OP_SAVE:
        if (error != NULL) {
            avz_sim_save_discard(op); /* injected failure: remove the partial file */
        } else {
            error = avz_sim_save_finish(vm, op);
        }
        set_state(vm, out, AVZ_STATE_PAUSED);
        break;

    case AVZ_SIM_OP_RESTORE:
        if (error == NULL) {
            error = avz_sim_restore_check(vm, op->path);
        }
        set_state(vm, out, error != NULL ? AVZ_STATE_STOPPED : AVZ_STATE_PAUSED);
        break;

    default:
        avz_sim_fatal("internal error: operation kind %" PRId32, op->kind);
    }
    op_finish(vm, out, op, error);
}

/* avz_sim_vm_network_disconnect: the delegate's attachmentWasDisconnectedWithError:
 * while the VM is starting (an interface that fails to come up at boot), running or
 * paused, for a device it has; ignored otherwise. */
static void handle_network_disconnect(avz_vm *vm, outbox *out, uint32_t index, int64_t code) {
    if (vm->state != AVZ_STATE_STARTING && vm->state != AVZ_STATE_RUNNING &&
        vm->state != AVZ_STATE_PAUSED) {
        return;
    }
    if (index >= vm->net_count) {
        return;
    }
    push_event(vm, out, AVZ_EVENT_NETWORK_DISCONNECTED,
               avz_sim_error_create(VZ, (CFIndex)code,
                                    "network device %" PRIu32 ": the network attachment was "
                                    "disconnected (code %" PRId64 ").",
                                    index, code));
}

void avz_sim_handle_timer(avz_vm *vm, outbox *out, const sim_timer *timer) {
    switch (timer->kind) {
    case TIMER_OPERATION:
        if (vm->op != NULL && vm->op->timer == timer->id) {
            finish_operation(vm, out, vm->op);
        }
        break;
    case TIMER_GUEST_POWER_OFF:
        vm->power_off_timer = 0;
        guest_power_off_due(vm, out);
        break;
    case TIMER_STOP_REQUEST:
        vm->stop_request_timer = 0;
        guest_power_off_due(vm, out);
        break;
    case TIMER_DEFERRED_POWER_OFF:
        vm->deferred_power_off_timer = 0;
        /* Paused again before this turn came: guest_power_off does nothing and the
         * power-off stays pending until the guest next runs. */
        if (vm->power_off_pending) {
            guest_power_off(vm, out);
        }
        break;
    case TIMER_GUEST_CRASH:
        vm->crash_timer = 0;
        guest_crash(vm, out, vm->knobs.crash_code);
        break;
    case TIMER_LATE_NOTIFICATION:
        /* The held deliveries go out at the end of this item (queue.c). */
        vm->holding = false;
        break;
    }
}

/* requestStopWithError:. */
static void handle_request_stop(avz_vm *vm, sync_call *call) {
    if (vm->state != AVZ_STATE_RUNNING) {
        call->ok = false;
        call->error = avz_sim_error_create(
            VZ, AVZ_ERROR_INVALID_STATE,
            "Cannot request the guest to stop: the virtual machine is %s, not running.",
            avz_sim_state_phrase(vm->state));
    } else if (vm->fail_next[AVZ_SIM_OP_REQUEST_STOP]) {
        vm->fail_next[AVZ_SIM_OP_REQUEST_STOP] = false;
        int64_t code = vm->fail_code[AVZ_SIM_OP_REQUEST_STOP];
        call->ok = false;
        call->error = avz_sim_error_create(
            VZ, (CFIndex)code,
            "The stop request failed (failure injected by the simulator, code %" PRId64 ").",
            code);
    } else {
        call->ok = true;
        if (!vm->knobs.ignores_stop_request && vm->stop_request_timer == 0) {
            vm->stop_request_timer =
                avz_sim_timer_add(vm, vm->knobs.stop_delay_ms, TIMER_STOP_REQUEST);
        }
    }
}

void avz_sim_handle_sync(avz_vm *vm, sync_call *call) {
    call->state = vm->state;
    switch (call->kind) {
    case SYNC_STATE:
        break;
    case SYNC_REQUEST_STOP:
        handle_request_stop(vm, call);
        break;
    case SYNC_BALLOON_GET:
    case SYNC_BALLOON_SET:
        avz_sim_handle_balloon(vm, call);
        break;
    case SYNC_VSOCK_LISTEN:
    case SYNC_VSOCK_REMOVE:
        avz_sim_handle_listener(vm, call);
        break;
    }
    call->done = true;
    pthread_cond_broadcast(&vm->sync_done);
}

void avz_sim_handle_task(avz_vm *vm, outbox *out, sim_task *task) {
    switch (task->kind) {
    case TASK_OPERATION: {
        sim_op *op = avz_sim_alloc(sizeof *op);
        op->kind = task->op;
        op->completion = task->completion;
        op->context = task->context;
        op->path = task->path;
        task->path = NULL;
        op->save_fd = -1;
        handle_operation(vm, out, op);
        break;
    }
    case TASK_SYNC:
        avz_sim_handle_sync(vm, task->sync);
        break;
    case TASK_POWER_OFF:
        guest_power_off(vm, out);
        break;
    case TASK_CRASH:
        guest_crash(vm, out, task->code);
        break;
    case TASK_FAIL_NEXT:
        vm->fail_next[task->op] = true;
        vm->fail_code[task->op] = task->code;
        break;
    case TASK_SET_OPERATION_DELAY:
        vm->knobs.operation_delay_ms = (uint32_t)task->code;
        break;
    case TASK_VSOCK_CONNECT:
        avz_sim_handle_vsock_connect(vm, out, task);
        break;
    case TASK_GUEST_VSOCK_CONNECT:
        avz_sim_handle_guest_vsock_connect(vm, out, task->port);
        break;
    case TASK_NETWORK_DISCONNECT:
        handle_network_disconnect(vm, out, task->port, task->code);
        break;
    case TASK_WITHHOLD_NEXT:
        vm->withhold_next[task->op] = true;
        break;
    case TASK_DROP_NEXT:
        vm->drop_next[task->op] = true;
        break;
    case TASK_LATE_NEXT:
        vm->late_next_ms = (uint32_t)task->code;
        break;
    case TASK_LISTENER_RELEASE: {
        outbox_item *item = avz_sim_outbox_push(out);
        item->kind = OUT_RELEASE;
        item->release = task->release;
        item->context = task->context;
        break;
    }
    }
}

static void vm_submit(avz_vm *vm, int32_t kind, const char *path, avz_completion_fn completion,
                      void *context, const char *function) {
    avz_sim_vm_check(vm, function);
    sim_task *task = avz_sim_alloc(sizeof *task);
    task->kind = TASK_OPERATION;
    task->op = kind;
    task->completion = completion;
    task->context = context;
    task->path = avz_sim_strdup(path);
    CFRetain(vm); /* the operation keeps the VM alive until its completion ran */
    avz_sim_vm_post(vm, task);
}

void avz_vm_start(avz_vm *vm, avz_completion_fn completion, void *context) {
    vm_submit(vm, AVZ_SIM_OP_START, NULL, completion, context, "avz_vm_start");
}

void avz_vm_stop(avz_vm *vm, avz_completion_fn completion, void *context) {
    vm_submit(vm, AVZ_SIM_OP_STOP, NULL, completion, context, "avz_vm_stop");
}

void avz_vm_pause(avz_vm *vm, avz_completion_fn completion, void *context) {
    vm_submit(vm, AVZ_SIM_OP_PAUSE, NULL, completion, context, "avz_vm_pause");
}

void avz_vm_resume(avz_vm *vm, avz_completion_fn completion, void *context) {
    vm_submit(vm, AVZ_SIM_OP_RESUME, NULL, completion, context, "avz_vm_resume");
}

void avz_vm_save_state(avz_vm *vm, const char *path, avz_completion_fn completion,
                       void *context) {
    REQUIRE(path, "avz_vm_save_state");
    vm_submit(vm, AVZ_SIM_OP_SAVE, path, completion, context, "avz_vm_save_state");
}

void avz_vm_restore_state(avz_vm *vm, const char *path, avz_completion_fn completion,
                          void *context) {
    REQUIRE(path, "avz_vm_restore_state");
    vm_submit(vm, AVZ_SIM_OP_RESTORE, path, completion, context, "avz_vm_restore_state");
}

bool avz_vm_request_stop(avz_vm *vm, CFErrorRef *error) {
    avz_sim_vm_check(vm, "avz_vm_request_stop");
    sync_call call = {.kind = SYNC_REQUEST_STOP};
    avz_sim_vm_sync(vm, &call);
    return avz_sim_sync_result(&call, error);
}

static int32_t vm_read_state(avz_vm *vm, const char *function) {
    avz_sim_vm_check(vm, function);
    sync_call call = {.kind = SYNC_STATE};
    avz_sim_vm_sync(vm, &call);
    return call.state;
}

int32_t avz_vm_state(avz_vm *vm) {
    return vm_read_state(vm, "avz_vm_state");
}

bool avz_vm_can_start(avz_vm *vm) {
    int32_t state = vm_read_state(vm, "avz_vm_can_start");
    return state == AVZ_STATE_STOPPED || state == AVZ_STATE_ERROR;
}

bool avz_vm_can_stop(avz_vm *vm) {
    int32_t state = vm_read_state(vm, "avz_vm_can_stop");
    return state == AVZ_STATE_RUNNING || state == AVZ_STATE_PAUSED;
}

bool avz_vm_can_pause(avz_vm *vm) {
    return vm_read_state(vm, "avz_vm_can_pause") == AVZ_STATE_RUNNING;
}

bool avz_vm_can_resume(avz_vm *vm) {
    return vm_read_state(vm, "avz_vm_can_resume") == AVZ_STATE_PAUSED;
}

bool avz_vm_can_request_stop(avz_vm *vm) {
    return vm_read_state(vm, "avz_vm_can_request_stop") == AVZ_STATE_RUNNING;
}

static void vm_trigger(avz_vm *vm, enum task_kind kind, int32_t op, int64_t code,
                       const char *function) {
    avz_sim_vm_check(vm, function);
    sim_task *task = avz_sim_alloc(sizeof *task);
    task->kind = kind;
    task->op = op;
    task->code = code;
    avz_sim_vm_post(vm, task);
}

void avz_sim_vm_fail_next(avz_vm *vm, int32_t op, int64_t code) {
    if (op < 0 || op >= OP_KINDS) {
        avz_sim_fatal("avz_sim_vm_fail_next: %" PRId32 " is not an AVZ_SIM_OP_* value", op);
    }
    vm_trigger(vm, TASK_FAIL_NEXT, op, code, "avz_sim_vm_fail_next");
}

/* An asynchronous operation kind (not the synchronous stop request). */
static void check_async_op(int32_t op, const char *function) {
    if (op < 0 || op >= OP_KINDS || op == AVZ_SIM_OP_REQUEST_STOP) {
        avz_sim_fatal("%s: %" PRId32 " is not an asynchronous AVZ_SIM_OP_* value", function, op);
    }
}

void avz_sim_vm_withhold_next_completion(avz_vm *vm, int32_t op) {
    check_async_op(op, "avz_sim_vm_withhold_next_completion");
    vm_trigger(vm, TASK_WITHHOLD_NEXT, op, 0, "avz_sim_vm_withhold_next_completion");
}

void avz_sim_vm_drop_next_completion(avz_vm *vm, int32_t op) {
    check_async_op(op, "avz_sim_vm_drop_next_completion");
    vm_trigger(vm, TASK_DROP_NEXT, op, 0, "avz_sim_vm_drop_next_completion");
}

void avz_sim_vm_delay_next_notification(avz_vm *vm, uint32_t ms) {
    vm_trigger(vm, TASK_LATE_NEXT, 0, ms, "avz_sim_vm_delay_next_notification");
}

void avz_sim_vm_set_operation_delay_ms(avz_vm *vm, uint32_t ms) {
    vm_trigger(vm, TASK_SET_OPERATION_DELAY, 0, ms, "avz_sim_vm_set_operation_delay_ms");
}

void avz_sim_vm_guest_power_off(avz_vm *vm) {
    vm_trigger(vm, TASK_POWER_OFF, 0, 0, "avz_sim_vm_guest_power_off");
}

void avz_sim_vm_crash(avz_vm *vm, int64_t code) {
    vm_trigger(vm, TASK_CRASH, 0, code, "avz_sim_vm_crash");
}

void avz_sim_vm_network_disconnect(avz_vm *vm, uint32_t device_index, int64_t code) {
    avz_sim_vm_check(vm, "avz_sim_vm_network_disconnect");
    sim_task *task = avz_sim_alloc(sizeof *task);
    task->kind = TASK_NETWORK_DISCONNECT;
    task->port = device_index;
    task->code = code;
    avz_sim_vm_post(vm, task);
}
