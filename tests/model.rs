//! A model-based concurrency test of the lifecycle: random schedules in which 2 to 6
//! threads make random calls on one VM while the simulator injects faults, each run
//! checked against a reference model of what the lifecycle may do.
//!
//! Each schedule comes from a seed: a failure prints it, and
//! `APPLEVZ_MODEL_SEED=<seed> cargo test --test model` replays the same calls and faults
//! (the threads' interleaving is the operating system's: a replay reproduces the
//! schedule, not necessarily the same race). That is why no property-testing crate
//! generates them: shrinking a failing case assumes that a smaller input replays the
//! same run, which real threads do not, and a seed is all a replay needs.
//! `APPLEVZ_MODEL_SCHEDULES=<n>` sets how many schedules run (default 2,000).
//!
//! The model (the lifecycle contract in `docs/lifecycle.md`):
//! - every call returns within its bound, with a result the model allows for it (a
//!   refusal names a state in which that call is refused, a timeout or a framework
//!   error only where the schedule made one possible);
//! - every pair of successive states a subscriber sees is a transition of the model;
//! - no saved state is lost: the VM ends suspended exactly when it holds a saved state
//!   on disk, no partial file is left, and a saved state is removed only after the
//!   guest restored from it ran, or by a Poweroff;
//! - no vsock listener is lost (each one alive at the end hears the guest);
//! - no native object is leaked and no thread is left behind.
#![cfg(applevz_simulator)]

mod common;

use std::sync::mpsc::Receiver;
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use applevz::sim::{SimOperation, SimulatedGuest};
use applevz::{
    Error, EventKind, OnGracefulTimeout, ShutdownPolicy, StateEvent, Timeouts, VirtualMachine,
    VmState,
};
use common::{LeakCheck, PATIENCE, TestDir, builder};

/// The longest any call of a schedule may take: every operation's timeout is 2 s and
/// no schedule makes more than 36 calls, most of them instant on the simulator.
const CALL_BOUND: Duration = Duration::from_secs(20);

/// splitmix64: small, seedable, good enough to pick calls.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    FailNext(SimOperation),
    Delay(u64),
    GuestPowerOff,
    Crash,
}

#[derive(Debug, Clone, Copy)]
enum Call {
    Start,
    Pause,
    Resume,
    Suspend,
    Shutdown(ShutdownPolicy),
    Listen(u32),
    Unlisten,
    Connect,
    Subscribe,
    Unsubscribe,
    Fault(Fault),
}

/// One schedule: the guest, and each thread's calls.
#[derive(Debug)]
struct Schedule {
    ignores_stop_request: bool,
    on_graceful_timeout: OnGracefulTimeout,
    threads: Vec<Vec<Call>>,
}

fn schedule(seed: u64) -> Schedule {
    let mut rng = Rng(seed);
    let threads = 2 + rng.below(5);
    let mut port = 6000;
    let threads = (0..threads)
        .map(|_| {
            (0..=rng.below(6))
                .map(|_| {
                    let policy = match rng.below(3) {
                        0 => ShutdownPolicy::Powerdown,
                        1 => ShutdownPolicy::Halt,
                        _ => ShutdownPolicy::Poweroff,
                    };
                    match rng.below(22) {
                        0..=3 => Call::Start,
                        4..=5 => Call::Pause,
                        6..=7 => Call::Resume,
                        8..=10 => Call::Suspend,
                        11..=13 => Call::Shutdown(policy),
                        14 => {
                            port += 1;
                            Call::Listen(port)
                        }
                        15 => Call::Unlisten,
                        16 => Call::Connect,
                        17 => Call::Subscribe,
                        18 => Call::Unsubscribe,
                        _ => Call::Fault(match rng.below(8) {
                            0 => Fault::FailNext(SimOperation::Start),
                            1 => Fault::FailNext(SimOperation::Pause),
                            2 => Fault::FailNext(SimOperation::Save),
                            3 => Fault::FailNext(SimOperation::Restore),
                            4 => Fault::GuestPowerOff,
                            5 => Fault::Crash,
                            _ => Fault::Delay(rng.below(8)),
                        }),
                    }
                })
                .collect()
        })
        .collect();
    Schedule {
        ignores_stop_request: rng.chance(30),
        on_graceful_timeout: if rng.chance(50) {
            OnGracefulTimeout::Fail
        } else {
            OnGracefulTimeout::ForceStop
        },
        threads,
    }
}

/// What one call returned, and how long it took.
struct Outcome {
    call: Call,
    result: Result<(), Error>,
    took: Duration,
}

/// What a thread keeps between its calls.
#[derive(Default)]
struct Held {
    listeners: Vec<applevz::VsockListener>,
    subscriptions: Vec<Receiver<StateEvent>>,
}

fn perform(vm: &VirtualMachine, call: Call, held: &mut Held) -> Result<(), Error> {
    match call {
        Call::Start => vm.start(),
        Call::Pause => vm.pause(),
        Call::Resume => vm.resume(),
        Call::Suspend => vm.suspend(),
        Call::Shutdown(policy) => vm.shutdown(policy),
        Call::Listen(port) => vm.vsock_listen(port).map(|l| held.listeners.push(l)),
        Call::Unlisten => {
            if let Some(listener) = held.listeners.pop() {
                listener.remove()?;
            }
            Ok(())
        }
        Call::Connect => vm.vsock_connect(1024).map(drop),
        Call::Subscribe => {
            held.subscriptions.push(vm.subscribe());
            Ok(())
        }
        Call::Unsubscribe => {
            held.subscriptions.pop();
            Ok(())
        }
        Call::Fault(fault) => {
            let control = vm.simulator();
            match fault {
                Fault::FailNext(op) => control.fail_next(op, 1),
                Fault::Delay(ms) => control.set_operation_delay(Duration::from_millis(ms)),
                Fault::GuestPowerOff => control.guest_power_off(),
                Fault::Crash => control.crash(1),
            }
            Ok(())
        }
    }
}

/// Runs schedule `seed`; returns what it violated of the model, if anything.
fn run(seed: u64) -> Result<(), String> {
    let schedule = schedule(seed);
    let dir = TestDir::new("model");
    // A guest that ignores the stop request makes every Powerdown wait out the graceful
    // timeout: keep it short. One that listens powers off at once, but a loaded machine
    // may take a while to run it: no tight bound there.
    let graceful_shutdown = if schedule.ignores_stop_request {
        Duration::from_millis(30)
    } else {
        Duration::from_secs(2)
    };
    let timeouts = Timeouts {
        graceful_shutdown,
        ..uniform_timeouts(Duration::from_secs(2))
    };
    let guest = SimulatedGuest {
        ignores_stop_request: schedule.ignores_stop_request,
        guest_vsock_ports: vec![1024],
        ..SimulatedGuest::default()
    };
    let config = builder(&dir, guest)
        .vsock(true)
        .timeouts(timeouts)
        .on_graceful_timeout(schedule.on_graceful_timeout)
        .build()
        .map_err(|e| e.to_string())?;
    let vm = Arc::new(VirtualMachine::new(&config).map_err(|e| e.to_string())?);
    let watcher = vm.subscribe();
    let begin = Arc::new(Barrier::new(schedule.threads.len()));
    let kept = Arc::new(Mutex::new(Vec::new()));
    let outcomes: Vec<Vec<Outcome>> = thread::scope(|scope| {
        let workers: Vec<_> = schedule
            .threads
            .iter()
            .map(|calls| {
                let (vm, begin, kept) = (&vm, &begin, &kept);
                scope.spawn(move || {
                    let mut held = Held::default();
                    begin.wait();
                    let outcomes = calls
                        .iter()
                        .map(|&call| {
                            let called = Instant::now();
                            let result = perform(vm, call, &mut held);
                            Outcome {
                                call,
                                result,
                                took: called.elapsed(),
                            }
                        })
                        .collect();
                    kept.lock().unwrap().extend(held.listeners);
                    outcomes
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let faults: Vec<Fault> = schedule
        .threads
        .iter()
        .flatten()
        .filter_map(|call| match call {
            Call::Fault(fault) => Some(*fault),
            _ => None,
        })
        .collect();
    let outcomes: Vec<&Outcome> = outcomes.iter().flatten().collect();
    for outcome in &outcomes {
        check_outcome(outcome, &schedule, &faults)?;
    }
    let events: Vec<StateEvent> = watcher.try_iter().collect();
    check_events(&events)?;
    check_saved_state(&vm, &dir)?;
    let listeners = std::mem::take(&mut *kept.lock().unwrap());
    check_listeners(&vm, &listeners)?;
    drop(listeners);
    drop(vm);
    Ok(())
}

fn uniform_timeouts(each: Duration) -> Timeouts {
    Timeouts {
        start: each,
        stop: each,
        pause: each,
        resume: each,
        save: each,
        restore: each,
        graceful_shutdown: each,
        vsock_connect: each,
    }
}

/// A result the model allows for this call, in this schedule.
fn check_outcome(outcome: &Outcome, schedule: &Schedule, faults: &[Fault]) -> Result<(), String> {
    let call = outcome.call;
    if outcome.took > CALL_BOUND {
        return Err(format!("{call:?} took {:?}", outcome.took));
    }
    let injected = |wanted: fn(&Fault) -> bool| faults.iter().any(wanted);
    let failures_injected = injected(|f| matches!(f, Fault::FailNext(_) | Fault::Crash));
    let allowed = match &outcome.result {
        Ok(()) => true,
        // Listening and connecting need a running guest and a free port.
        Err(_) if matches!(call, Call::Connect | Call::Listen(_) | Call::Unlisten) => true,
        Err(Error::InvalidState { state, .. }) => {
            let message = outcome.result.as_ref().unwrap_err().to_string();
            // A refusal never contradicts itself: "under way" only in a transitional
            // state (the contradiction a C caller met in issue 15, item 3).
            if message.contains("another operation is under way") && !state.is_transitional() {
                return Err(format!("{call:?}: {message}"));
            }
            // The framework refuses an operation whose VM crashed or powered off
            // underneath it, naming the state that left.
            let spontaneous = injected(|f| matches!(f, Fault::Crash | Fault::GuestPowerOff));
            refused_in(call, *state)
                || (spontaneous && matches!(state, VmState::Error | VmState::Stopped))
        }
        // A graceful stop the guest ignores, when the VM is told to fail then.
        Err(Error::Timeout { .. }) => {
            matches!(call, Call::Shutdown(ShutdownPolicy::Powerdown))
                && schedule.ignores_stop_request
                && schedule.on_graceful_timeout == OnGracefulTimeout::Fail
        }
        Err(Error::Framework { .. } | Error::RestoreFailed { .. }) => failures_injected,
        Err(_) => false,
    };
    if allowed {
        Ok(())
    } else {
        Err(format!("{call:?} returned {:?}", outcome.result))
    }
}

/// The states in which the lifecycle refuses `call` (`Error::InvalidState`).
fn refused_in(call: Call, state: VmState) -> bool {
    use VmState::*;
    let transitional = state.is_transitional();
    match call {
        Call::Start => transitional,
        Call::Pause | Call::Resume => matches!(state, Stopped | Suspended | Error) || transitional,
        Call::Suspend => matches!(state, Stopped | Error) || transitional,
        Call::Shutdown(ShutdownPolicy::Powerdown) => state == Suspended || transitional,
        Call::Shutdown(_) => transitional,
        // The framework refuses a connection to a VM that is not running.
        Call::Connect | Call::Listen(_) | Call::Unlisten => true,
        Call::Subscribe | Call::Unsubscribe | Call::Fault(_) => false,
    }
}

/// Whether a subscriber may see `to` right after `from`.
fn transition(from: VmState, to: VmState) -> bool {
    use VmState::*;
    if from == to || to == Error {
        return true;
    }
    match from {
        Stopped => matches!(to, Starting | Restoring),
        Starting => matches!(to, Running | Stopped),
        Running => matches!(to, Pausing | Stopping | Stopped),
        Pausing => matches!(to, Paused | Running),
        Paused => matches!(to, Resuming | Stopping | Saving),
        Resuming => matches!(to, Running | Paused),
        Stopping => matches!(to, Stopped | Suspended | Running | Paused),
        Saving => matches!(to, Paused),
        Restoring => matches!(to, Paused | Stopped | Suspended),
        Suspended => matches!(to, Restoring | Stopped),
        Error => matches!(to, Starting | Stopping | Stopped | Suspended | Restoring),
    }
}

fn check_events(events: &[StateEvent]) -> Result<(), String> {
    let mut previous = VmState::Stopped;
    // The guest ran since the VM was last suspended (which spends the saved state).
    let mut ran_since_suspended = true;
    for (index, event) in events.iter().enumerate() {
        if !transition(previous, event.state) {
            return Err(format!(
                "event {index}: {previous:?} -> {:?} ({:?}); events: {events:?}",
                event.state, event.kind
            ));
        }
        match (&event.kind, event.state) {
            (EventKind::Suspended, _) => ran_since_suspended = false,
            (_, VmState::Running) => ran_since_suspended = true,
            _ => {}
        }
        // A saved state removed without the guest having run is a Poweroff's discard,
        // which leaves the VM stopped (never suspended or running).
        if event.kind == EventKind::SavedStateRemoved
            && !ran_since_suspended
            && event.state != VmState::Stopped
        {
            return Err(format!(
                "event {index}: saved state removed in {:?}",
                event.state
            ));
        }
        previous = event.state;
    }
    Ok(())
}

/// The VM is suspended exactly when it holds a saved state on disk; nothing partial.
fn check_saved_state(vm: &VirtualMachine, dir: &TestDir) -> Result<(), String> {
    // Wait for anything still settling (a crash's event, a late completion).
    let settled = Instant::now() + PATIENCE;
    while vm.state().is_transitional() && Instant::now() < settled {
        thread::sleep(Duration::from_millis(1));
    }
    let state = vm.state();
    let tracked = vm.saved_state_file();
    let on_disk = tracked.as_ref().is_some_and(|path| path.exists());
    let holds = matches!(state, VmState::Suspended) || (state == VmState::Error && on_disk);
    if holds != on_disk || (tracked.is_some() && !on_disk) {
        return Err(format!(
            "state {state:?}, tracked saved state {tracked:?}, on disk: {on_disk}"
        ));
    }
    if !holds && dir.join("vm.state").exists() {
        return Err(format!(
            "a saved state on disk that the VM ({state:?}) forgot"
        ));
    }
    let partial: Vec<_> = dir
        .entries()
        .into_iter()
        .filter(|name| name.contains(".partial-"))
        .collect();
    if !partial.is_empty() {
        return Err(format!("partial files left: {partial:?}"));
    }
    Ok(())
}

/// Every listener still held hears the guest once the VM runs.
fn check_listeners(
    vm: &VirtualMachine,
    listeners: &[applevz::VsockListener],
) -> Result<(), String> {
    if listeners.is_empty() {
        return Ok(());
    }
    vm.simulator().set_operation_delay(Duration::ZERO);
    // A failure injected and never used may still be waiting: at most one per kind.
    for _ in 0..3 {
        if vm.start().is_ok() {
            break;
        }
    }
    if vm.state() != VmState::Running {
        return Err(format!("the VM does not run again: {:?}", vm.state()));
    }
    for listener in listeners {
        vm.simulator().guest_vsock_connect(listener.port());
        match listener.accept_timeout(PATIENCE) {
            Ok(Some(_)) => {}
            other => return Err(format!("listener {} lost: {other:?}", listener.port())),
        }
    }
    Ok(())
}

/// The names of this process's threads, but for the crate's deadline keeper: one per
/// process, started by the first timed wait that needs it, and kept.
fn threads() -> Vec<String> {
    std::fs::read_dir("/proc/self/task").map_or_else(
        |_| Vec::new(),
        |tasks| {
            tasks
                .filter_map(Result::ok)
                .map(|task| {
                    std::fs::read_to_string(task.path().join("comm"))
                        .unwrap_or_default()
                        .trim_end()
                        .to_owned()
                })
                .filter(|name| name != "applevz-deadlin")
                .collect()
        },
    )
}

#[test]
fn random_schedules_keep_the_model() {
    let schedules: u64 = std::env::var("APPLEVZ_MODEL_SCHEDULES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2_000);
    let first_seed: u64 = match std::env::var("APPLEVZ_MODEL_SEED") {
        Ok(seed) => seed.parse().expect("APPLEVZ_MODEL_SEED is a number"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            .wrapping_mul(1_000_000_007),
    };
    let replay = std::env::var("APPLEVZ_MODEL_SEED").is_ok();
    let count = if replay { 1 } else { schedules };
    // A first schedule starts the process-wide threads (the simulator's pool, the
    // deadline keeper), which stay.
    run(1).unwrap_or_else(|violation| panic!("warm-up schedule: {violation}"));
    // Its native objects go on the VM's queue once their last work is done.
    assert!(
        applevz::sim::wait_for_live_objects(0, PATIENCE),
        "the warm-up schedule left native objects"
    );
    let leaks = LeakCheck::start();
    let baseline = threads().len();
    let began = Instant::now();
    for n in 0..count {
        let seed = first_seed.wrapping_add(n);
        if let Err(violation) = run(seed) {
            panic!(
                "schedule {n} violated the model: {violation}\n{:#?}\n\
                 replay: APPLEVZ_MODEL_SEED={seed} cargo test --test model",
                schedule(seed)
            );
        }
    }
    leaks.finish();
    // Threads end shortly after their work: wait for them, with a deadline.
    let deadline = Instant::now() + PATIENCE;
    while threads().len() > baseline && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
    let left = threads();
    assert!(
        left.len() <= baseline,
        "threads left: {left:?}, {baseline} before"
    );
    eprintln!(
        "{count} schedules from seed {first_seed} kept the model in {:?}",
        began.elapsed()
    );
}
