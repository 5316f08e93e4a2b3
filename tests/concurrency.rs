//! Concurrent callers of one VM: the races a multi-threaded VM manager meets (issue 15,
//! items 1, 2 and 4), each ordered without sleeping (`wait_for_line` polls the VM's
//! line of operations with a deadline).
#![cfg(applevz_simulator)]

mod common;

use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use applevz::sim::SimulatedGuest;
use applevz::{Error, Operation, ShutdownPolicy, StateEvent, VirtualMachine, VmState};
use common::{LeakCheck, PATIENCE, TestDir, builder, wait_for_line};
use serial_test::serial;

/// A forced Poweroff queued behind a slow pause is served before a suspend queued
/// after it: the strongest stop never loses to a later, weaker request.
#[test]
#[serial]
fn a_forced_poweroff_is_not_overtaken_by_a_later_suspend() {
    let leaks = LeakCheck::start();
    for _ in 0..5 {
        let dir = TestDir::new("poweroff-first");
        let vm = Arc::new(
            VirtualMachine::new(&builder(&dir, SimulatedGuest::default()).build().unwrap())
                .unwrap(),
        );
        vm.start().unwrap();
        vm.simulator()
            .set_operation_delay(Duration::from_millis(300));
        let pause = spawn(&vm, VirtualMachine::pause);
        wait_for_line(&vm, Some(Operation::Pause), &[]);
        let poweroff = spawn(&vm, |vm| vm.shutdown(ShutdownPolicy::Poweroff));
        let forced = Operation::Shutdown(ShutdownPolicy::Poweroff);
        wait_for_line(&vm, Some(Operation::Pause), &[forced]);
        let suspend = spawn(&vm, VirtualMachine::suspend);
        wait_for_line(&vm, Some(Operation::Pause), &[forced, Operation::Suspend]);
        vm.simulator().set_operation_delay(Duration::ZERO);
        pause.join().unwrap().expect("the pause in flight");
        poweroff
            .join()
            .unwrap()
            .expect("the Poweroff, next in line");
        let suspended = suspend.join().unwrap();
        assert!(
            matches!(
                suspended,
                Err(Error::InvalidState {
                    state: VmState::Stopped,
                    ..
                })
            ),
            "the suspend came after the Poweroff: {suspended:?}"
        );
        assert_eq!(vm.state(), VmState::Stopped);
        assert!(!dir.join("vm.state").exists());
        drop(vm);
    }
    leaks.finish();
}

/// Listeners added while a suspend swaps in a fresh native VM object all hear the
/// guest after the restore: none is left on the old object.
#[test]
#[serial]
fn vsock_listeners_added_during_a_suspend_survive_the_restore() {
    let leaks = LeakCheck::start();
    for round in 0..5_u32 {
        let dir = TestDir::new("vsock-swap");
        let config = builder(&dir, SimulatedGuest::default())
            .vsock(true)
            .build()
            .unwrap();
        let vm = Arc::new(VirtualMachine::new(&config).unwrap());
        vm.start().unwrap();
        let start = Arc::new(Barrier::new(2));
        let suspend = {
            let (vm, start) = (Arc::clone(&vm), Arc::clone(&start));
            thread::spawn(move || {
                start.wait();
                vm.suspend()
            })
        };
        start.wait();
        // Listen, port after port, for as long as the suspend runs (and a few more).
        let mut listeners = Vec::new();
        let mut port = 5000;
        while !suspend.is_finished() || listeners.len() < 20 {
            listeners.push(vm.vsock_listen(port).expect("listen"));
            port += 1;
        }
        suspend.join().unwrap().expect("suspend");
        vm.start().expect("restore");
        for listener in &listeners {
            vm.simulator().guest_vsock_connect(listener.port());
            let accepted = listener.accept_timeout(PATIENCE).expect("listening");
            assert!(
                accepted.is_some(),
                "round {round}: port {} lost across the suspend ({} listeners)",
                listener.port(),
                listeners.len()
            );
        }
        drop(listeners);
        vm.shutdown(ShutdownPolicy::Poweroff).unwrap();
        drop(vm);
    }
    leaks.finish();
}

/// What a conversion of the VM's events sees.
struct Seen(VmState);

/// The VM the conversions of `Seen` read.
static VM: std::sync::OnceLock<std::sync::Mutex<Option<Arc<VirtualMachine>>>> =
    std::sync::OnceLock::new();
impl From<StateEvent> for Seen {
    fn from(event: StateEvent) -> Self {
        // Read the VM from inside the conversion: this deadlocked when
        // subscribers ran under the tracker's mutex.
        let vm = VM.get().unwrap().lock().unwrap().clone();
        if let Some(vm) = vm {
            let _ = vm.state();
            let _ = vm.saved_state_file();
        }
        Seen(event.state)
    }
}
/// A conversion that panics on `Running`.
struct Panics;
impl From<StateEvent> for Panics {
    fn from(event: StateEvent) -> Self {
        if event.state == VmState::Running {
            // A panic that skips the panic hook: nothing printed, the same unwinding.
            std::panic::resume_unwind(Box::new("a conversion that panics"));
        }
        Panics
    }
}

/// Subscriber code runs outside the VM's locks: a conversion that reads the VM does
/// not deadlock, and one that panics is contained (unsubscribed, once) while waiters
/// and the other subscribers still hear every change.
#[test]
#[serial]
fn subscriber_code_runs_outside_the_vms_locks() {
    let leaks = LeakCheck::start();
    let dir = TestDir::new("subscriber-code");
    let vm = Arc::new(
        VirtualMachine::new(&builder(&dir, SimulatedGuest::default()).build().unwrap()).unwrap(),
    );
    *VM.get_or_init(Default::default).lock().unwrap() = Some(Arc::clone(&vm));
    let (reads, seen) = mpsc::channel::<Seen>();
    vm.subscribe_with(reads);
    let (panics, panicked) = mpsc::channel::<Panics>();
    vm.subscribe_with(panics);
    let plain = vm.subscribe();

    vm.start().unwrap();
    vm.pause().unwrap();
    vm.resume().unwrap();
    vm.shutdown(ShutdownPolicy::Halt).unwrap();
    // Waiters still hear the change the panicking conversion was given.
    vm.wait_for_state(VmState::Stopped, PATIENCE).unwrap();

    let seen: Vec<VmState> = seen.try_iter().map(|s| s.0).collect();
    let plain: Vec<VmState> = plain.try_iter().map(|e| e.state).collect();
    let expected = [
        VmState::Starting,
        VmState::Running,
        VmState::Pausing,
        VmState::Paused,
        VmState::Resuming,
        VmState::Running,
        VmState::Stopping,
        VmState::Stopped,
    ];
    assert_eq!(seen, expected, "the conversion that reads the VM");
    assert_eq!(plain, expected, "a plain subscriber");
    // The panicking conversion got `Starting`, then panicked on `Running` and was
    // dropped: its channel is disconnected and holds only what came before.
    let got: Vec<_> = panicked.try_iter().collect();
    assert_eq!(got.len(), 1);
    assert!(matches!(
        panicked.try_recv(),
        Err(mpsc::TryRecvError::Disconnected)
    ));
    *VM.get().unwrap().lock().unwrap() = None;
    drop(vm);
    leaks.finish();
}

fn spawn(
    vm: &Arc<VirtualMachine>,
    f: fn(&VirtualMachine) -> applevz::Result<()>,
) -> thread::JoinHandle<applevz::Result<()>> {
    let vm = Arc::clone(vm);
    thread::spawn(move || f(&vm))
}
