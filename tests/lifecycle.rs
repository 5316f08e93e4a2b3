//! Lifecycle tests through the simulator, i.e. through the real FFI path: every cell
//! of the shutdown table, `start()` from every state, suspend and its failure paths,
//! guest behaviours, concurrency and drop.
#![cfg(applevz_simulator)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use applevz::sim::{SimOperation, SimulatedGuest};
use applevz::{
    Error, EventKind, OnGracefulTimeout, ShutdownPolicy, StateEvent, Timeouts, VirtualMachine,
    VmState, VzErrorCode,
};
use common::{LeakCheck, PATIENCE, TestDir, builder, drain, events_until, ms, patient_timeouts};
use serial_test::serial;

/// The machine identity persisted next to the saved state (see `saved_state_path`).
const IDENTITY: &str = "vm.state.machine-identifier";
/// How long an operation left in flight by `enter` takes: long enough to act while it
/// is under way, short enough for a Poweroff to wait for it to settle.
const LONG: Duration = Duration::from_millis(1500);
const SHORT: Duration = Duration::from_millis(50);

/// A VM (and its directory) brought into `state` through public operations only.
fn enter(state: VmState) -> (TestDir, VirtualMachine) {
    let dir = TestDir::new(&format!("{state:?}").to_lowercase());
    let patient = patient_timeouts();
    let mut guest = SimulatedGuest::default();
    let mut timeouts = patient;
    match state {
        VmState::Starting => {
            guest.boot_delay = LONG;
            timeouts.start = SHORT;
        }
        VmState::Pausing => {
            guest.operation_delay = LONG;
            timeouts.pause = SHORT;
        }
        VmState::Stopping => {
            // Long enough to act while it stops, short enough for Poweroff to wait.
            guest.stop_delay = Duration::from_secs(2);
            timeouts.stop = SHORT;
        }
        _ => {}
    }
    let config = builder(&dir, guest)
        .timeouts(timeouts)
        .build()
        .expect("valid config");
    let vm = VirtualMachine::new(&config).expect("create VM");
    match state {
        VmState::Stopped => {}
        VmState::Running => vm.start().expect("start"),
        VmState::Paused => {
            vm.start().expect("start");
            vm.pause().expect("pause");
        }
        VmState::Suspended => {
            vm.start().expect("start");
            vm.suspend().expect("suspend");
        }
        VmState::Error => {
            vm.start().expect("start");
            vm.simulator().crash(1);
            vm.wait_for_state(VmState::Error, PATIENCE)
                .expect("crashed");
        }
        VmState::Starting => expect_timeout(vm.start()),
        VmState::Pausing => {
            vm.start().expect("start");
            expect_timeout(vm.pause());
        }
        VmState::Resuming => {
            vm.start().expect("start");
            vm.pause().expect("pause");
            vm.simulator().set_operation_delay(LONG);
            vm.set_timeouts(Timeouts {
                resume: SHORT,
                ..patient
            });
            expect_timeout(vm.resume());
        }
        VmState::Stopping => {
            vm.start().expect("start");
            expect_timeout(vm.shutdown(ShutdownPolicy::Halt));
        }
        VmState::Saving => {
            vm.start().expect("start");
            vm.pause().expect("pause");
            vm.simulator().set_operation_delay(LONG);
            // The failed suspend waits (up to the resume timeout) for the save to
            // end before resuming: give up at once, so the VM stays saving.
            vm.set_timeouts(Timeouts {
                save: SHORT,
                resume: SHORT,
                ..patient
            });
            expect_timeout(vm.suspend());
        }
        VmState::Restoring => {
            vm.start().expect("start");
            vm.suspend().expect("suspend");
            vm.simulator().set_operation_delay(LONG);
            vm.set_timeouts(Timeouts {
                restore: SHORT,
                ..patient
            });
            expect_timeout(vm.start());
        }
    }
    assert_eq!(vm.state(), state, "setup reached {state:?}");
    vm.set_timeouts(patient);
    (dir, vm)
}

#[allow(
    clippy::needless_pass_by_value,
    reason = "takes the outcome as the call returns it: expect_timeout(vm.start())"
)]
fn expect_timeout(result: applevz::Result<()>) {
    assert!(
        matches!(result, Err(Error::Timeout { .. })),
        "expected a timeout, got {result:?}"
    );
}

/// What one cell of a table expects.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Success, ending in this state.
    Ok(VmState),
    /// `Error::InvalidState`, ending in this state.
    Invalid(VmState),
}

#[allow(
    clippy::needless_pass_by_value,
    reason = "takes the outcome as the call returns it: check(vm.start(), ..)"
)]
fn check(result: applevz::Result<()>, vm: &VirtualMachine, expect: Expect, what: &str) {
    match expect {
        Expect::Ok(state) => {
            assert!(result.is_ok(), "{what}: expected success, got {result:?}");
            assert_eq!(vm.state(), state, "{what}: final state");
        }
        Expect::Invalid(state) => {
            match &result {
                Err(error @ Error::InvalidState { .. }) => {
                    // The message names the operation and gives a way out.
                    let message = error.to_string();
                    assert!(
                        message.starts_with("cannot "),
                        "{what}: message {message:?}"
                    );
                    assert!(
                        message.contains(": "),
                        "{what}: message has a hint: {message:?}"
                    );
                }
                other => panic!("{what}: expected InvalidState, got {other:?}"),
            }
            assert_eq!(vm.state(), state, "{what}: state unchanged");
        }
    }
}

/// The shutdown table of docs/lifecycle.md ("Shutdown"), one state (row) at a time.
fn shutdown_row(state: VmState, powerdown: Expect, halt: Expect, poweroff: Expect) {
    let leaks = LeakCheck::start();
    for (policy, expect) in [
        (ShutdownPolicy::Powerdown, powerdown),
        (ShutdownPolicy::Halt, halt),
        (ShutdownPolicy::Poweroff, poweroff),
    ] {
        let (dir, vm) = enter(state);
        let saved_state = dir.join("vm.state");
        let had_saved_state = saved_state.exists();
        let result = vm.shutdown(policy);
        check(
            result,
            &vm,
            expect,
            &format!("shutdown({policy}) while {state:?}"),
        );
        // The saved state goes away only when Poweroff discards it, or when the guest
        // restored from it runs again (a Powerdown resumes it to ask it to stop).
        let discarded = matches!(
            (state, policy),
            (VmState::Suspended, ShutdownPolicy::Poweroff)
                | (VmState::Restoring, ShutdownPolicy::Powerdown)
        );
        assert_eq!(
            saved_state.exists(),
            had_saved_state && !discarded,
            "saved state after {policy} on {state:?}"
        );
        drop(vm);
        // No temporary file is ever left behind.
        assert!(
            dir.entries().iter().all(|name| !name.contains(".partial-")),
            "leftover temporary file: {:?}",
            dir.entries()
        );
    }
    leaks.finish();
}

use Expect::{Invalid, Ok as Done};

#[test]
#[serial]
fn shutdown_stopped_is_a_no_op_for_every_policy() {
    let s = VmState::Stopped;
    shutdown_row(s, Done(s), Done(s), Done(s));
}

#[test]
#[serial]
fn shutdown_running() {
    let stopped = Done(VmState::Stopped);
    shutdown_row(VmState::Running, stopped, stopped, stopped);
}

#[test]
#[serial]
fn shutdown_paused_powerdown_resumes_first() {
    let stopped = Done(VmState::Stopped);
    shutdown_row(VmState::Paused, stopped, stopped, stopped);
}

#[test]
#[serial]
fn shutdown_suspended() {
    let s = VmState::Suspended;
    shutdown_row(s, Invalid(s), Done(s), Done(VmState::Stopped));
}

#[test]
#[serial]
fn shutdown_error_is_a_no_op_for_every_policy() {
    // The guest does not run in the error state, and the framework's stop is only
    // for a running or paused VM.
    let s = VmState::Error;
    shutdown_row(s, Done(s), Done(s), Done(s));
}

#[test]
#[serial]
fn shutdown_transitional_states_wait_then_act() {
    // The operation outlived its caller's wait and is still under way in the
    // framework: every policy waits for it to settle, then acts on where it settled
    // (running, paused or stopped), so each ends with the VM stopped.
    let stopped = Done(VmState::Stopped);
    for s in [
        VmState::Starting,
        VmState::Pausing,
        VmState::Resuming,
        VmState::Stopping,
        VmState::Saving,
    ] {
        shutdown_row(s, stopped, stopped, stopped);
    }
}

#[test]
#[serial]
fn shutdown_restoring_keeps_the_saved_state_unless_the_guest_ran() {
    // Each waits for the restore, which leaves the restored guest paused. Halt and
    // Poweroff stop it there: the file they did not find suspended is kept, so the
    // VM is suspended again. Powerdown resumes it so it can hear the request: the
    // guest ran, which spends the file (see `shutdown_row`).
    let s = VmState::Restoring;
    shutdown_row(
        s,
        Done(VmState::Stopped),
        Done(VmState::Suspended),
        Done(VmState::Suspended),
    );
}

#[test]
#[serial]
fn start_from_every_state() {
    let leaks = LeakCheck::start();
    let running = Done(VmState::Running);
    for (state, expect) in [
        (VmState::Stopped, running),
        (VmState::Running, running),
        (VmState::Paused, running),
        (VmState::Suspended, running),
        // The framework starts a VM in the error state afresh.
        (VmState::Error, running),
        (VmState::Starting, Invalid(VmState::Starting)),
        (VmState::Pausing, Invalid(VmState::Pausing)),
        (VmState::Resuming, Invalid(VmState::Resuming)),
        (VmState::Stopping, Invalid(VmState::Stopping)),
        (VmState::Saving, Invalid(VmState::Saving)),
        (VmState::Restoring, Invalid(VmState::Restoring)),
    ] {
        let (dir, vm) = enter(state);
        let result = vm.start();
        check(result, &vm, expect, &format!("start() while {state:?}"));
        if state == VmState::Suspended {
            assert!(
                !dir.join("vm.state").exists(),
                "the saved state is deleted after a restore"
            );
        }
    }
    leaks.finish();
}

#[test]
#[serial]
fn start_reports_events_in_order_to_every_subscriber() {
    use VmState::*;
    let leaks = LeakCheck::start();
    let dir = TestDir::new("events");
    let vm =
        VirtualMachine::new(&builder(&dir, SimulatedGuest::default()).build().unwrap()).unwrap();
    let first = vm.subscribe();
    let second = vm.subscribe();
    vm.start().unwrap();
    vm.pause().unwrap();
    vm.resume().unwrap();
    vm.shutdown(ShutdownPolicy::Halt).unwrap();
    let states = |events: Vec<StateEvent>| events.into_iter().map(|e| e.state).collect::<Vec<_>>();
    let expected = vec![
        Starting, Running, Pausing, Paused, Resuming, Running, Stopping, Stopped,
    ];
    assert_eq!(states(drain(&first)), expected);
    assert_eq!(states(drain(&second)), expected);
    drop(vm);
    leaks.finish();
}

#[test]
#[serial]
fn pause_and_resume_refuse_with_a_way_out() {
    let leaks = LeakCheck::start();
    let (_dir, vm) = enter(VmState::Stopped);
    check(
        vm.pause(),
        &vm,
        Invalid(VmState::Stopped),
        "pause while stopped",
    );
    check(
        vm.resume(),
        &vm,
        Invalid(VmState::Stopped),
        "resume while stopped",
    );
    check(
        vm.suspend(),
        &vm,
        Invalid(VmState::Stopped),
        "suspend while stopped",
    );
    drop(vm);
    let (_dir, vm) = enter(VmState::Suspended);
    let error = vm.resume().unwrap_err();
    assert!(
        error
            .to_string()
            .contains("while the VM is suspended: start() restores it"),
        "{error}"
    );
    check(
        vm.pause(),
        &vm,
        Invalid(VmState::Suspended),
        "pause while suspended",
    );
    assert!(vm.suspend().is_ok(), "suspend of a suspended VM is a no-op");
    drop(vm);
    leaks.finish();
}

// ---------------------------------------------------------------------------------
// suspend()

#[test]
#[serial]
fn suspend_and_start_round_trip_from_running_and_paused() {
    let leaks = LeakCheck::start();
    for initial in [VmState::Running, VmState::Paused] {
        let (dir, vm) = enter(initial);
        let events = vm.subscribe();
        vm.suspend().expect("suspend");
        assert_eq!(vm.state(), VmState::Suspended);
        assert_eq!(
            dir.entries(),
            vec!["vm.state", IDENTITY, "vmlinuz"],
            "only the saved state was added"
        );
        let last = drain(&events).pop().expect("events");
        assert_eq!(
            last,
            StateEvent {
                state: VmState::Suspended,
                kind: EventKind::Suspended
            }
        );

        vm.start().expect("start from suspended");
        assert_eq!(vm.state(), VmState::Running);
        assert_eq!(
            dir.entries(),
            vec![IDENTITY, "vmlinuz"],
            "the saved state was deleted after resuming"
        );
        let last = drain(&events).pop().expect("events");
        assert_eq!(last.kind, EventKind::SavedStateRemoved);
    }
    leaks.finish();
}

#[test]
#[serial]
fn a_new_vm_over_an_existing_saved_state_starts_suspended() {
    let leaks = LeakCheck::start();
    let dir = TestDir::new("restart");
    let config = builder(&dir, SimulatedGuest::default()).build().unwrap();
    let vm = VirtualMachine::new(&config).unwrap();
    vm.start().unwrap();
    vm.suspend().unwrap();
    drop(vm); // the host process "restarts"

    let vm = VirtualMachine::new(&config).unwrap();
    assert_eq!(vm.state(), VmState::Suspended);
    vm.start().unwrap();
    assert_eq!(vm.state(), VmState::Running);
    assert!(!dir.join("vm.state").exists());
    drop(vm);
    leaks.finish();
}

/// Runs a failing suspend on a VM in `initial` with a pre-existing saved state, and
/// checks the nothing-lost rules.
fn suspend_fails_cleanly(
    guest: SimulatedGuest,
    initial: VmState,
    arm: impl Fn(&VirtualMachine),
) -> Error {
    let dir = TestDir::new("suspend-fail");
    let vm = VirtualMachine::new(&builder(&dir, guest).build().unwrap()).unwrap();
    vm.start().unwrap();
    if initial == VmState::Paused {
        vm.pause().unwrap();
    }
    arm(&vm);
    let error = vm.suspend().expect_err("suspend must fail");
    assert_eq!(vm.state(), initial, "the VM is back where it was: {error}");
    assert_eq!(
        dir.entries(),
        vec![IDENTITY, "vmlinuz"],
        "no temporary file is left, and no saved state"
    );
    drop(vm);
    error
}

#[test]
#[serial]
fn suspend_on_a_host_without_save_restore_keeps_running() {
    let leaks = LeakCheck::start();
    let guest = SimulatedGuest {
        save_restore_unsupported: true,
        ..Default::default()
    };
    let error = suspend_fails_cleanly(guest, VmState::Running, |_| {});
    assert!(
        matches!(error, Error::SuspendNotSupported { .. }),
        "{error:?}"
    );
    assert_eq!(error.vz_code(), Some(VzErrorCode::NotSupported));
    leaks.finish();
}

#[test]
#[serial]
fn suspend_of_a_configuration_that_cannot_be_saved_keeps_running() {
    let leaks = LeakCheck::start();
    let guest = SimulatedGuest {
        not_savable: true,
        ..Default::default()
    };
    let error = suspend_fails_cleanly(guest, VmState::Running, |_| {});
    assert!(
        matches!(error, Error::SuspendNotSupported { .. }),
        "{error:?}"
    );
    leaks.finish();
}

#[test]
#[serial]
fn suspend_when_the_save_fails_resumes_the_vm() {
    let leaks = LeakCheck::start();
    for initial in [VmState::Running, VmState::Paused] {
        let error = suspend_fails_cleanly(SimulatedGuest::default(), initial, |vm| {
            vm.simulator().fail_next(SimOperation::Save, 11);
        });
        assert_eq!(error.vz_code(), Some(VzErrorCode::Save), "{error:?}");
    }
    leaks.finish();
}

#[test]
#[serial]
fn suspend_whose_stop_fails_keeps_the_saved_state_and_never_resumes() {
    // Once the stop is issued, the saved state is the guest: it is moved into place
    // even though the stop failed, and the VM is not resumed behind the caller's back.
    let leaks = LeakCheck::start();
    let dir = TestDir::new("suspend-stop-fails");
    let vm =
        VirtualMachine::new(&builder(&dir, SimulatedGuest::default()).build().unwrap()).unwrap();
    vm.start().unwrap();
    vm.simulator().fail_next(SimOperation::Stop, 1);
    let error = vm.suspend().expect_err("the stop fails");
    assert_eq!(error.vz_code(), Some(VzErrorCode::Internal), "{error:?}");
    assert_eq!(vm.state(), VmState::Paused, "not resumed");
    assert_eq!(vm.saved_state_file(), Some(dir.join("vm.state")));
    assert_eq!(dir.entries(), vec!["vm.state", IDENTITY, "vmlinuz"]);
    // Running the guest again spends the saved state.
    vm.resume().unwrap();
    assert_eq!(dir.entries(), vec![IDENTITY, "vmlinuz"]);
    assert_eq!(vm.saved_state_file(), None);
    drop(vm);
    leaks.finish();
}

#[test]
#[serial]
fn suspend_when_the_pause_fails_keeps_running() {
    let leaks = LeakCheck::start();
    let error = suspend_fails_cleanly(SimulatedGuest::default(), VmState::Running, |vm| {
        vm.simulator().fail_next(SimOperation::Pause, 1);
    });
    assert!(matches!(error, Error::Framework { .. }), "{error:?}");
    leaks.finish();
}

#[test]
#[serial]
fn suspend_without_a_saved_state_path_is_a_clear_error() {
    let leaks = LeakCheck::start();
    let dir = TestDir::new("no-path");
    let kernel = dir.file("vmlinuz", b"kernel");
    let config = applevz::VmConfig::builder()
        .linux_boot_loader(applevz::LinuxBootLoader::new(kernel))
        .memory_mib(256)
        .build()
        .unwrap();
    let vm = VirtualMachine::new(&config).unwrap();
    vm.start().unwrap();
    assert!(matches!(vm.suspend(), Err(Error::NoSavedStatePath)));
    assert_eq!(vm.state(), VmState::Running);
    drop(vm);
    leaks.finish();
}

#[test]
#[serial]
fn without_a_persisted_identity_a_new_vm_cannot_restore() {
    // Why the identity is persisted by default: a fresh one per VM makes the saved
    // state unusable after a restart (the framework binds it to the identity).
    let leaks = LeakCheck::start();
    let dir = TestDir::new("fresh-identity");
    let config = builder(&dir, SimulatedGuest::default())
        .generic_platform(applevz::MachineIdentifier::Fresh)
        .build()
        .unwrap();
    let vm = VirtualMachine::new(&config).unwrap();
    vm.start().unwrap();
    vm.suspend().unwrap();
    drop(vm);
    let vm = VirtualMachine::new(&config).unwrap();
    let error = vm.start().expect_err("another identity");
    assert_eq!(error.vz_code(), Some(VzErrorCode::Restore), "{error:?}");
    assert_eq!(vm.state(), VmState::Suspended, "the file is kept");
    drop(vm);
    leaks.finish();
}

// ---------------------------------------------------------------------------------
// Restore failures keep the file.

#[test]
#[serial]
fn a_failed_restore_keeps_the_saved_state() {
    let leaks = LeakCheck::start();
    let dir = TestDir::new("restore-fail");
    let vm =
        VirtualMachine::new(&builder(&dir, SimulatedGuest::default()).build().unwrap()).unwrap();
    vm.start().unwrap();
    vm.suspend().unwrap();
    let saved = std::fs::read(dir.join("vm.state")).unwrap();

    // 1. The framework fails the restore.
    vm.simulator().fail_next(SimOperation::Restore, 12);
    let error = vm.start().expect_err("restore fails");
    assert!(matches!(error, Error::RestoreFailed { .. }), "{error:?}");
    assert!(error.to_string().contains("the file is kept"), "{error}");
    assert_eq!(vm.state(), VmState::Suspended);
    assert_eq!(std::fs::read(dir.join("vm.state")).unwrap(), saved);

    // 2. The resume after a successful restore fails: back to suspended.
    vm.simulator().fail_next(SimOperation::Resume, 1);
    assert!(vm.start().is_err());
    assert_eq!(vm.state(), VmState::Suspended);
    assert_eq!(std::fs::read(dir.join("vm.state")).unwrap(), saved);
    drop(vm);

    // 3. A state saved by a different configuration is refused by the framework.
    let other = VirtualMachine::new(
        &builder(&dir, SimulatedGuest::default())
            .cpu_count(2)
            .build()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(other.state(), VmState::Suspended);
    let error = other.start().expect_err("incompatible saved state");
    assert_eq!(error.vz_code(), Some(VzErrorCode::Restore), "{error:?}");
    assert_eq!(std::fs::read(dir.join("vm.state")).unwrap(), saved);
    assert_eq!(other.state(), VmState::Suspended);
    drop(other);
    leaks.finish();
}

// ---------------------------------------------------------------------------------
// Guest behaviours.

#[test]
#[serial]
fn a_guest_that_ignores_the_stop_request_times_out() {
    let leaks = LeakCheck::start();
    let dir = TestDir::new("ignores");
    let guest = SimulatedGuest {
        ignores_stop_request: true,
        ..Default::default()
    };
    let timeouts = Timeouts {
        graceful_shutdown: ms(200),
        ..patient_timeouts()
    };
    let vm = VirtualMachine::new(
        &builder(&dir, guest.clone())
            .timeouts(timeouts)
            .build()
            .unwrap(),
    )
    .unwrap();
    vm.start().unwrap();
    let error = vm
        .shutdown(ShutdownPolicy::Powerdown)
        .expect_err("guest ignores the request");
    assert!(
        matches!(
            error,
            Error::Timeout {
                state: VmState::Running,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("shutdown(Poweroff)"),
        "the error names the way out: {error}"
    );
    assert_eq!(vm.state(), VmState::Running);
    drop(vm);

    let escalating = builder(&dir, guest)
        .timeouts(timeouts)
        .on_graceful_timeout(OnGracefulTimeout::ForceStop)
        .build()
        .unwrap();
    let vm = VirtualMachine::new(&escalating).unwrap();
    vm.start().unwrap();
    vm.shutdown(ShutdownPolicy::Powerdown)
        .expect("escalates to a forced stop");
    assert_eq!(vm.state(), VmState::Stopped);
    drop(vm);
    leaks.finish();
}

#[test]
#[serial]
fn a_graceful_shutdown_is_reported_as_the_guest_stopping() {
    let leaks = LeakCheck::start();
    let (_dir, vm) = enter(VmState::Running);
    let events = vm.subscribe();
    vm.shutdown(ShutdownPolicy::Powerdown).unwrap();
    // The delegate's event follows the state change.
    let kinds: Vec<_> = events_until(&events, |e| e.kind == EventKind::GuestStopped)
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        vec![EventKind::StateChanged, EventKind::GuestStopped]
    );
    drop(vm);
    leaks.finish();
}

#[test]
#[serial]
fn a_guest_powering_off_by_itself_is_observed_without_any_call() {
    let leaks = LeakCheck::start();
    let dir = TestDir::new("self-off");
    let guest = SimulatedGuest {
        power_off_after: Some(ms(100)),
        ..Default::default()
    };
    let vm = VirtualMachine::new(&builder(&dir, guest).build().unwrap()).unwrap();
    let events = vm.subscribe();
    vm.start().unwrap();
    // No call is made: the event wakes the waiter.
    vm.wait_for_state(VmState::Stopped, PATIENCE)
        .expect("guest powered off");
    let received = events_until(&events, |e| e.kind != EventKind::StateChanged);
    assert_eq!(
        received.last(),
        Some(&StateEvent {
            state: VmState::Stopped,
            kind: EventKind::GuestStopped
        })
    );
    drop(vm);
    leaks.finish();
}

#[test]
#[serial]
fn a_network_attachment_that_disconnects_is_reported_without_a_state_change() {
    let leaks = LeakCheck::start();
    let dir = TestDir::new("net-disconnect");
    let config = builder(&dir, SimulatedGuest::default())
        .nat_network(Some("52:54:00:12:34:56"))
        .nat_network(Some("52:54:00:12:34:57"))
        .build()
        .unwrap();
    let vm = VirtualMachine::new(&config).unwrap();
    let events = vm.subscribe();
    // Not running: no attachment to lose, nothing reported.
    vm.simulator().network_disconnect(1, 7);
    vm.start().unwrap();
    vm.simulator().network_disconnect(1, 7);
    let received = events_until(&events, |e| {
        matches!(e.kind, EventKind::NetworkDisconnected(_))
    });
    let states: Vec<_> = received.iter().map(|e| e.state).collect();
    assert_eq!(
        states,
        vec![VmState::Starting, VmState::Running, VmState::Running]
    );
    match &received.last().unwrap().kind {
        EventKind::NetworkDisconnected(error) => {
            assert_eq!(error.code, VzErrorCode::NetworkError);
            assert!(
                error.description.starts_with("network device 1: "),
                "{error:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(vm.state(), VmState::Running);
    // An index the VM does not have is ignored.
    vm.simulator().network_disconnect(2, 7);
    vm.shutdown(ShutdownPolicy::Halt).unwrap();
    let rest = events_until(&events, |e| e.state == VmState::Stopped);
    assert!(
        rest.iter()
            .all(|e| !matches!(e.kind, EventKind::NetworkDisconnected(_))),
        "{rest:?}"
    );
    drop(vm);
    leaks.finish();
}

#[test]
#[serial]
fn a_paused_guest_cannot_power_itself_off() {
    // Its vCPUs are stopped: the simulator, like the framework, ignores it.
    let leaks = LeakCheck::start();
    let dir = TestDir::new("paused-power-off");
    let vm =
        VirtualMachine::new(&builder(&dir, SimulatedGuest::default()).build().unwrap()).unwrap();
    vm.start().unwrap();
    vm.pause().unwrap();
    let events = vm.subscribe();
    vm.simulator().guest_power_off();
    // Queued after the power-off on the VM's queue, so it has been handled by then.
    vm.resume().unwrap();
    assert_eq!(vm.state(), VmState::Running);
    assert!(
        drain(&events)
            .iter()
            .all(|e| e.kind != EventKind::GuestStopped && e.state != VmState::Stopped)
    );
    vm.shutdown(ShutdownPolicy::Halt).unwrap();
    drop(vm);
    leaks.finish();
}

#[test]
#[serial]
fn a_saved_state_does_not_restore_under_another_mac_address() {
    let leaks = LeakCheck::start();
    let dir = TestDir::new("other-mac");
    let with_mac = |mac: &str| {
        builder(&dir, SimulatedGuest::default())
            .nat_network(Some(mac))
            .build()
            .unwrap()
    };
    let vm = VirtualMachine::new(&with_mac("52:54:00:00:00:01")).unwrap();
    vm.start().unwrap();
    vm.suspend().unwrap();
    drop(vm);
    let saved = std::fs::read(dir.join("vm.state")).unwrap();
    let vm = VirtualMachine::new(&with_mac("52:54:00:00:00:02")).unwrap();
    let error = vm.start().expect_err("another MAC address");
    assert_eq!(error.vz_code(), Some(VzErrorCode::Restore), "{error:?}");
    assert_eq!(vm.state(), VmState::Suspended);
    assert_eq!(std::fs::read(dir.join("vm.state")).unwrap(), saved);
    drop(vm);
    leaks.finish();
}

/// What `subscribe_with` is for: one channel carrying state changes and the caller's own
/// messages, with an operation's events ahead of anything sent after it returned.
#[test]
#[serial]
fn subscribe_with_puts_an_operations_events_before_what_follows_it() {
    #[derive(Debug, PartialEq)]
    enum Message {
        Event(VmState),
        Mine(&'static str),
    }
    impl From<StateEvent> for Message {
        fn from(event: StateEvent) -> Self {
            Message::Event(event.state)
        }
    }
    let leaks = LeakCheck::start();
    let dir = TestDir::new("subscribe-with");
    let vm =
        VirtualMachine::new(&builder(&dir, SimulatedGuest::default()).build().unwrap()).unwrap();
    let (sender, receiver) = std::sync::mpsc::channel();
    vm.subscribe_with(sender.clone());
    vm.start().unwrap();
    sender.send(Message::Mine("started")).unwrap();
    vm.shutdown(ShutdownPolicy::Halt).unwrap();
    sender.send(Message::Mine("stopped")).unwrap();
    let received: Vec<Message> = receiver.try_iter().collect();
    assert_eq!(
        received,
        [
            Message::Event(VmState::Starting),
            Message::Event(VmState::Running),
            Message::Mine("started"),
            Message::Event(VmState::Stopping),
            Message::Event(VmState::Stopped),
            Message::Mine("stopped")
        ]
    );
    // The receiver gone, the subscription ends (the VM drops its sender).
    drop(receiver);
    vm.start().unwrap();
    drop(vm);
    leaks.finish();
}

#[test]
#[serial]
fn a_crash_reaches_every_subscriber_with_the_framework_error() {
    let leaks = LeakCheck::start();
    let dir = TestDir::new("crash");
    let guest = SimulatedGuest {
        crash_after: Some((ms(100), 1)),
        ..Default::default()
    };
    let vm = VirtualMachine::new(&builder(&dir, guest).build().unwrap()).unwrap();
    let subscribers = [vm.subscribe(), vm.subscribe()];
    vm.start().unwrap();
    vm.wait_for_state(VmState::Error, PATIENCE)
        .expect("crashed");
    for events in &subscribers {
        use VmState::*;
        let received = events_until(events, |e| e.kind != EventKind::StateChanged);
        let states: Vec<_> = received.iter().map(|e| e.state).collect();
        assert_eq!(states, vec![Starting, Running, Error, Error], "in order");
        let last = received.into_iter().last().expect("events");
        match last.kind {
            EventKind::StoppedWithError(error) => {
                assert_eq!(error.code, VzErrorCode::Internal);
                assert_eq!(error.domain, applevz::VZ_ERROR_DOMAIN);
                assert!(!error.description.is_empty());
            }
            other => panic!("expected StoppedWithError, got {other:?}"),
        }
    }
    // Shutdown is a no-op in the error state (the guest does not run); start()
    // boots it afresh, as the framework does.
    vm.shutdown(ShutdownPolicy::Poweroff).unwrap();
    assert_eq!(vm.state(), VmState::Error);
    vm.start().unwrap();
    assert_eq!(vm.state(), VmState::Running);
    drop(vm);
    leaks.finish();
}

#[test]
#[serial]
fn a_slow_boot_is_waited_for() {
    let leaks = LeakCheck::start();
    let dir = TestDir::new("slow-boot");
    let guest = SimulatedGuest {
        boot_delay: ms(300),
        ..Default::default()
    };
    let vm = VirtualMachine::new(&builder(&dir, guest).build().unwrap()).unwrap();
    vm.start().unwrap();
    assert_eq!(vm.state(), VmState::Running);
    drop(vm);
    leaks.finish();
}

#[test]
#[serial]
fn a_failing_start_reports_the_framework_error_and_stays_stopped() {
    let leaks = LeakCheck::start();
    let (_dir, vm) = enter(VmState::Stopped);
    vm.simulator().fail_next(SimOperation::Start, 2);
    let error = vm.start().expect_err("injected failure");
    assert_eq!(
        error.vz_code(),
        Some(VzErrorCode::InvalidVirtualMachineConfiguration)
    );
    // The framework's reason is the cause, printed once along the chain.
    assert_eq!(error.to_string(), "start failed");
    let cause = std::error::Error::source(&error).expect("the framework's error");
    assert_eq!(error.full_message(), format!("start failed: {cause}"));
    assert_eq!(vm.state(), VmState::Stopped);
    vm.start().expect("the next start works");
    drop(vm);
    leaks.finish();
}

// ---------------------------------------------------------------------------------
// Concurrency and drop.

#[test]
#[serial]
fn eight_threads_operating_at_once_serialize_without_deadlock() {
    let leaks = LeakCheck::start();
    let dir = TestDir::new("threads");
    let guest = SimulatedGuest {
        boot_delay: ms(2),
        operation_delay: ms(1),
        stop_delay: ms(1),
        ..Default::default()
    };
    let vm = Arc::new(VirtualMachine::new(&builder(&dir, guest).build().unwrap()).unwrap());
    let events = vm.subscribe();
    let (done, finished) = std::sync::mpsc::channel();
    for thread in 0..8usize {
        let vm = Arc::clone(&vm);
        let done = done.clone();
        std::thread::spawn(move || {
            let mut outcomes = 0;
            for step in 0..25usize {
                let result = match (thread + step) % 7 {
                    0 => vm.start(),
                    1 => vm.pause(),
                    2 => vm.resume(),
                    3 => vm.suspend(),
                    4 => vm.shutdown(ShutdownPolicy::Halt),
                    5 => vm.shutdown(ShutdownPolicy::Poweroff),
                    _ => vm.shutdown(ShutdownPolicy::Powerdown),
                };
                // Every outcome is a success, a typed refusal, or an operation that
                // another thread's Poweroff cancelled; never a timeout.
                match result {
                    Ok(()) | Err(Error::InvalidState { .. }) => outcomes += 1,
                    Err(error) if error.vz_code() == Some(VzErrorCode::OperationCancelled) => {
                        outcomes += 1;
                    }
                    Err(other) => panic!("thread {thread} step {step}: {other:?}"),
                }
            }
            done.send(outcomes).unwrap();
        });
    }
    drop(done);
    let mut total = 0;
    for _ in 0..8 {
        total += finished
            .recv_timeout(Duration::from_secs(120))
            .expect("a thread deadlocked");
    }
    assert_eq!(total, 8 * 25);
    // Every event was delivered and the last one agrees with the VM.
    let received = drain(&events);
    assert!(!received.is_empty());
    vm.shutdown(ShutdownPolicy::Poweroff).unwrap();
    assert!(vm.state().is_stopped());
    drop(vm);
    leaks.finish();
}

#[test]
#[serial]
fn dropping_a_vm_during_an_operation_in_flight_releases_everything() {
    let leaks = LeakCheck::start();
    // A start still in flight (its wait timed out).
    let (_dir, vm) = enter(VmState::Starting);
    drop(vm);
    // A save in flight.
    let (dir, vm) = enter(VmState::Saving);
    drop(vm);
    leaks.finish();
    assert!(
        dir.entries().iter().all(|name| !name.contains(".partial-")),
        "{:?}",
        dir.entries()
    );
    // A running VM, dropped from another thread while one of its subscribers waits.
    let (_dir, vm) = enter(VmState::Running);
    let events = vm.subscribe();
    std::thread::spawn(move || drop(vm)).join().unwrap();
    // The forced stop reached the subscriber before the VM went away, and the
    // subscription ends (its sender is freed with the observer context).
    let mut states = Vec::new();
    loop {
        match events.recv_timeout(PATIENCE) {
            Ok(event) => states.push(event.state),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(timeout) => panic!("the observer context was never released: {timeout}"),
        }
    }
    assert_eq!(states.last(), Some(&VmState::Stopped), "{states:?}");
    leaks.finish();
}

#[test]
#[serial]
fn a_late_completion_after_a_timeout_is_harmless() {
    let leaks = LeakCheck::start();
    let dir = TestDir::new("late");
    let guest = SimulatedGuest {
        boot_delay: ms(300),
        ..Default::default()
    };
    let timeouts = Timeouts {
        start: ms(20),
        ..patient_timeouts()
    };
    let vm =
        VirtualMachine::new(&builder(&dir, guest).timeouts(timeouts).build().unwrap()).unwrap();
    expect_timeout(vm.start());
    // The start completes later; the VM reaches Running and nothing breaks.
    vm.wait_for_state(VmState::Running, PATIENCE).unwrap();
    vm.shutdown(ShutdownPolicy::Halt).unwrap();
    drop(vm);
    leaks.finish();
}

#[test]
#[serial]
fn a_forced_shutdown_preempts_a_graceful_wait() {
    let leaks = LeakCheck::start();
    let dir = TestDir::new("preempt");
    let guest = SimulatedGuest {
        ignores_stop_request: true,
        ..Default::default()
    };
    // The graceful wait would take a minute; Poweroff must not queue behind it.
    let timeouts = Timeouts {
        graceful_shutdown: LONG,
        ..patient_timeouts()
    };
    let vm = Arc::new(
        VirtualMachine::new(&builder(&dir, guest).timeouts(timeouts).build().unwrap()).unwrap(),
    );
    vm.start().unwrap();
    let graceful = {
        let vm = Arc::clone(&vm);
        std::thread::spawn(move || vm.shutdown(ShutdownPolicy::Powerdown))
    };
    // Either order must end the same way; a short pause makes the interesting one
    // (Poweroff while the graceful wait is under way) the likely one.
    std::thread::sleep(ms(50));
    let began = std::time::Instant::now();
    vm.shutdown(ShutdownPolicy::Poweroff).expect("forced off");
    assert!(
        began.elapsed() < Duration::from_secs(30),
        "did not wait for the graceful timeout"
    );
    assert!(
        graceful.join().unwrap().is_ok(),
        "the graceful shutdown ends with the VM off"
    );
    assert_eq!(vm.state(), VmState::Stopped);
    drop(vm);
    leaks.finish();
}

// ---------------------------------------------------------------------------------
// Found in review: timeouts, late completions and the nothing-lost rules.

#[test]
#[serial]
fn a_timeout_too_long_to_add_to_the_clock_means_no_limit_not_a_panic() {
    let leaks = LeakCheck::start();
    let dir = TestDir::new("endless");
    let forever = Timeouts {
        start: Duration::MAX,
        stop: Duration::MAX,
        pause: Duration::MAX,
        resume: Duration::MAX,
        save: Duration::MAX,
        restore: Duration::MAX,
        graceful_shutdown: Duration::MAX,
        vsock_connect: Duration::MAX,
    };
    let vm = VirtualMachine::new(
        &builder(&dir, SimulatedGuest::default())
            .timeouts(forever)
            .build()
            .unwrap(),
    )
    .unwrap();
    vm.start().expect("start");
    vm.wait_for_state(VmState::Running, Duration::MAX)
        .expect("already running");
    vm.pause().expect("pause");
    vm.suspend().expect("suspend");
    vm.start().expect("restore");
    vm.shutdown(ShutdownPolicy::Powerdown).expect("powerdown");
    assert_eq!(vm.state(), VmState::Stopped);
    drop(vm);
    leaks.finish();
}

#[test]
#[serial]
fn a_restore_that_completes_after_its_timeout_does_not_leave_a_stale_saved_state() {
    let leaks = LeakCheck::start();
    let dir = TestDir::new("late-restore");
    let vm =
        VirtualMachine::new(&builder(&dir, SimulatedGuest::default()).build().unwrap()).unwrap();
    vm.start().unwrap();
    vm.suspend().unwrap();
    let saved = dir.join("vm.state");
    vm.simulator().set_operation_delay(ms(400));
    vm.set_timeouts(Timeouts {
        restore: ms(50),
        ..patient_timeouts()
    });
    expect_timeout(vm.start());
    assert_eq!(vm.state(), VmState::Restoring);
    // The restore goes through after start() gave up: the VM is paused, restored.
    vm.wait_for_state(VmState::Paused, PATIENCE)
        .expect("the late restore completes");
    vm.simulator().set_operation_delay(Duration::ZERO);
    vm.set_timeouts(patient_timeouts());
    vm.start().expect("start resumes the restored VM");
    assert_eq!(vm.state(), VmState::Running);
    // The guest runs on from the saved state, so that state is spent: if it stayed,
    // the next stop would make the VM "suspended" and start() would roll the guest
    // back to it (against a disk that has moved on).
    assert!(
        !saved.exists(),
        "the saved state outlived the restore: {:?}",
        dir.entries()
    );
    vm.shutdown(ShutdownPolicy::Poweroff).unwrap();
    assert_eq!(vm.state(), VmState::Stopped, "stopped, not suspended again");
    drop(vm);
    leaks.finish();
}

#[test]
#[serial]
fn suspend_whose_save_times_out_resumes_the_running_vm_once_the_save_ends() {
    let leaks = LeakCheck::start();
    let dir = TestDir::new("save-timeout");
    let vm =
        VirtualMachine::new(&builder(&dir, SimulatedGuest::default()).build().unwrap()).unwrap();
    vm.start().unwrap();
    vm.simulator().set_operation_delay(ms(400));
    vm.set_timeouts(Timeouts {
        save: ms(50),
        ..patient_timeouts()
    });
    expect_timeout(vm.suspend());
    vm.simulator().set_operation_delay(Duration::ZERO);
    // "On any failure the VM is resumed if it was running."
    vm.wait_for_state(VmState::Running, PATIENCE)
        .expect("the VM was running before the failed suspend");
    assert!(
        dir.entries().iter().all(|name| !name.contains(".partial-")),
        "{:?}",
        dir.entries()
    );
    drop(vm);
    leaks.finish();
}

#[test]
#[serial]
fn suspend_whose_stop_is_slow_keeps_the_saved_guest() {
    let leaks = LeakCheck::start();
    let dir = TestDir::new("slow-stop");
    let guest = SimulatedGuest {
        stop_delay: ms(300),
        ..Default::default()
    };
    let vm = VirtualMachine::new(
        &builder(&dir, guest)
            .timeouts(Timeouts {
                stop: ms(200),
                ..patient_timeouts()
            })
            .build()
            .unwrap(),
    )
    .unwrap();
    vm.start().unwrap();
    // The save succeeds, then the forced stop takes longer than its timeout. The stop
    // cannot be taken back: whatever suspend() reports, the guest must not be lost.
    let _ = vm.suspend();
    vm.wait_for_state(VmState::Suspended, PATIENCE)
        .unwrap_or_else(|error| {
            panic!(
                "the guest was stopped and its saved state lost: {error}; files: {:?}",
                dir.entries()
            )
        });
    vm.set_timeouts(patient_timeouts());
    vm.start().expect("the VM resumes from the saved state");
    assert_eq!(vm.state(), VmState::Running);
    drop(vm);
    leaks.finish();
}
