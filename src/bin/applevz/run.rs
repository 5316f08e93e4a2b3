//! `applevz run DIR`: the VM in the foreground, until it ends.
//!
//! Threads: the main loop below owns the decisions; a signal thread turns SIGINT,
//! SIGTERM and SIGHUP (the terminal closed, the SSH session dropped) into messages
//! (the signals are blocked everywhere else, so no handler runs in an arbitrary
//! thread); the VM's state events arrive on the same channel (`subscribe_with`);
//! lifecycle operations (the start, a shutdown, control requests) run on their own
//! threads so that a second Ctrl-C is heard while a graceful shutdown waits. Nothing
//! polls: every thread blocks until its next message or event.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use applevz::{
    EventKind, OnGracefulTimeout, SerialPort, ShutdownPolicy, StateEvent, VirtualMachine,
    VmDefinition, VmState,
};

use crate::control::ControlServer;
use crate::failure::{self, Failure, exit};
use crate::out::errln;
use crate::request::{Policy, Request, timeout_from_seconds, timeout_refusal};
use crate::terminal::{Progress, RawMode, is_terminal};
use crate::vmdir::{self, VmDir};

#[derive(clap::Args)]
#[allow(
    clippy::doc_markdown,
    reason = "clap prints these doc comments as the options' help, backticks and all"
)]
pub(crate) struct RunArgs {
    /// The VM directory.
    dir: PathBuf,
    /// Where the serial console goes: the terminal (the default when there is one) or
    /// DIR/console.log.
    #[arg(long, value_enum)]
    console: Option<ConsoleTarget>,
    /// Seconds Ctrl-C, SIGTERM or SIGHUP wait for the guest to power off before forcing
    /// it (default: the file's timeouts.graceful_shutdown, else 30); a second Ctrl-C
    /// forces it off (once an operation under way, such as the boot, has settled).
    #[arg(long)]
    graceful_timeout: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ConsoleTarget {
    /// The terminal, in raw mode (restored on exit).
    Terminal,
    /// DIR/console.log.
    File,
}

enum Message {
    Event(StateEvent),
    /// SIGINT, SIGTERM or SIGHUP (the number).
    Signal(libc::c_int),
    /// The boot (or restore) finished.
    Started(applevz::Result<()>),
    /// A shutdown asked by a signal finished.
    SignalShutdown(applevz::Result<()>),
    /// A control request finished.
    Request,
}

/// What the main loop and the control requests' threads share.
struct Shared {
    /// Operations in flight: the start, shutdowns asked by signals, control requests
    /// until their reply is written.
    busy: AtomicUsize,
    asked: Mutex<Asked>,
    /// What the start is ("the boot", …) until it has finished.
    starting: Mutex<Option<&'static str>>,
    /// A suspend request is under way.
    suspending: AtomicBool,
}

/// What was asked of the VM, to tell how it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asked {
    Nothing,
    Powerdown,
    Forced,
}

pub(crate) fn run(args: &RunArgs) -> Result<u8, Failure> {
    let graceful_timeout = args
        .graceful_timeout
        .map(|seconds| {
            timeout_from_seconds(seconds).ok_or_else(|| {
                Failure::new(exit::USAGE, timeout_refusal("--graceful-timeout", seconds))
            })
        })
        .transpose()?;
    // Raw mode needs a terminal on stdin: say so before touching the directory.
    if args.console == Some(ConsoleTarget::Terminal) && !is_terminal(0) {
        return Err(Failure::new(
            exit::USAGE,
            "--console terminal: standard input is not a terminal; --console file writes \
             the guest's console to DIR/console.log instead",
        ));
    }
    let dir = VmDir::open(&args.dir)?;
    let _lock = dir.lock()?;
    if let Some(message) = dir.interrupted_suspends(true) {
        return Err(Failure::new(exit::WRONG_STATE, message));
    }
    // Before any thread exists: the bind briefly tightens the process's umask.
    let mut server = ControlServer::bind(&dir)?;
    // Before any thread exists, so every thread inherits the blocked mask.
    let signals = block_termination_signals();

    let definition_path = dir.definition();
    log::debug!("loading {}", definition_path.display());
    let definition = VmDefinition::load(&definition_path)?;
    let mut builder = definition.to_builder(&definition_path)?;
    let on_terminal = match args.console {
        Some(ConsoleTarget::Terminal) => true,
        Some(ConsoleTarget::File) => false,
        None => is_terminal(0) && is_terminal(1),
    };
    if definition.serial_log.is_none() {
        builder = builder.serial_port(if on_terminal {
            SerialPort::stdio().map_err(|error| Failure::error(format!("the terminal: {error}")))?
        } else {
            SerialPort::File {
                path: dir.path.join(vmdir::CONSOLE_LOG),
                append: true,
            }
        });
    }
    let mut timeouts = definition.timeouts_over(&definition_path, applevz::Timeouts::default())?;
    if let Some(timeout) = graceful_timeout {
        timeouts.graceful_shutdown = timeout;
    }
    builder = builder
        .timeouts(timeouts)
        .on_graceful_timeout(OnGracefulTimeout::ForceStop);
    #[cfg(applevz_simulator)]
    {
        builder = builder.simulated_guest(simulated_guest_from_env()?);
    }
    let config = definition.finish(&definition_path, builder)?;
    let vm = Arc::new(VirtualMachine::new(&config)?);
    log::debug!("the VM is {}", vm.state());

    if applevz::is_simulator() {
        errln!("applevz: running against the simulator (no Virtualization.framework on this OS)");
    }
    let (messages, inbox) = mpsc::channel();
    vm.subscribe_with(messages.clone());
    forward_signals(signals, messages.clone());
    let shared = Arc::new(Shared {
        busy: AtomicUsize::new(0),
        asked: Mutex::new(Asked::Nothing),
        starting: Mutex::new(Some(if vm.state() == VmState::Suspended {
            "the restore of the suspended VM"
        } else {
            "the boot"
        })),
        suspending: AtomicBool::new(false),
    });
    let replied = {
        let shared = Arc::clone(&shared);
        let messages = Mutex::new(messages.clone());
        move |request: Request| {
            if request != Request::Status {
                shared.busy.fetch_sub(1, Ordering::SeqCst);
                let _ = lock(&messages).send(Message::Request);
            }
        }
    };
    server.serve(control_handler(&vm, &dir.path, &shared), Arc::new(replied));

    let raw = if on_terminal {
        Some(RawMode::enter(0).map_err(|error| Failure::error(format!("raw mode: {error}")))?)
    } else {
        None
    };
    let outcome = main_loop(&vm, &dir.path, &inbox, &messages, &shared);
    drop(raw); // the terminal is back before anything else is printed
    let (code, message) = outcome?;
    errln!("applevz: {message}");
    Ok(code)
}

fn main_loop(
    vm: &Arc<VirtualMachine>,
    dir: &Path,
    inbox: &Receiver<Message>,
    messages: &Sender<Message>,
    shared: &Shared,
) -> Result<(u8, String), Failure> {
    let Shared {
        busy,
        asked,
        starting,
        suspending,
    } = shared;
    let began = Instant::now();
    let resuming = vm.state() == VmState::Suspended;
    let mut boot = Some(Progress::new(if resuming { "resuming" } else { "booting" }));
    // Every operation in flight counts in `busy`: the boot, signal shutdowns, control
    // requests. The VM has ended only when it rests in an end state with none.
    busy.fetch_add(1, Ordering::SeqCst);
    spawn_operation(vm, messages, |vm| Message::Started(vm.start()));
    let mut started = false;
    let mut signals = 0;
    // Shutdowns asked by signals: held until the boot has the VM (so one cannot run
    // first, find nothing to stop, and be lost), then counted until they finish (so
    // `run` never ends with one still pending, its outcome unreported).
    let mut held_signal: Option<ShutdownPolicy> = None;
    let mut signal_shutdowns = 0usize;
    let mut crash: Option<String> = None;
    let mut guest_stopped = false;
    // The boot's state events can arrive after its completion: the progress line ends
    // with the event that shows the VM running, whichever comes last.
    let mut boot_saw_running = false;

    loop {
        let message = inbox
            .recv()
            .map_err(|_| Failure::error("internal: the message channel closed"))?;
        match message {
            Message::Event(event) => {
                match &boot {
                    Some(progress) => {
                        progress.state(&event.state.to_string());
                        boot_saw_running |= event.state == VmState::Running;
                        if started && boot_saw_running {
                            finish_boot(&mut boot, vm);
                        }
                    }
                    None => print_event(&event, began),
                }
                match &event.kind {
                    EventKind::StoppedWithError(error) => crash = Some(error.to_string()),
                    EventKind::GuestStopped => guest_stopped = true,
                    _ => {}
                }
            }
            Message::Started(Ok(())) => {
                *lock(starting) = None;
                busy.fetch_sub(1, Ordering::SeqCst);
                started = true;
                if boot_saw_running {
                    finish_boot(&mut boot, vm);
                }
                if let Some(policy) = held_signal.take() {
                    signal_shutdowns += 1;
                    spawn_signal_shutdown(vm, messages, policy);
                }
            }
            Message::Started(Err(error)) => {
                if let Some(progress) = boot.take() {
                    progress.abandon();
                }
                if *lock(asked) != Asked::Forced {
                    return Err(failure::in_dir(error, dir));
                }
                // The boot failed after a forced shutdown was asked: the VM ends as
                // forced off.
                *lock(starting) = None;
                busy.fetch_sub(1, Ordering::SeqCst);
                started = true;
            }
            Message::Signal(number) => {
                log::debug!("signal {number} received");
                signals += 1;
                let policy = if signals == 1 {
                    ShutdownPolicy::Powerdown
                } else {
                    ShutdownPolicy::Poweroff
                };
                // Nothing cancels an operation under way: say what the signal does
                // then, not what it would do to a VM at rest.
                let what = match (policy, suspending.load(Ordering::SeqCst), *lock(starting)) {
                    (ShutdownPolicy::Powerdown, true, _) => "a suspend is under way and is not \
                        cancelled: the VM stays suspended (should the suspend fail, the guest is \
                        asked to power off)"
                        .to_owned(),
                    (_, true, _) => "a suspend is under way and is not cancelled: the VM stays \
                        suspended (should the suspend fail, the VM is forced off)"
                        .to_owned(),
                    (ShutdownPolicy::Powerdown, false, _) => {
                        "asking the guest to power off (Ctrl-C again forces it off)".to_owned()
                    }
                    (_, false, Some(start)) => {
                        format!("forcing the VM off once {start} under way has finished")
                    }
                    (_, false, None) => "forcing the VM off".to_owned(),
                };
                errln!("applevz: {what}");
                let mut current = lock(asked);
                *current = if policy == ShutdownPolicy::Powerdown && *current != Asked::Forced {
                    Asked::Powerdown
                } else {
                    Asked::Forced
                };
                drop(current);
                if started || policy == ShutdownPolicy::Poweroff {
                    // A Poweroff is asked at once: it waits for the boot to settle (no
                    // operation cancels another), then forces the VM off.
                    held_signal = None;
                    signal_shutdowns += 1;
                    spawn_signal_shutdown(vm, messages, policy);
                } else {
                    // The boot is under way: ask the guest once it has finished.
                    held_signal = Some(policy);
                }
            }
            Message::SignalShutdown(result) => {
                signal_shutdowns -= 1;
                match result {
                    // The suspend it met went through: nothing to shut down, and the
                    // saved state stays (the ending line says so).
                    Err(applevz::Error::InvalidState { .. })
                        if suspending.load(Ordering::SeqCst)
                            || vm.state() == VmState::Suspended =>
                    {
                        log::debug!("a shutdown asked by a signal met a suspend: {result:?}");
                    }
                    Err(error) => {
                        errln!("applevz: shutdown: {}", failure::in_dir(error, dir).message);
                    }
                    Ok(()) => {}
                }
            }
            Message::Request => {}
        }
        let state = vm.state();
        let ended = matches!(
            state,
            VmState::Stopped | VmState::Suspended | VmState::Error
        );
        if started && ended && signal_shutdowns == 0 && busy.load(Ordering::SeqCst) == 0 {
            return Ok(ending(
                state,
                *lock(asked),
                crash,
                guest_stopped,
                inbox,
                began,
            ));
        }
    }
}

/// Ends the boot's progress line.
fn finish_boot(boot: &mut Option<Progress>, vm: &VirtualMachine) {
    if let Some(progress) = boot.take() {
        progress.finish(&vm.state().to_string());
        errln!("applevz: Ctrl-C shuts the guest down; twice forces it off");
    }
}

/// The exit status and message for how the VM ended.
fn ending(
    state: VmState,
    asked: Asked,
    crash: Option<String>,
    guest_stopped: bool,
    inbox: &Receiver<Message>,
    began: Instant,
) -> (u8, String) {
    match (state, asked) {
        (VmState::Suspended, _) => (
            exit::SUSPENDED,
            "suspended; `applevz run` resumes it".into(),
        ),
        (VmState::Error, _) => {
            // The delegate's error follows the state change: give it a moment to
            // arrive (the state is read ahead of the events).
            let reason = crash.or_else(|| {
                next_event(inbox, began, |event| match &event.kind {
                    EventKind::StoppedWithError(error) => Some(error.to_string()),
                    _ => None,
                })
            });
            (
                exit::CRASHED,
                format!(
                    "the VM crashed: {}",
                    reason.unwrap_or_else(|| "no reason given".into())
                ),
            )
        }
        (_, Asked::Nothing) => (
            exit::GUEST_POWERED_OFF,
            "the guest powered itself off".into(),
        ),
        (_, Asked::Forced) => (exit::FORCED_OFF, "the VM was forced off".into()),
        (_, Asked::Powerdown) if guest_stopped => (exit::OK, "the guest shut down".into()),
        (_, Asked::Powerdown) => {
            // The delegate's "guest stopped" follows the state change: give it a moment
            // to arrive; without it the shutdown was escalated to a forced stop.
            match next_event(inbox, began, |event| {
                (event.kind == EventKind::GuestStopped).then_some(())
            }) {
                Some(()) => (exit::OK, "the guest shut down".into()),
                None => (
                    exit::FORCED_OFF,
                    "the guest did not power off in time and was forced off".into(),
                ),
            }
        }
    }
}

/// Waits up to a second for a state event that `wanted` picks out (the delegate's
/// events follow the state change that `run` may already have acted on). Each event
/// received is printed, as the main loop prints it, so the lines do not depend on
/// which came first.
fn next_event<T>(
    inbox: &Receiver<Message>,
    began: Instant,
    wanted: impl Fn(&StateEvent) -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + Duration::from_secs(1);
    while let Some(remaining) = deadline.checked_duration_since(Instant::now()) {
        match inbox.recv_timeout(remaining) {
            Ok(Message::Event(event)) => {
                print_event(&event, began);
                if let Some(found) = wanted(&event) {
                    return Some(found);
                }
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    None
}

/// A state change after the boot: one line with the time since `run` began.
fn print_event(event: &StateEvent, began: Instant) {
    errln!(
        "applevz: [{:>8.2} s] {}",
        began.elapsed().as_secs_f64(),
        describe(event)
    );
}

fn describe(event: &StateEvent) -> String {
    match &event.kind {
        EventKind::StateChanged => event.state.to_string(),
        EventKind::GuestStopped => "the guest powered off".into(),
        EventKind::StoppedWithError(error) => format!("stopped with an error: {error}"),
        EventKind::NetworkDisconnected(error) => {
            format!(
                "{}; a network attachment was disconnected: {error}",
                event.state
            )
        }
        EventKind::Suspended => "suspended".into(),
        EventKind::SavedStateRemoved => {
            format!("{} (saved state restored and removed)", event.state)
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn spawn_operation(
    vm: &Arc<VirtualMachine>,
    messages: &Sender<Message>,
    operation: impl FnOnce(&VirtualMachine) -> Message + Send + 'static,
) {
    let vm = Arc::clone(vm);
    let messages = messages.clone();
    std::thread::spawn(move || {
        let _ = messages.send(operation(&vm));
    });
}

fn spawn_signal_shutdown(
    vm: &Arc<VirtualMachine>,
    messages: &Sender<Message>,
    policy: ShutdownPolicy,
) {
    spawn_operation(vm, messages, move |vm| {
        Message::SignalShutdown(vm.shutdown(policy))
    });
}

impl From<StateEvent> for Message {
    fn from(event: StateEvent) -> Self {
        Message::Event(event)
    }
}

/// Blocks SIGINT, SIGTERM and SIGHUP in this thread (and the threads it starts).
fn block_termination_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data initialized by sigemptyset; pthread_sigmask only
    // changes this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&raw mut set);
        libc::sigaddset(&raw mut set, libc::SIGINT);
        libc::sigaddset(&raw mut set, libc::SIGTERM);
        libc::sigaddset(&raw mut set, libc::SIGHUP);
        libc::pthread_sigmask(libc::SIG_BLOCK, &raw const set, std::ptr::null_mut());
        set
    }
}

fn forward_signals(set: libc::sigset_t, messages: Sender<Message>) {
    std::thread::spawn(move || {
        loop {
            let mut signal = 0;
            // SAFETY: `set` holds the blocked signals; sigwait writes the one received.
            if unsafe { libc::sigwait(&raw const set, &raw mut signal) } != 0 {
                continue;
            }
            if messages.send(Message::Signal(signal)).is_err() {
                break;
            }
        }
    });
}

fn control_handler(
    vm: &Arc<VirtualMachine>,
    dir: &Path,
    shared: &Arc<Shared>,
) -> Arc<crate::control::Handler> {
    let vm = Arc::clone(vm);
    let dir = dir.to_owned();
    let shared = Arc::clone(shared);
    Arc::new(move |request: Request, progress: &mut dyn FnMut(&str)| {
        if request == Request::Status {
            return Ok(vm.state().to_string());
        }
        // Counted until the reply is written (see `replied`); refused, not queued,
        // while another operation is under way. A forced stop goes to the library,
        // which decides: it cuts a graceful stop's wait short, a Poweroff waits for
        // any other operation to settle, a Halt is refused at once.
        let forced = matches!(
            request,
            Request::Stop {
                policy: Policy::Halt | Policy::Poweroff,
                ..
            }
        );
        if shared.busy.fetch_add(1, Ordering::SeqCst) != 0 && !forced {
            // Named by what is under way, not by the state: a VM still "stopped" while
            // its boot begins is not what the request is waiting for.
            let state = vm.state();
            let under_way = match *lock(&shared.starting) {
                Some(start) => start.to_owned(),
                None if state.is_transitional() => format!("another operation ({state})"),
                None => "another operation".to_owned(),
            };
            return Err(Failure::new(
                exit::WRONG_STATE,
                format!(
                    "cannot {} yet: {under_way} is under way; try again when it has finished, \
                     or `applevz stop {} --policy poweroff` waits for it to finish and then \
                     forces the VM off if it still runs",
                    request.verb(),
                    dir.display()
                ),
            ));
        }
        log::debug!("control socket: carrying out {request:?}");
        // A stop records what it asks; if it fails, that record is taken back, unless
        // something else (a Ctrl-C) has asked since. Other requests ask nothing.
        let recorded = match request {
            Request::Stop { policy, .. } => {
                let ours = if policy == Policy::Powerdown {
                    Asked::Powerdown
                } else {
                    Asked::Forced
                };
                let mut current = lock(&shared.asked);
                let previous = *current;
                *current = ours;
                Some((previous, ours))
            }
            _ => None,
        };
        let suspend = request == Request::Suspend;
        if suspend {
            shared.suspending.store(true, Ordering::SeqCst);
        }
        let result = perform(&vm, request, progress);
        if suspend {
            shared.suspending.store(false, Ordering::SeqCst);
        }
        if let (Err(_), Some((previous, ours))) = (&result, recorded) {
            let mut current = lock(&shared.asked);
            if *current == ours {
                *current = previous;
            }
        }
        result.map_err(|error| failure::in_dir(error, &dir))
    })
}

/// What a control request's thread hears: the VM's state changes, then the end of the
/// operation (its events all come first: they are sent before it returns).
enum Step {
    Event(StateEvent),
    Done(applevz::Result<()>),
}

impl From<StateEvent> for Step {
    fn from(event: StateEvent) -> Self {
        Step::Event(event)
    }
}

/// Runs one control request, reporting each state change as progress.
fn perform(
    vm: &Arc<VirtualMachine>,
    request: Request,
    progress: &mut dyn FnMut(&str),
) -> applevz::Result<String> {
    let (steps, inbox) = mpsc::channel();
    vm.subscribe_with(steps.clone());
    let worker_vm = Arc::clone(vm);
    let worker = std::thread::spawn(move || {
        let operation = || match request {
            Request::Status => Ok(()),
            Request::Pause => worker_vm.pause(),
            Request::Resume => worker_vm.resume(),
            Request::Suspend => worker_vm.suspend(),
            Request::Stop { policy, timeout } => {
                // This request's timeout, not the one a later Ctrl-C uses.
                let previous = worker_vm.timeouts();
                if let Some(timeout) = timeout {
                    worker_vm.set_timeouts(applevz::Timeouts {
                        graceful_shutdown: timeout,
                        ..previous
                    });
                }
                let result = worker_vm.shutdown(match policy {
                    Policy::Powerdown => ShutdownPolicy::Powerdown,
                    Policy::Halt => ShutdownPolicy::Halt,
                    Policy::Poweroff => ShutdownPolicy::Poweroff,
                });
                if timeout.is_some() {
                    worker_vm.set_timeouts(previous);
                }
                result
            }
        };
        // Done is sent whatever happens (the subscription keeps the channel open).
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(operation))
            .unwrap_or_else(|_| {
                Err(applevz::Error::Io {
                    action: "run the request",
                    path: PathBuf::new(),
                    source: std::io::Error::other("the operation panicked"),
                })
            });
        let _ = steps.send(Step::Done(result));
    });
    // Every state change is forwarded as it comes, until the operation has ended.
    let result = loop {
        match inbox.recv() {
            Ok(Step::Event(event)) => progress(&event.state.to_string()),
            Ok(Step::Done(result)) => break result,
            // Cannot happen while the VM (whose subscription holds a sender) lives.
            Err(_) => {
                break Err(applevz::Error::Io {
                    action: "run the request",
                    path: PathBuf::new(),
                    source: std::io::Error::other("the operation's thread went away"),
                });
            }
        }
    };
    let _ = worker.join();
    // Dropping `inbox` ends the subscription.
    result.map(|()| vm.state().to_string())
}

/// The simulated guest, scripted for tests by `APPLEVZ_SIM_GUEST`, for example
/// `boot_delay_ms=500,ignores_stop_request,power_off_after_ms=2000`.
#[cfg(applevz_simulator)]
fn simulated_guest_from_env() -> Result<applevz::sim::SimulatedGuest, Failure> {
    let Ok(script) = std::env::var("APPLEVZ_SIM_GUEST") else {
        return Ok(applevz::sim::SimulatedGuest::default());
    };
    applevz::sim::SimulatedGuest::from_script(&script).map_err(|item| {
        Failure::new(
            exit::USAGE,
            format!("APPLEVZ_SIM_GUEST: cannot use {item:?}"),
        )
    })
}
