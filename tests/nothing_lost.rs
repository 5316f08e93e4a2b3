//! Nothing lost under concurrency: the reproductions of issue 8, each racing two
//! threads (or the VM and the file system) through the public API and the simulator.
//! Each failed on the lifecycle that let a forced stop cancel the operation in flight
//! and re-read the saved state from the file system on every `state()`.
#![cfg(applevz_simulator)]

mod common;

use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use applevz::sim::{SimOperation, SimulatedGuest};
use applevz::{
    Error, EventKind, OnGracefulTimeout, Operation, ShutdownPolicy, Timeouts, VirtualMachine,
    VmState,
};
use common::{
    LeakCheck, PATIENCE, TestDir, builder, events_until, ms, patient_timeouts, wait_for_line,
};
use serial_test::serial;

const IDENTITY: &str = "vm.state.machine-identifier";
/// How long the slow operation under test takes.
const SLOW: Duration = Duration::from_millis(1500);

fn spawn(
    vm: &Arc<VirtualMachine>,
    f: fn(&VirtualMachine) -> applevz::Result<()>,
) -> JoinHandle<applevz::Result<()>> {
    let vm = Arc::clone(vm);
    thread::spawn(move || f(&vm))
}

fn no_partial_files(dir: &TestDir) {
    assert!(
        dir.entries().iter().all(|name| !name.contains(".partial-")),
        "leftover temporary file: {:?}",
        dir.entries()
    );
}

/// A running VM whose saved-state file holds an earlier state of this guest, tracked by
/// the VM: a suspend whose stop failed put it in place and left the VM paused.
fn paused_with_an_earlier_saved_state(dir: &TestDir) -> Arc<VirtualMachine> {
    let vm =
        VirtualMachine::new(&builder(dir, SimulatedGuest::default()).build().unwrap()).unwrap();
    vm.start().unwrap();
    vm.simulator().fail_next(SimOperation::Stop, 1);
    vm.suspend().expect_err("the stop fails");
    assert_eq!(vm.state(), VmState::Paused);
    assert!(dir.join("vm.state").exists());
    Arc::new(vm)
}

/// Reproduction 1: an earlier saved state survives a Poweroff racing a suspend,
/// whether the suspend succeeds or fails.
#[test]
#[serial]
fn poweroff_during_a_suspend_never_deletes_a_saved_state() {
    let leaks = LeakCheck::start();
    for save_fails in [false, true] {
        let dir = TestDir::new("race-suspend");
        let vm = paused_with_an_earlier_saved_state(&dir);
        let earlier = std::fs::read(dir.join("vm.state")).unwrap();
        vm.simulator().set_operation_delay(SLOW);
        if save_fails {
            vm.simulator().fail_next(SimOperation::Save, 11);
        }
        let suspend = spawn(&vm, applevz::VirtualMachine::suspend);
        vm.wait_for_state(VmState::Saving, PATIENCE).unwrap();
        vm.shutdown(ShutdownPolicy::Poweroff)
            .expect("Poweroff waits for the suspend, then acts");
        let suspended = suspend.join().unwrap();
        assert_eq!(suspended.is_err(), save_fails, "{suspended:?}");
        // Either way the VM is stopped with a saved state of its guest: suspended.
        assert_eq!(vm.state(), VmState::Suspended, "save fails: {save_fails}");
        let now = std::fs::read(dir.join("vm.state")).expect("a saved state is kept");
        if save_fails {
            assert_eq!(now, earlier, "the earlier saved state is untouched");
        }
        no_partial_files(&dir);
        drop(vm);
    }

    // A file this VM did not write is never touched: the suspend refuses at once.
    let dir = TestDir::new("race-suspend-foreign");
    let vm = Arc::new(
        VirtualMachine::new(&builder(&dir, SimulatedGuest::default()).build().unwrap()).unwrap(),
    );
    vm.start().unwrap();
    dir.file("vm.state", b"an earlier saved state");
    assert!(matches!(vm.suspend(), Err(Error::SavedStateChanged { .. })));
    assert_eq!(vm.state(), VmState::Running, "the suspend did not begin");
    vm.shutdown(ShutdownPolicy::Poweroff).unwrap();
    assert_eq!(
        std::fs::read(dir.join("vm.state")).unwrap(),
        b"an earlier saved state"
    );
    assert_eq!(vm.state(), VmState::Stopped, "never adopted");
    drop(vm);
    leaks.finish();
}

/// Reproduction 2: a Poweroff racing a restore waits for it; a failed restore keeps
/// the file, exactly as its error says.
#[test]
#[serial]
fn poweroff_during_a_restore_keeps_the_saved_state() {
    let leaks = LeakCheck::start();
    let dir = TestDir::new("race-restore");
    let vm = Arc::new(
        VirtualMachine::new(&builder(&dir, SimulatedGuest::default()).build().unwrap()).unwrap(),
    );
    vm.start().unwrap();
    vm.suspend().unwrap();
    let saved = std::fs::read(dir.join("vm.state")).unwrap();
    vm.simulator().set_operation_delay(SLOW);
    vm.simulator().fail_next(SimOperation::Restore, 12);
    let start = spawn(&vm, applevz::VirtualMachine::start);
    vm.wait_for_state(VmState::Restoring, PATIENCE).unwrap();
    vm.shutdown(ShutdownPolicy::Poweroff).unwrap();
    let error = start.join().unwrap().expect_err("the restore fails");
    assert!(matches!(error, Error::RestoreFailed { .. }), "{error:?}");
    assert!(error.to_string().contains("the file is kept"), "{error}");
    assert_eq!(std::fs::read(dir.join("vm.state")).unwrap(), saved, "kept");
    assert_eq!(vm.state(), VmState::Suspended);

    // A restore that succeeds runs the guest, which spends the file; then the
    // Poweroff forces it off.
    vm.simulator().set_operation_delay(SLOW);
    let start = spawn(&vm, applevz::VirtualMachine::start);
    vm.wait_for_state(VmState::Restoring, PATIENCE).unwrap();
    vm.shutdown(ShutdownPolicy::Poweroff).unwrap();
    start.join().unwrap().expect("the restore is not cancelled");
    assert_eq!(vm.state(), VmState::Stopped);
    assert_eq!(dir.entries(), vec![IDENTITY, "vmlinuz"]);
    drop(vm);
    leaks.finish();
}

/// Reproduction 3: subscribers of a suspending VM never see it stopped, and neither
/// does `state()`.
#[test]
#[serial]
fn a_suspend_ends_in_suspended_without_a_bare_stopped() {
    use VmState::*;
    let leaks = LeakCheck::start();
    let dir = TestDir::new("suspend-events");
    let guest = SimulatedGuest {
        stop_delay: ms(200),
        ..Default::default()
    };
    let vm = Arc::new(VirtualMachine::new(&builder(&dir, guest).build().unwrap()).unwrap());
    vm.start().unwrap();
    let events = vm.subscribe();
    // A second thread reads state() for as long as the suspend runs.
    let watcher = {
        let vm = Arc::clone(&vm);
        thread::spawn(move || {
            let mut seen = Vec::new();
            while seen.last() != Some(&VmState::Suspended) {
                let state = vm.state();
                if seen.last() != Some(&state) {
                    seen.push(state);
                }
                thread::yield_now();
            }
            seen
        })
    };
    vm.suspend().unwrap();
    let received = events_until(&events, |e| e.kind == EventKind::Suspended);
    let states: Vec<_> = received.iter().map(|e| e.state).collect();
    assert_eq!(
        states,
        vec![Pausing, Paused, Saving, Paused, Stopping, Suspended],
        "{received:?}"
    );
    let seen = watcher.join().unwrap();
    assert!(!seen.contains(&Stopped), "state() said stopped: {seen:?}");
    drop(vm);
    leaks.finish();
}

/// Reproduction 4: when the final rename fails, the VM restores from the newest state
/// (where the error says it is), never from an older file.
#[test]
#[serial]
fn a_failed_rename_restores_from_the_newest_state() {
    let leaks = LeakCheck::start();
    let dir = TestDir::new("rename-fails");
    let vm = Arc::new(
        VirtualMachine::new(&builder(&dir, SimulatedGuest::default()).build().unwrap()).unwrap(),
    );
    vm.start().unwrap();
    vm.simulator().set_operation_delay(SLOW);
    let suspend = spawn(&vm, applevz::VirtualMachine::suspend);
    vm.wait_for_state(VmState::Saving, PATIENCE).unwrap();
    // A directory at the target makes the rename fail.
    std::fs::create_dir(dir.join("vm.state")).unwrap();
    std::fs::write(dir.join("vm.state").join("keep"), b"x").unwrap();
    let error = suspend.join().unwrap().expect_err("the rename fails");
    let kept = vm.saved_state_file().expect("a saved state is tracked");
    assert!(kept.to_string_lossy().contains(".partial-"), "{kept:?}");
    assert!(kept.exists());
    assert!(
        error.to_string().contains(&kept.display().to_string()),
        "the error names where the guest is: {error}"
    );
    assert_eq!(vm.state(), VmState::Suspended);
    // start() restores that file, then spends it.
    vm.simulator().set_operation_delay(Duration::ZERO);
    vm.start().unwrap();
    assert_eq!(vm.state(), VmState::Running);
    assert!(!kept.exists(), "spent");
    vm.shutdown(ShutdownPolicy::Poweroff).unwrap();
    drop(vm);
    leaks.finish();
}

/// Reproduction 5, under the one rule: every policy waits for the operation in flight
/// to settle (never cancelling it), then acts on the state it settled in.
#[test]
#[serial]
fn shutdowns_during_an_operation_in_flight_follow_the_table() {
    type Op = fn(&VirtualMachine) -> applevz::Result<()>;
    let leaks = LeakCheck::start();
    let cases: [(&str, VmState, Op); 4] = [
        ("start", VmState::Starting, |vm| vm.start()),
        ("pause", VmState::Pausing, |vm| vm.pause()),
        ("resume", VmState::Resuming, |vm| vm.resume()),
        ("suspend", VmState::Saving, |vm| vm.suspend()),
    ];
    for (name, transitional, operation) in cases {
        for policy in [
            ShutdownPolicy::Powerdown,
            ShutdownPolicy::Halt,
            ShutdownPolicy::Poweroff,
        ] {
            let dir = TestDir::new(name);
            let guest = SimulatedGuest {
                boot_delay: if name == "start" {
                    SLOW
                } else {
                    Duration::ZERO
                },
                ..Default::default()
            };
            let vm = Arc::new(VirtualMachine::new(&builder(&dir, guest).build().unwrap()).unwrap());
            if name != "start" {
                vm.start().unwrap();
            }
            if name == "resume" || name == "suspend" {
                vm.pause().unwrap();
            }
            vm.simulator().set_operation_delay(SLOW);
            let in_flight = spawn(&vm, operation);
            vm.wait_for_state(transitional, PATIENCE).unwrap();
            vm.simulator().set_operation_delay(Duration::ZERO);
            let outcome = vm.shutdown(policy);
            in_flight
                .join()
                .unwrap()
                .unwrap_or_else(|error| panic!("{name} was not cancelled: {error}"));
            let what = format!("{policy} during {name}");
            if name == "suspend" {
                // It settled suspended: Powerdown is refused there, Halt does nothing,
                // and a Poweroff that did not find it suspended keeps the file.
                if policy == ShutdownPolicy::Powerdown {
                    assert!(
                        matches!(
                            outcome,
                            Err(Error::InvalidState {
                                state: VmState::Suspended,
                                ..
                            })
                        ),
                        "{what}: {outcome:?}"
                    );
                } else {
                    outcome.unwrap_or_else(|error| panic!("{what}: {error}"));
                }
                assert_eq!(vm.state(), VmState::Suspended, "{what}");
                assert!(dir.join("vm.state").exists(), "{what}: saved state kept");
            } else {
                outcome.unwrap_or_else(|error| panic!("{what}: {error}"));
                assert_eq!(vm.state(), VmState::Stopped, "{what}");
            }
            no_partial_files(&dir);
            drop(vm);
        }
    }
    leaks.finish();
}

/// Reproduction 6: forced shutdowns are counted: with two of them waiting behind a
/// graceful one, neither waits out the graceful timeout; a second Powerdown waits its
/// turn behind the first and finds the VM stopped.
#[test]
#[serial]
fn every_forced_shutdown_cuts_a_graceful_wait_short() {
    let leaks = LeakCheck::start();
    let dir = TestDir::new("forced-count");
    let guest = SimulatedGuest {
        ignores_stop_request: true,
        ..Default::default()
    };
    let graceful = Duration::from_secs(30);
    let config = builder(&dir, guest)
        .timeouts(Timeouts {
            graceful_shutdown: graceful,
            ..patient_timeouts()
        })
        .on_graceful_timeout(OnGracefulTimeout::Fail)
        .build()
        .unwrap();
    let vm = Arc::new(VirtualMachine::new(&config).unwrap());
    vm.start().unwrap();
    let began = Instant::now();
    let powerdown = Operation::Shutdown(ShutdownPolicy::Powerdown);
    let first = spawn(&vm, |vm| vm.shutdown(ShutdownPolicy::Powerdown));
    wait_for_line(&vm, Some(powerdown), &[]);
    let second = spawn(&vm, |vm| vm.shutdown(ShutdownPolicy::Powerdown));
    wait_for_line(&vm, Some(powerdown), &[powerdown]);
    let halt = spawn(&vm, |vm| vm.shutdown(ShutdownPolicy::Halt));
    let poweroff = spawn(&vm, |vm| vm.shutdown(ShutdownPolicy::Poweroff));
    for (name, call) in [
        ("first", first),
        ("second", second),
        ("halt", halt),
        ("poweroff", poweroff),
    ] {
        call.join()
            .unwrap()
            .unwrap_or_else(|error| panic!("{name}: {error}"));
    }
    assert!(began.elapsed() < graceful / 2, "{:?}", began.elapsed());
    assert_eq!(vm.state(), VmState::Stopped);
    drop(vm);
    leaks.finish();
}

/// The VM tracks its saved state: a file appearing or vanishing behind its back is
/// reported, never silently adopted or forgotten; two VMs on one path do not see each
/// other's files.
#[test]
#[serial]
fn the_saved_state_is_tracked_not_re_read() {
    let leaks = LeakCheck::start();
    let dir = TestDir::new("tracked");
    let config = builder(&dir, SimulatedGuest::default()).build().unwrap();
    let first = VirtualMachine::new(&config).unwrap();
    let second = VirtualMachine::new(&config).unwrap();
    first.start().unwrap();
    first.suspend().unwrap();
    assert_eq!(first.state(), VmState::Suspended);
    assert_eq!(second.state(), VmState::Stopped, "not the other VM's file");
    let error = second.start().expect_err("a file it did not write");
    assert!(
        matches!(error, Error::SavedStateChanged { .. }),
        "{error:?}"
    );
    assert!(dir.join("vm.state").exists(), "left alone");
    drop(second);

    // The file vanishes: the VM still says suspended, and start() says what happened.
    let saved = std::fs::read(dir.join("vm.state")).unwrap();
    std::fs::remove_file(dir.join("vm.state")).unwrap();
    assert_eq!(first.state(), VmState::Suspended);
    let error = first.start().expect_err("vanished");
    assert!(error.to_string().contains("vanished"), "{error}");
    // It comes back: start() restores it.
    std::fs::write(dir.join("vm.state"), &saved).unwrap();
    first.start().unwrap();
    assert_eq!(first.state(), VmState::Running);
    assert!(!dir.join("vm.state").exists());
    drop(first);
    leaks.finish();
}

/// The permission bits of `path`.
fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Guest memory (the saved state, also while it is being written), the machine
/// identity, the EFI variable store and the serial log are the owner's only, whatever
/// the umask: none of them is created readable by others.
#[test]
#[serial]
fn files_holding_the_guest_are_owner_only_whatever_the_umask() {
    // SAFETY: umask only changes the process's file-creation mask.
    let previous = unsafe { libc::umask(0o022) };
    let leaks = LeakCheck::start();
    let dir = TestDir::new("owner-only");
    let vm = Arc::new(
        VirtualMachine::new(
            &builder(&dir, SimulatedGuest::default())
                .serial_port(applevz::SerialPort::File {
                    path: dir.join("console.log"),
                    append: true,
                })
                .build()
                .unwrap(),
        )
        .unwrap(),
    );
    assert_eq!(
        format!("{:o}", mode(&dir.join("console.log"))),
        "600",
        "serial log"
    );
    assert_eq!(
        format!("{:o}", mode(&dir.join(IDENTITY))),
        "600",
        "machine identifier"
    );
    vm.start().unwrap();
    vm.simulator().set_operation_delay(SLOW);
    let suspend = spawn(&vm, VirtualMachine::suspend);
    vm.wait_for_state(VmState::Saving, PATIENCE).unwrap();
    // While the guest's memory is written, nobody else can read it: the file (or the
    // directory it is written in) is the owner's only.
    let partial = dir
        .entries()
        .into_iter()
        .find(|name| name.contains(".partial-"))
        .expect("the saved state being written");
    let partial = dir.join(&partial);
    let readable_by_others = if partial.is_dir() {
        mode(&partial) & 0o077 != 0
            && std::fs::read_dir(&partial)
                .unwrap()
                .any(|entry| mode(&entry.unwrap().path()) & 0o077 != 0)
    } else {
        mode(&partial) & 0o077 != 0
    };
    assert!(
        !readable_by_others,
        "{} is open to others while the guest is saved",
        partial.display()
    );
    suspend.join().unwrap().unwrap();
    assert_eq!(
        format!("{:o}", mode(&dir.join("vm.state"))),
        "600",
        "saved state"
    );
    no_partial_files(&dir);
    drop(vm);

    let store = dir.join("efi-vars");
    let kernel_less = applevz::VmConfig::builder()
        .cpu_count(1)
        .memory_mib(256)
        .efi_boot_loader(&store, applevz::EfiVariableStore::OpenOrCreate)
        .build()
        .unwrap();
    drop(VirtualMachine::new(&kernel_less).unwrap());
    assert_eq!(format!("{:o}", mode(&store)), "600", "EFI variable store");
    // SAFETY: as above.
    unsafe { libc::umask(previous) };
    leaks.finish();
}

/// What a suspend cut short by the end of its process leaves is listed, never
/// adopted or deleted; a suspend under way in this process is not listed.
#[test]
#[serial]
fn interrupted_suspends_are_listed() {
    let dir = TestDir::new("interrupted");
    let target = dir.join("vm.state");
    assert!(applevz::interrupted_suspends(&target).unwrap().is_empty());
    let complete = dir.join(".vm.state.partial-999999-0");
    std::fs::create_dir(&complete).unwrap();
    std::fs::write(complete.join("vm.state"), b"guest").unwrap();
    let empty = dir.join(".vm.state.partial-999999-1");
    std::fs::create_dir(&empty).unwrap();
    let older = dir.file(".vm.state.partial-999998-0", b"guest");
    let ours = dir.join(&format!(".vm.state.partial-{}-0", std::process::id()));
    std::fs::create_dir(&ours).unwrap();
    dir.file("unrelated", b"x");
    dir.file(".other.state.partial-1-0", b"another VM's");
    assert_eq!(
        applevz::interrupted_suspends(&target).unwrap(),
        vec![older, complete.join("vm.state"), empty]
    );
    assert!(complete.join("vm.state").exists(), "nothing deleted");
}
