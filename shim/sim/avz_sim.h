/*
 * avz_sim.h — knobs of the portable simulator (shim/sim/), for tests only.
 *
 * The simulator implements include/applevz.h on every non-Apple target. These extra
 * functions script the simulated guest and host and count live objects; they do not
 * exist in the real shim. Ownership and threading follow applevz.h.
 */
#ifndef APPLEVZ_SIM_H
#define APPLEVZ_SIM_H

#include "../../include/applevz.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Operation kinds for avz_sim_vm_fail_next. */
#define AVZ_SIM_OP_START 0
#define AVZ_SIM_OP_STOP 1
#define AVZ_SIM_OP_PAUSE 2
#define AVZ_SIM_OP_RESUME 3
#define AVZ_SIM_OP_SAVE 4
#define AVZ_SIM_OP_RESTORE 5
#define AVZ_SIM_OP_REQUEST_STOP 6

/* Guest script, set on a configuration before avz_vm_create (VMs copy it).
 * Defaults: every delay 0 ms, guest obeys stop requests, never powers off or crashes
 * by itself, save/restore supported, configuration savable. `config` borrowed. */

/* Starting -> Running takes this long. */
void avz_sim_config_set_boot_delay_ms(avz_config *config, uint32_t ms);
/* A forced stop (Stopping -> Stopped) and a guest's own power-off after a stop request
 * take this long (a power-off that falls due while the VM does not run waits, as for
 * avz_sim_config_set_power_off_after_ms). */
void avz_sim_config_set_stop_delay_ms(avz_config *config, uint32_t ms);
/* Pause, resume, save and restore each take this long. */
void avz_sim_config_set_operation_delay_ms(avz_config *config, uint32_t ms);
/* The guest ignores requestStop (no ACPI power-button handling). */
void avz_sim_config_set_ignores_stop_request(avz_config *config, bool ignores);
/* The guest powers itself off this long after it boots (first reaches Running after
 * a stop; 0 = never). Falling due while the VM is not running (paused, or in the middle
 * of an operation), it happens as soon as the guest runs again, or never if the guest
 * stops first. */
void avz_sim_config_set_power_off_after_ms(avz_config *config, uint32_t ms);
/* The VM fails with `code` (VZErrorDomain) this long after the guest boots (0 = never),
 * as avz_sim_vm_crash. */
void avz_sim_config_set_crash_after_ms(avz_config *config, uint32_t ms, int64_t code);
/* Host without save/restore (Intel Mac, macOS < 14). */
void avz_sim_config_set_save_restore_unsupported(avz_config *config, bool unsupported);
/* This configuration cannot be saved or restored (validateSaveRestoreSupport fails), for
 * a reason the simulator cannot derive from its devices (directory sharing and console
 * devices already make a configuration unsavable: fidelity rule 19). */
void avz_sim_config_set_not_savable(avz_config *config, bool not_savable);

/* A host vsock connect to a port the guest does not listen on never completes while the
 * VM lives (Apple documents that connectToPort: then does nothing), instead of failing
 * with POSIX ECONNRESET (what Macs are observed to report, the default). The framework
 * keeps the handler: when the VM is freed the connect function gets fd -1 and the shim's
 * error for a dropped handler (VZErrorDomain code 1, "the framework dropped the
 * operation without completing it"). */
void avz_sim_config_set_vsock_unanswered(avz_config *config, bool unanswered);

/* The simulated guest listens on vsock `port`: a host connection to it is accepted and
 * the guest echoes back every byte it receives until the host closes its end. */
void avz_sim_config_add_guest_vsock_listener(avz_config *config, uint32_t port);

/* The simulated host (process-wide; defaults: Apple silicon, Rosetta installed). */
#define AVZ_SIM_HOST_APPLE_SILICON 0
#define AVZ_SIM_HOST_INTEL 1
/* An Intel host has no Rosetta and no save/restore (avz_save_restore_supported is
 * false and every configuration fails save/restore validation with code 10). */
void avz_sim_set_host_architecture(int32_t architecture);
/* On Apple silicon: whether Rosetta is installed (AVZ_ROSETTA_INSTALLED) or not
 * (AVZ_ROSETTA_NOT_INSTALLED). */
void avz_sim_set_rosetta_installed(bool installed);

/* Runtime triggers on a VM (borrowed); safe from any thread but callbacks. */

/* The next operation of kind `op` (AVZ_SIM_OP_*) fails with `code` (VZErrorDomain)
 * and leaves the state where it was before the operation. */
void avz_sim_vm_fail_next(avz_vm *vm, int32_t op, int64_t code);
/* Pause, resume, save and restore begun from now on take `ms` (overrides the
 * configuration's operation delay). */
void avz_sim_vm_set_operation_delay_ms(avz_vm *vm, uint32_t ms);
/* The guest powers itself off now: Running -> Stopped, then GUEST_STOPPED. Only a
 * running guest can; in every other state (Paused included: its vCPUs do not run) the
 * call is ignored. */
void avz_sim_vm_guest_power_off(avz_vm *vm);
/* The VM fails now with `code` (any state but Stopped and Error; ignored there):
 * -> Error, STOPPED_WITH_ERROR with that error, then the operation in flight, if any,
 * completes with an error of the same code (a save's partial file is removed). */
void avz_sim_vm_crash(avz_vm *vm, int64_t code);
/* The attachment of network device `device_index` (in the order the configuration added
 * network devices) disconnects with `code` (VZErrorDomain): the observer gets
 * AVZ_EVENT_NETWORK_DISCONNECTED while the VM is starting (an interface that fails to
 * come up at boot), running or paused; ignored otherwise and for an index the VM does
 * not have. The state does not change. */
void avz_sim_vm_network_disconnect(avz_vm *vm, uint32_t device_index, int64_t code);

/* The next accepted operation of kind `op` (AVZ_SIM_OP_START ... _RESTORE) runs as usual
 * (its state changes, its file), but the framework keeps its completion handler and never
 * calls it: the completion does not come while the VM lives. The operation stops holding
 * the VM, so the last CFRelease frees it; the framework then releases the handler uncalled
 * and the completion gets what the shim reports for that: VZErrorDomain code 1
 * (AVZ_ERROR_INTERNAL), "the framework dropped the operation without completing it".
 * A refused operation does not use it up. */
void avz_sim_vm_withhold_next_completion(avz_vm *vm, int32_t op);
/* The next accepted operation of kind `op` runs as usual, but the framework releases its
 * completion handler without calling it: the completion gets the shim's error for a
 * dropped handler (code 1, as above) instead of the outcome, after the state changes. */
void avz_sim_vm_drop_next_completion(avz_vm *vm, int32_t op);
/* The framework's state notification for the state the next operation ends in comes `ms`
 * late. The state changes on time (avz_vm_state sees it), but the shim holds the
 * completion, and every callback after it, until the notification comes or for at most
 * its hold limit of 2 s (then it reads the state itself): the observer and the
 * completion get them min(ms, 2000) ms late, in the usual order. */
void avz_sim_vm_delay_next_notification(avz_vm *vm, uint32_t ms);

/* The guest opens a vsock connection to host `port` (running VM only; ignored when
 * nothing listens there). The guest's end writes "hello from guest port <port>\n" and
 * then echoes every byte back. */
void avz_sim_vm_guest_vsock_connect(avz_vm *vm, uint32_t port);

/* Live simulator objects (configurations, VMs, errors, strings), process-wide. */
int64_t avz_sim_live_objects(void);
/* Blocks until the live-object count equals `count` or `timeout_ms` passes; returns
 * whether it got there. Event-driven (condition variable), not polled. */
bool avz_sim_wait_live_objects(int64_t count, uint32_t timeout_ms);

#ifdef __cplusplus
}
#endif

#endif /* APPLEVZ_SIM_H */
