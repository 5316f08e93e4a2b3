//! The Rust side against the simulator's second round of fidelity rules (rows 16, 17
//! and 19-21 of `shim/sim/README.md`): restores into a configuration that cannot be
//! saved, devices that make a VM unsuspendable, completions that never come or are
//! dropped, late state notifications, a network attachment failing while the VM
//! starts, and a vsock connect nobody answers. Each path ends within its bound, with a
//! typed error, nothing lost and nothing leaked.
#![cfg(applevz_simulator)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use applevz::sim::{SimOperation, SimulatedGuest, UnlistenedVsockPort};
use applevz::{
    DirectoryShare, Error, EventKind, Operation, ShutdownPolicy, VirtualMachine, VmState,
    VzErrorCode,
};
use common::{LeakCheck, PATIENCE, TestDir, builder, events_until, ms};
use serial_test::serial;

/// The machine identity the configuration persists next to the saved state.
const IDENTITY: &str = "vm.state.machine-identifier";

/// The shim's description of a completion handler the framework released uncalled.
const DROPPED: &str = "the framework dropped the operation without completing it";

/// Makes a saved state at `dir`'s saved-state path with a default guest and returns its
/// bytes.
fn saved_state_in(dir: &TestDir) -> Vec<u8> {
    let vm =
        VirtualMachine::new(&builder(dir, SimulatedGuest::default()).build().unwrap()).unwrap();
    vm.start().unwrap();
    vm.suspend().unwrap();
    drop(vm);
    std::fs::read(dir.join("vm.state")).expect("the saved state")
}

/// Rule 19: restore needs a configuration that can be saved. The start fails with the
/// framework's restore error, the VM stays suspended, and the saved state is kept byte
/// for byte: a VM whose configuration can be saved still restores it afterwards.
#[test]
#[serial]
fn a_restore_into_a_configuration_that_cannot_be_saved_keeps_the_saved_state() {
    let leaks = LeakCheck::start();
    let dir = TestDir::new("restore-unsavable");
    let saved = saved_state_in(&dir);
    let unsavable = SimulatedGuest {
        not_savable: true,
        ..Default::default()
    };
    let vm = VirtualMachine::new(&builder(&dir, unsavable).build().unwrap()).unwrap();
    assert_eq!(vm.state(), VmState::Suspended);
    match vm
        .start()
        .expect_err("the configuration cannot be restored into")
    {
        Error::RestoreFailed { path, source } => {
            assert_eq!(path, dir.join("vm.state"));
            assert_eq!(source.code, VzErrorCode::Restore, "{source:?}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(vm.state(), VmState::Suspended);
    assert_eq!(vm.saved_state_file(), Some(dir.join("vm.state")));
    assert_eq!(
        std::fs::read(dir.join("vm.state")).unwrap(),
        saved,
        "byte for byte"
    );
    // Still refused on a second try (a fresh native VM each time), still kept.
    assert!(matches!(vm.start(), Err(Error::RestoreFailed { .. })));
    assert_eq!(std::fs::read(dir.join("vm.state")).unwrap(), saved);
    drop(vm);

    let vm =
        VirtualMachine::new(&builder(&dir, SimulatedGuest::default()).build().unwrap()).unwrap();
    vm.start().expect("a savable configuration restores it");
    assert_eq!(vm.state(), VmState::Running);
    assert!(!dir.join("vm.state").exists(), "spent once the guest runs");
    drop(vm);
    leaks.finish();
}

/// Rule 19: a directory share makes the configuration unsavable on its own (no knob):
/// suspend refuses up front and the VM keeps running, nothing written.
#[test]
#[serial]
fn a_directory_share_makes_a_vm_unsuspendable_and_it_keeps_running() {
    let leaks = LeakCheck::start();
    let dir = TestDir::new("share-unsavable");
    std::fs::create_dir_all(dir.join("shared")).unwrap();
    let config = builder(&dir, SimulatedGuest::default())
        .directory_share(DirectoryShare::single("data", dir.join("shared"), true))
        .build()
        .unwrap();
    let vm = VirtualMachine::new(&config).unwrap();
    vm.start().unwrap();
    match vm.suspend().expect_err("a directory share cannot be saved") {
        Error::SuspendNotSupported { source } => {
            assert!(
                source.description.contains("directory sharing device"),
                "{source:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(vm.state(), VmState::Running);
    assert!(!dir.join("vm.state").exists());
    drop(vm);
    leaks.finish();
}

/// Rule 20: a start whose completion never comes returns a timeout within its bound;
/// the VM is running (its events came) and usable; dropping it frees everything (the
/// completion is released with the native VM).
#[test]
#[serial]
fn a_start_whose_completion_never_comes_times_out_and_the_vm_stays_usable() {
    let leaks = LeakCheck::start();
    let dir = TestDir::new("withheld-start");
    let vm =
        VirtualMachine::new(&builder(&dir, SimulatedGuest::default()).build().unwrap()).unwrap();
    let timeout = ms(400);
    vm.set_timeouts(applevz::Timeouts {
        start: timeout,
        ..vm.timeouts()
    });
    vm.simulator().withhold_next_completion(SimOperation::Start);
    let began = Instant::now();
    match vm.start().expect_err("the completion never comes") {
        Error::Timeout {
            operation: Operation::Start,
            timeout: waited,
            ..
        } => assert_eq!(waited, timeout),
        other => panic!("{other:?}"),
    }
    let took = began.elapsed();
    assert!(took >= timeout && took < PATIENCE, "{took:?}");
    assert_eq!(vm.state(), VmState::Running);
    vm.pause().unwrap();
    vm.resume().unwrap();
    vm.shutdown(ShutdownPolicy::Halt).unwrap();
    assert_eq!(vm.state(), VmState::Stopped);
    drop(vm);
    leaks.finish();
}

/// Rule 20: a suspend whose save never completes gives up after the save timeout,
/// removes what the save wrote and resumes the guest; nothing is left on disk.
#[test]
#[serial]
fn a_suspend_whose_save_never_completes_resumes_the_vm_and_leaves_no_file() {
    let leaks = LeakCheck::start();
    let dir = TestDir::new("withheld-save");
    let vm = Arc::new(
        VirtualMachine::new(&builder(&dir, SimulatedGuest::default()).build().unwrap()).unwrap(),
    );
    vm.set_timeouts(applevz::Timeouts {
        save: ms(400),
        ..vm.timeouts()
    });
    vm.start().unwrap();
    vm.simulator().withhold_next_completion(SimOperation::Save);
    match vm.suspend().expect_err("the save never completes") {
        Error::Timeout {
            operation: Operation::Suspend,
            ..
        } => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(vm.state(), VmState::Running, "resumed");
    assert_eq!(vm.saved_state_file(), None);
    assert_eq!(dir.entries(), vec![IDENTITY, "vmlinuz"]);
    // The VM suspends normally afterwards.
    vm.suspend().unwrap();
    assert_eq!(vm.state(), VmState::Suspended);
    drop(vm);
    leaks.finish();
}

/// Rule 20: a completion the framework drops reports the shim's error (code 1) after
/// the state changes; the VM reports where it is and stays usable.
#[test]
#[serial]
fn a_dropped_completion_reports_the_shims_error_and_the_vm_stays_usable() {
    let leaks = LeakCheck::start();
    let dir = TestDir::new("dropped");
    let vm =
        VirtualMachine::new(&builder(&dir, SimulatedGuest::default()).build().unwrap()).unwrap();
    vm.simulator().drop_next_completion(SimOperation::Start);
    let error = vm.start().expect_err("dropped");
    assert_eq!(error.vz_code(), Some(VzErrorCode::Internal), "{error:?}");
    assert!(
        error.full_message().contains(DROPPED),
        "{}",
        error.full_message()
    );
    assert_eq!(vm.state(), VmState::Running, "the start itself happened");
    vm.simulator().drop_next_completion(SimOperation::Pause);
    let error = vm.pause().expect_err("dropped");
    assert_eq!(error.vz_code(), Some(VzErrorCode::Internal), "{error:?}");
    assert_eq!(vm.state(), VmState::Paused);
    vm.resume().unwrap();
    vm.shutdown(ShutdownPolicy::Halt).unwrap();
    drop(vm);
    leaks.finish();
}

/// Rule 21: a late state notification delays the operation by at most the shim's
/// 2 s hold; a timeout shorter than the delay ends the wait, and the VM is where the
/// notification says once it comes.
#[test]
#[serial]
fn a_late_state_notification_ends_within_the_shims_hold_or_the_timeout() {
    let leaks = LeakCheck::start();
    let dir = TestDir::new("late-notification");
    let vm =
        VirtualMachine::new(&builder(&dir, SimulatedGuest::default()).build().unwrap()).unwrap();
    let events = vm.subscribe();
    vm.start().unwrap();
    // Later than the hold: the shim lets it through at 2 s.
    vm.simulator()
        .delay_next_notification(Duration::from_secs(60));
    let began = Instant::now();
    vm.pause().unwrap();
    let took = began.elapsed();
    assert!(took >= ms(2000) && took < PATIENCE, "{took:?}");
    assert_eq!(vm.state(), VmState::Paused);
    let states: Vec<_> = events_until(&events, |e| e.state == VmState::Paused)
        .iter()
        .map(|e| e.state)
        .collect();
    assert_eq!(
        states,
        vec![
            VmState::Starting,
            VmState::Running,
            VmState::Pausing,
            VmState::Paused
        ]
    );
    // Longer than the resume timeout: a timeout, then the VM catches up.
    vm.set_timeouts(applevz::Timeouts {
        resume: ms(300),
        ..vm.timeouts()
    });
    vm.simulator().delay_next_notification(ms(1200));
    match vm
        .resume()
        .expect_err("the notification is later than the timeout")
    {
        Error::Timeout {
            operation: Operation::Resume,
            ..
        } => {}
        other => panic!("{other:?}"),
    }
    vm.wait_for_state(VmState::Running, PATIENCE).unwrap();
    vm.shutdown(ShutdownPolicy::Halt).unwrap();
    drop(vm);
    leaks.finish();
}

/// Rule 16: an attachment that fails while the VM starts reaches subscribers during
/// starting, and the start still succeeds.
#[test]
#[serial]
fn a_network_attachment_failing_while_the_vm_starts_is_reported() {
    let leaks = LeakCheck::start();
    let dir = TestDir::new("net-starting");
    let guest = SimulatedGuest {
        boot_delay: ms(300),
        ..Default::default()
    };
    let config = builder(&dir, guest)
        .nat_network(Some("52:54:00:12:34:56"))
        .build()
        .unwrap();
    let vm = Arc::new(VirtualMachine::new(&config).unwrap());
    let events = vm.subscribe();
    let starting = {
        let vm = Arc::clone(&vm);
        std::thread::spawn(move || vm.start())
    };
    vm.wait_for_state(VmState::Starting, PATIENCE).unwrap();
    vm.simulator().network_disconnect(0, 5);
    starting.join().unwrap().unwrap();
    let received = events_until(&events, |e| e.state == VmState::Running);
    let kinds: Vec<_> = received
        .iter()
        .map(|e| (e.state, matches!(e.kind, EventKind::NetworkDisconnected(_))))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (VmState::Starting, false),
            (VmState::Starting, true),
            (VmState::Running, false)
        ]
    );
    drop(vm);
    leaks.finish();
}

/// Rule 17: a connect to a port nobody listens on fails with the observed POSIX error
/// by default, and with the documented "does nothing" ends with the connect timeout;
/// the VM stays usable and the held handler is freed with it.
#[test]
#[serial]
fn a_vsock_connect_nobody_answers_ends_with_its_timeout() {
    let leaks = LeakCheck::start();
    let dir = TestDir::new("vsock-unanswered");
    let guest = SimulatedGuest {
        unlistened_vsock_port: UnlistenedVsockPort::NoAnswer,
        guest_vsock_ports: vec![22],
        ..Default::default()
    };
    let vm = VirtualMachine::new(&builder(&dir, guest).vsock(true).build().unwrap()).unwrap();
    vm.set_timeouts(applevz::Timeouts {
        vsock_connect: ms(300),
        ..vm.timeouts()
    });
    vm.start().unwrap();
    let began = Instant::now();
    match vm.vsock_connect(9).expect_err("nobody answers") {
        Error::Timeout { timeout, .. } => assert_eq!(timeout, ms(300)),
        other => panic!("{other:?}"),
    }
    assert!(began.elapsed() < PATIENCE);
    assert_eq!(vm.state(), VmState::Running);
    vm.vsock_connect(22)
        .expect("a listening port still answers");
    drop(vm);
    leaks.finish();
}

/// Rule 20: a restore whose completion never comes: `start()` gives up after the
/// restore timeout and says so; the guest was restored (paused) meanwhile, and the
/// next `start()` resumes it and spends the saved state.
#[test]
#[serial]
fn a_restore_whose_completion_never_comes_times_out_and_the_next_start_resumes() {
    let leaks = LeakCheck::start();
    let dir = TestDir::new("withheld-restore");
    saved_state_in(&dir);
    let vm =
        VirtualMachine::new(&builder(&dir, SimulatedGuest::default()).build().unwrap()).unwrap();
    vm.set_timeouts(applevz::Timeouts {
        restore: ms(400),
        ..vm.timeouts()
    });
    vm.simulator()
        .withhold_next_completion(SimOperation::Restore);
    match vm.start().expect_err("the restore never completes") {
        Error::Timeout {
            operation: Operation::Restore,
            ..
        } => {}
        other => panic!("{other:?}"),
    }
    vm.wait_for_state(VmState::Paused, PATIENCE).unwrap();
    assert!(dir.join("vm.state").exists(), "kept until the guest runs");
    vm.start().unwrap();
    assert_eq!(vm.state(), VmState::Running);
    assert!(!dir.join("vm.state").exists(), "spent once the guest runs");
    drop(vm);
    leaks.finish();
}

/// Rule 20: a forced shutdown whose stop completion never comes: the guest is gone (the
/// framework reported it stopped), which is what was asked.
#[test]
#[serial]
fn a_shutdown_whose_stop_completion_never_comes_reports_where_the_vm_is() {
    let leaks = LeakCheck::start();
    let dir = TestDir::new("withheld-stop");
    let vm =
        VirtualMachine::new(&builder(&dir, SimulatedGuest::default()).build().unwrap()).unwrap();
    vm.set_timeouts(applevz::Timeouts {
        stop: ms(400),
        ..vm.timeouts()
    });
    vm.start().unwrap();
    vm.simulator().withhold_next_completion(SimOperation::Stop);
    let began = Instant::now();
    let outcome = vm.shutdown(ShutdownPolicy::Halt);
    assert!(began.elapsed() < PATIENCE);
    assert_eq!(vm.state(), VmState::Stopped, "{outcome:?}");
    outcome.expect("the VM is stopped: what was asked");
    vm.start().unwrap();
    drop(vm);
    leaks.finish();
}
