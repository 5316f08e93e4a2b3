//! `VirtualMachine`: the lifecycle logic (DESIGN.md section 5), on top of the safe
//! native wrappers.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::callback::{NativeEvent, deadline_after, lock, remove_if_present, wait_until_deadline};
use crate::config::{CPath, OnGracefulTimeout, Timeouts, VmConfig};
use crate::error::{Error, FrameworkError, Result, VzErrorCode};
use crate::native::{AsyncOp, NativeVm};
use crate::state::{EventKind, Operation, ShutdownPolicy, StateEvent, VmState};
use crate::vsock::{VsockListener, VsockStream};

/// What the observer maintains: the framework's state and the subscribers.
struct Observed {
    /// The framework's state as last reported (never `Suspended`).
    framework_state: VmState,
    subscribers: Vec<Sender<StateEvent>>,
}

/// State shared between the VM's owner and the native observer.
struct Shared {
    observed: Mutex<Observed>,
    changed: Condvar,
    saved_state: Option<PathBuf>,
    /// Set by a forced shutdown waiting for its turn: a graceful wait in progress
    /// stops waiting and forces the VM off itself.
    force_stop_requested: AtomicBool,
}

impl Shared {
    /// Maps the framework's state to the VM's: stopped with a saved state is
    /// suspended.
    fn vm_state(&self, framework_state: VmState) -> VmState {
        match (&self.saved_state, framework_state) {
            (Some(path), VmState::Stopped) if path.exists() => VmState::Suspended,
            _ => framework_state,
        }
    }

    /// Records an event and hands it to every subscriber, in order (events are
    /// published under the lock, so no two interleave).
    fn publish(&self, framework_state: Option<VmState>, kind: EventKind) {
        let mut observed = lock(&self.observed);
        if let Some(state) = framework_state {
            observed.framework_state = state;
        }
        let event = StateEvent {
            state: self.vm_state(observed.framework_state),
            kind,
        };
        log::debug!("VM event: {event:?}");
        observed
            .subscribers
            .retain(|subscriber| subscriber.send(event.clone()).is_ok());
        drop(observed);
        self.changed.notify_all();
    }

    /// Waits, event-driven, until `done` holds for the VM's state or `timeout` passes.
    /// Returns the last state seen and whether `done` held.
    fn wait_until(&self, timeout: Duration, done: impl Fn(VmState) -> bool) -> (VmState, bool) {
        let deadline = deadline_after(timeout);
        let mut observed = lock(&self.observed);
        loop {
            let state = self.vm_state(observed.framework_state);
            if done(state) {
                return (state, true);
            }
            match wait_until_deadline(&self.changed, observed, deadline) {
                Some(guard) => observed = guard,
                None => return (state, false),
            }
        }
    }
}

/// A Linux virtual machine.
///
/// `VirtualMachine` is `Send + Sync`: share it through an `Arc`. Lifecycle operations
/// are serialized (one at a time; others wait their turn). Every operation has a
/// timeout (see [`Timeouts`]); a completion that arrives after its wait timed out is
/// harmless.
///
/// Dropping a VM that is not stopped forces it off, like pulling the plug, without
/// waiting for the guest: call [`VirtualMachine::shutdown`] first for a graceful stop
/// or [`VirtualMachine::suspend`] to keep its state. Drop never blocks on the guest;
/// the native side releases the VM once its last operation completed.
pub struct VirtualMachine {
    native: NativeVm,
    shared: Arc<Shared>,
    operation_lock: Mutex<()>,
    saved_state: Option<CPath>,
    save_restore_check: std::result::Result<(), FrameworkError>,
    timeouts: Mutex<Timeouts>,
    on_graceful_timeout: OnGracefulTimeout,
    memory_size: u64,
    has_memory_balloon: bool,
    has_vsock: bool,
    /// Host ports with a listener of ours (a second listener would silently replace
    /// the first in the framework).
    vsock_ports: Arc<Mutex<HashSet<u32>>>,
    /// The guest was restored from the saved-state file (or a restore is still under
    /// way) and has not run since. Running it spends the file: the resume that follows
    /// deletes it, so it is never restored a second time.
    restored_from_saved_state: AtomicBool,
}

/// Hints for the ways out of a refused operation.
mod hint {
    pub const SUSPENDED: &str =
        "suspended: start() resumes it, shutdown(Poweroff) discards the saved state";
    pub const TRANSITIONAL: &str = "another operation is under way: wait_for_state() until it settles, or shutdown(Poweroff) forces it off";
    pub const ERROR: &str =
        "the VM failed: shutdown(Poweroff) stops it, then start() boots it again";
    pub const STOPPED: &str = "the VM is not running: start() it first";
    pub const RUNNING: &str = "pause() it first";
    pub const TIMEOUT: &str =
        "the operation may still finish; shutdown(Poweroff) forces the VM off";
    pub const GRACEFUL_TIMEOUT: &str = "the guest ignored the stop request (does it handle the ACPI power button?): \
         shutdown(Poweroff) forces it off, or configure OnGracefulTimeout::ForceStop";
    pub const CANNOT_STOP: &str = "the framework cannot stop the VM in this state";
    pub const CRASHED: &str = "the VM failed during the operation: shutdown(Poweroff) resets it";
}

impl VirtualMachine {
    /// Creates a VM from a validated configuration. When the configuration's
    /// saved-state file exists, the VM starts out [`VmState::Suspended`].
    pub fn new(config: &VmConfig) -> Result<Self> {
        let native_config = config.to_native()?;
        native_config
            .validate()
            .map_err(Error::during(Operation::Create))?;
        let save_restore_check = native_config.validate_save_restore();

        let shared = Arc::new(Shared {
            observed: Mutex::new(Observed {
                framework_state: VmState::Stopped,
                subscribers: Vec::new(),
            }),
            changed: Condvar::new(),
            saved_state: config.saved_state.as_ref().map(|p| p.path.clone()),
            force_stop_requested: AtomicBool::new(false),
        });
        let observer_shared = Arc::clone(&shared);
        let native = NativeVm::create(
            &native_config,
            Box::new(move |event: NativeEvent| {
                observer_shared.publish(Some(event.state), event.kind)
            }),
        )
        .map_err(Error::during(Operation::Create))?;
        // Events may have arrived already; the framework's own answer wins.
        lock(&shared.observed).framework_state = native.state();

        Ok(Self {
            native,
            shared,
            operation_lock: Mutex::new(()),
            saved_state: config.saved_state.clone(),
            save_restore_check,
            timeouts: Mutex::new(config.timeouts),
            on_graceful_timeout: config.on_graceful_timeout,
            memory_size: config.memory_size(),
            has_memory_balloon: config.has_memory_balloon(),
            has_vsock: config.has_vsock(),
            vsock_ports: Arc::default(),
            restored_from_saved_state: AtomicBool::new(false),
        })
    }

    /// The VM's state.
    pub fn state(&self) -> VmState {
        let framework_state = lock(&self.shared.observed).framework_state;
        self.shared.vm_state(framework_state)
    }

    /// The per-operation timeouts in force.
    pub fn timeouts(&self) -> Timeouts {
        *lock(&self.timeouts)
    }

    /// Replaces the per-operation timeouts; operations that start afterwards use them.
    pub fn set_timeouts(&self, timeouts: Timeouts) {
        *lock(&self.timeouts) = timeouts;
    }

    /// The saved-state file of this VM, if configured.
    pub fn saved_state_path(&self) -> Option<&Path> {
        self.saved_state.as_ref().map(|p| p.path.as_path())
    }

    /// A new subscription: the receiver gets every state change from now on, in
    /// order. Dropping the receiver ends the subscription.
    pub fn subscribe(&self) -> Receiver<StateEvent> {
        let (sender, receiver) = mpsc::channel();
        lock(&self.shared.observed).subscribers.push(sender);
        receiver
    }

    /// Waits until the VM is in `target`, up to `timeout`; event-driven.
    pub fn wait_for_state(&self, target: VmState, timeout: Duration) -> Result<()> {
        match self.shared.wait_until(timeout, |state| state == target) {
            (_, true) => Ok(()),
            (state, false) => Err(Error::Timeout {
                operation: Operation::WaitForState(target),
                state,
                timeout,
                hint: "the VM did not get there in time",
            }),
        }
    }

    /// Starts the VM: a stopped VM boots, a paused one resumes, a running one is left
    /// alone, and a suspended one is restored from its saved state and resumed, after
    /// which the saved state is deleted. A failed restore keeps the file.
    pub fn start(&self) -> Result<()> {
        let _serialized = lock(&self.operation_lock);
        let operation = Operation::Start;
        match self.state() {
            VmState::Running => Ok(()),
            VmState::Paused => self.resume_guest(operation),
            VmState::Stopped => {
                self.restored_from_saved_state
                    .store(false, Ordering::SeqCst);
                self.run(operation, AsyncOp::Start, self.timeouts().start)
            }
            VmState::Suspended => self.start_from_saved_state(),
            VmState::Error => self.refuse(operation, hint::ERROR),
            _ => self.refuse(operation, hint::TRANSITIONAL),
        }
    }

    /// Stops the VM under `policy`, exactly as the table in DESIGN.md section 5:
    ///
    /// | state | Powerdown | Halt | Poweroff |
    /// |---|---|---|---|
    /// | stopped | no-op | no-op | no-op |
    /// | running | ask the guest, wait up to the graceful timeout, then fail or force (see [`OnGracefulTimeout`]) | forced stop | forced stop |
    /// | paused | resume, then as running | forced stop | forced stop |
    /// | suspended | invalid state | no-op | discard the saved state |
    /// | transitional | invalid state | invalid state | forced stop |
    /// | error | forced stop where the framework allows | same | same |
    ///
    /// A forced shutdown (Halt or Poweroff) asked while a Powerdown is waiting for the
    /// guest does not wait behind it: the Powerdown forces the VM off at once. A
    /// Poweroff asked while a start, pause, resume, save or restore is under way stops
    /// the VM at once too, cancelling that operation (its caller gets the framework's
    /// cancellation error; a suspend or a restore keeps its nothing-lost rules).
    pub fn shutdown(&self, policy: ShutdownPolicy) -> Result<()> {
        if policy != ShutdownPolicy::Powerdown {
            // Under the state lock, so a waiter cannot miss the wake-up.
            let _observed = lock(&self.shared.observed);
            self.shared
                .force_stop_requested
                .store(true, Ordering::SeqCst);
            self.shared.changed.notify_all();
        }
        let _serialized = match self.operation_lock.try_lock() {
            Ok(guard) => guard,
            Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                if policy == ShutdownPolicy::Poweroff {
                    self.pull_the_plug_on_operation_in_flight();
                }
                lock(&self.operation_lock)
            }
        };
        if policy != ShutdownPolicy::Powerdown {
            self.shared
                .force_stop_requested
                .store(false, Ordering::SeqCst);
        }
        let operation = Operation::Shutdown(policy);
        let state = self.state();
        match (state, policy) {
            (VmState::Stopped, _) => Ok(()),
            (VmState::Suspended, ShutdownPolicy::Powerdown) => {
                self.refuse(operation, hint::SUSPENDED)
            }
            (VmState::Suspended, ShutdownPolicy::Halt) => Ok(()),
            (VmState::Suspended, ShutdownPolicy::Poweroff) => self.discard_saved_state(),
            (VmState::Running, ShutdownPolicy::Powerdown) => self.graceful_stop(operation),
            (VmState::Paused, ShutdownPolicy::Powerdown) => {
                // A paused guest cannot hear the request.
                self.resume_guest(operation)?;
                self.graceful_stop(operation)
            }
            (VmState::Running | VmState::Paused | VmState::Error, _) => self.force_stop(operation),
            (_, ShutdownPolicy::Poweroff) => self.force_stop(operation),
            (_, ShutdownPolicy::Powerdown | ShutdownPolicy::Halt) => {
                self.refuse(operation, hint::TRANSITIONAL)
            }
        }
    }

    /// Poweroff while another operation holds the VM (a start, pause, resume, save or
    /// restore still under way): stop now instead of queueing behind it. The framework
    /// cancels that operation, whose caller gets its error; the Poweroff then finds the
    /// VM stopping or stopped.
    fn pull_the_plug_on_operation_in_flight(&self) {
        let state = self.state();
        let cancellable = matches!(
            state,
            VmState::Starting
                | VmState::Pausing
                | VmState::Resuming
                | VmState::Saving
                | VmState::Restoring
        );
        if cancellable && self.native.can_stop() {
            log::info!("shutdown(Poweroff) while the VM is {state}: stopping it now");
            self.native.stop_detached();
        }
    }

    /// Pauses a running VM (a paused VM is left alone).
    pub fn pause(&self) -> Result<()> {
        let _serialized = lock(&self.operation_lock);
        let operation = Operation::Pause;
        match self.state() {
            VmState::Paused => Ok(()),
            VmState::Running => self.run(operation, AsyncOp::Pause, self.timeouts().pause),
            state => self.refuse(operation, refusal_hint(state)),
        }
    }

    /// Resumes a paused VM (a running VM is left alone). A suspended VM is resumed by
    /// [`VirtualMachine::start`]. A VM paused by a restore that completed after
    /// `start()` gave up on it is restored from its saved state: once it runs, that
    /// state is spent and the file is deleted, as `start()` does after a restore.
    pub fn resume(&self) -> Result<()> {
        let _serialized = lock(&self.operation_lock);
        let operation = Operation::Resume;
        match self.state() {
            VmState::Running => Ok(()),
            VmState::Paused => self.resume_guest(operation),
            state => self.refuse(operation, refusal_hint(state)),
        }
    }

    /// Suspends a running or paused VM to its saved-state file: pause, save to a
    /// temporary file next to the target, stop, rename into place. On any failure the
    /// VM is resumed if it was running (after waiting, up to the resume timeout, for an
    /// operation that outlived its own timeout to end), the temporary file is removed,
    /// and an existing saved state is never touched. The one exception is a forced stop
    /// that is still under way (or failed) after the save: the guest cannot come back,
    /// so its saved state is moved into place rather than lost, and the error is
    /// returned. A suspended VM is left alone.
    pub fn suspend(&self) -> Result<()> {
        let _serialized = lock(&self.operation_lock);
        let operation = Operation::Suspend;
        let state = self.state();
        match state {
            VmState::Suspended => return Ok(()),
            VmState::Running | VmState::Paused => {}
            state => return self.refuse(operation, refusal_hint(state)),
        }
        let target = self.saved_state.as_ref().ok_or(Error::NoSavedStatePath)?;
        if let Err(source) = &self.save_restore_check {
            return Err(Error::SuspendNotSupported {
                source: source.clone(),
            });
        }

        // Made before the pause, so nothing can fail between the pause and the save
        // without the VM being resumed.
        let temporary = CPath::new("saved-state path", &temporary_path_next_to(&target.path))?;

        let was_running = state == VmState::Running;
        if was_running {
            if let Err(error) = self.run(operation, AsyncOp::Pause, self.timeouts().pause) {
                self.resume_after_failed_suspend(operation);
                return Err(error);
            }
        }
        if let Err(error) = self.run(operation, AsyncOp::Save(&temporary.c), self.timeouts().save) {
            // A save still under way removes its file when it ends (NativeVm::run).
            remove_if_present(&temporary.path);
            if was_running {
                self.resume_after_failed_suspend(operation);
            }
            return Err(error);
        }
        // `temporary` holds the guest from here on.
        if let Err(error) = self.force_stop(operation) {
            // The forced stop may still be under way: where it ends decides whether the
            // guest survives, and so what happens to its saved state.
            let (state, _) = self
                .shared
                .wait_until(self.timeouts().stop, |state| !state.is_transitional());
            match state {
                // It went through after all: finish the suspend.
                state if state.is_stopped() => {}
                VmState::Running | VmState::Paused => {
                    // The guest is intact: a failure like any other.
                    remove_if_present(&temporary.path);
                    if was_running && state == VmState::Paused {
                        self.resume_guest_after_failure(operation);
                    }
                    return Err(error);
                }
                _ => {
                    // Still stopping, or failed: the guest is going or gone, and the
                    // saved state is its only copy. Keep it where start() looks, even
                    // over an older one. Should the VM come back paused after all,
                    // running it again spends the file.
                    move_into_place(&temporary, target)?;
                    self.restored_from_saved_state.store(true, Ordering::SeqCst);
                    log::warn!(
                        "suspend: the VM did not stop in time ({state}); its saved state is kept at {}",
                        target.path.display()
                    );
                    return Err(error);
                }
            }
        }
        move_into_place(&temporary, target)?;
        self.shared.publish(None, EventKind::Suspended);
        Ok(())
    }

    /// After a failed suspend of a running VM: waits (up to the resume timeout) for an
    /// operation still under way, such as a save that outlived its timeout, to end,
    /// then resumes the VM if it is paused.
    fn resume_after_failed_suspend(&self, operation: Operation) {
        let (state, _) = self
            .shared
            .wait_until(self.timeouts().resume, |state| !state.is_transitional());
        if state == VmState::Paused {
            self.resume_guest_after_failure(operation);
        }
    }

    fn resume_guest_after_failure(&self, operation: Operation) {
        if let Err(error) = self.run(operation, AsyncOp::Resume, self.timeouts().resume) {
            log::error!("suspend failed and the VM could not be resumed: {error}");
        }
    }

    /// Resumes a paused guest. A guest restored from the saved state, and not run
    /// since, spends that state by running: the file is deleted, as `start()` does
    /// right after a restore, so a later stop does not make the VM suspended again.
    fn resume_guest(&self, operation: Operation) -> Result<()> {
        self.run(operation, AsyncOp::Resume, self.timeouts().resume)?;
        if self.restored_from_saved_state.swap(false, Ordering::SeqCst) {
            self.remove_spent_saved_state()?;
        }
        Ok(())
    }

    /// Deletes the saved state of a guest that runs again.
    fn remove_spent_saved_state(&self) -> Result<()> {
        let Some(saved) = &self.saved_state else {
            return Ok(());
        };
        match std::fs::remove_file(&saved.path) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(Error::Io {
                    action: "the VM runs, but delete it before the VM stops or it is restored again: could not delete the saved state",
                    path: saved.path.clone(),
                    source,
                });
            }
        }
        self.shared.publish(None, EventKind::SavedStateRemoved);
        Ok(())
    }

    fn start_from_saved_state(&self) -> Result<()> {
        let saved = self
            .saved_state
            .as_ref()
            .expect("suspended implies a saved-state path");
        // Set before the restore begins: a restore that completes after its wait gave
        // up leaves a paused guest whose first resume must spend the file too.
        self.restored_from_saved_state.store(true, Ordering::SeqCst);
        match self
            .native
            .run(AsyncOp::Restore(&saved.c), self.timeouts().restore)
        {
            None => {
                return Err(self.timeout(
                    Operation::Restore,
                    self.timeouts().restore,
                    hint::TIMEOUT,
                ));
            }
            Some(Err(source)) => {
                self.restored_from_saved_state
                    .store(false, Ordering::SeqCst);
                return Err(Error::RestoreFailed {
                    path: saved.path.clone(),
                    source,
                });
            }
            Some(Ok(())) => {}
        }
        if let Err(error) = self.run(Operation::Start, AsyncOp::Resume, self.timeouts().resume) {
            // Back to stopped, so the VM is suspended again with its file untouched.
            if let Err(stop_error) = self.force_stop(Operation::Start) {
                log::error!("could not stop the VM after a failed resume: {stop_error}");
            }
            return Err(error);
        }
        self.restored_from_saved_state
            .store(false, Ordering::SeqCst);
        self.remove_spent_saved_state()
    }

    fn discard_saved_state(&self) -> Result<()> {
        let saved = self
            .saved_state
            .as_ref()
            .expect("suspended implies a saved-state path");
        self.restored_from_saved_state
            .store(false, Ordering::SeqCst);
        std::fs::remove_file(&saved.path).map_err(|source| Error::Io {
            action: "discard the saved state",
            path: saved.path.clone(),
            source,
        })?;
        self.shared.publish(None, EventKind::SavedStateRemoved);
        Ok(())
    }

    /// Asks the guest to power off and waits for it, up to the graceful timeout.
    fn graceful_stop(&self, operation: Operation) -> Result<()> {
        if let Err(source) = self.native.request_stop() {
            // The guest may have powered off by itself in the meantime.
            if self.state().is_stopped() {
                return Ok(());
            }
            return Err(Error::during(operation)(source));
        }
        let timeout = self.timeouts().graceful_shutdown;
        let preempted = || self.shared.force_stop_requested.load(Ordering::SeqCst);
        match self.shared.wait_until(timeout, |state| {
            state.is_stopped() || state == VmState::Error || preempted()
        }) {
            (VmState::Error, true) => self.refuse(operation, hint::CRASHED),
            (state, true) if !state.is_stopped() => {
                log::info!(
                    "a forced shutdown was asked during the graceful one: forcing the VM off"
                );
                self.force_stop(operation)
            }
            (_, true) => Ok(()),
            (_, false) => match self.on_graceful_timeout {
                OnGracefulTimeout::ForceStop => {
                    log::warn!("the guest did not power off within {timeout:?}; forcing it off");
                    self.force_stop(operation)
                }
                OnGracefulTimeout::Fail => {
                    Err(self.timeout(operation, timeout, hint::GRACEFUL_TIMEOUT))
                }
            },
        }
    }

    /// Forces the VM off and waits until the framework reports it stopped.
    fn force_stop(&self, operation: Operation) -> Result<()> {
        let stopped = |state: VmState| state.is_stopped();
        if stopped(self.state()) {
            return Ok(());
        }
        // Ask the framework itself: the cached state can lag behind it (after a
        // cancelled operation, its completion arrives before the stop's state events).
        let native_state = self.native.state();
        if !matches!(native_state, VmState::Stopping | VmState::Stopped) {
            if !self.native.can_stop() {
                return self.refuse(operation, hint::CANNOT_STOP);
            }
            if let Err(error) = self.run(operation, AsyncOp::Stop, self.timeouts().stop) {
                // Refused because the VM stopped in the meantime: that is success.
                let refused = matches!(error, Error::InvalidState { .. });
                if !(refused && matches!(self.native.state(), VmState::Stopping | VmState::Stopped))
                {
                    return Err(error);
                }
            }
        }
        match self.shared.wait_until(self.timeouts().stop, stopped) {
            (_, true) => Ok(()),
            (_, false) => Err(self.timeout(operation, self.timeouts().stop, hint::TIMEOUT)),
        }
    }

    /// Runs one native operation and waits for its completion.
    ///
    /// The framework refusing the operation for the VM's state (codes 3 and 4: the
    /// state changed underneath, for example a concurrent Poweroff is stopping it) is
    /// reported like any refused state, with the framework's current state.
    fn run(&self, operation: Operation, op: AsyncOp<'_>, timeout: Duration) -> Result<()> {
        match self.native.run(op, timeout) {
            Some(Ok(())) => Ok(()),
            Some(Err(source))
                if matches!(
                    source.code,
                    VzErrorCode::InvalidVirtualMachineState
                        | VzErrorCode::InvalidVirtualMachineStateTransition
                ) =>
            {
                let state = self.shared.vm_state(self.native.state());
                Err(Error::InvalidState {
                    operation,
                    state,
                    hint: refusal_hint(state),
                })
            }
            Some(Err(source)) => Err(Error::during(operation)(source)),
            None => Err(self.timeout(operation, timeout, hint::TIMEOUT)),
        }
    }

    fn refuse(&self, operation: Operation, hint: &'static str) -> Result<()> {
        Err(Error::InvalidState {
            operation,
            state: self.state(),
            hint,
        })
    }

    fn timeout(&self, operation: Operation, timeout: Duration, hint: &'static str) -> Error {
        Error::Timeout {
            operation,
            state: self.state(),
            timeout,
            hint,
        }
    }

    /// The memory balloon's target: how much memory the guest is asked to keep, in
    /// bytes.
    pub fn memory_balloon_target(&self) -> Result<u64> {
        self.require(
            self.has_memory_balloon,
            "memory balloon",
            "VmConfigBuilder::memory_balloon",
        )?;
        self.native
            .balloon_target()
            .map_err(Error::during(Operation::MemoryBalloon))
    }

    /// Asks the guest to shrink to (or grow back to) `bytes` of memory, between the
    /// host's minimum memory size and the configured memory. The framework rounds it to
    /// whole MiB.
    pub fn set_memory_balloon_target(&self, bytes: u64) -> Result<()> {
        self.require(
            self.has_memory_balloon,
            "memory balloon",
            "VmConfigBuilder::memory_balloon",
        )?;
        let min = crate::Limits::host().min_memory_size.min(self.memory_size);
        if !(min..=self.memory_size).contains(&bytes) {
            return Err(Error::BalloonTarget {
                requested: bytes,
                min,
                max: self.memory_size,
            });
        }
        self.native
            .set_balloon_target(bytes)
            .map_err(Error::during(Operation::MemoryBalloon))
    }

    /// Connects to a port the guest listens on (a running VM with a vsock device).
    pub fn vsock_connect(&self, port: u32) -> Result<VsockStream> {
        self.require(self.has_vsock, "vsock device", "VmConfigBuilder::vsock")?;
        let operation = Operation::VsockConnect(port);
        let timeout = self.timeouts().vsock_connect;
        match self.native.vsock_connect(port, timeout) {
            Some(Ok(fd)) => Ok(VsockStream::new(fd, port)),
            Some(Err(source)) => Err(Error::during(operation)(source)),
            None => Err(self.timeout(
                operation,
                timeout,
                "the guest did not answer; is it still booting?",
            )),
        }
    }

    /// Listens on host `port` for connections the guest opens (to `VMADDR_CID_HOST`).
    pub fn vsock_listen(&self, port: u32) -> Result<VsockListener> {
        self.require(self.has_vsock, "vsock device", "VmConfigBuilder::vsock")?;
        if !lock(&self.vsock_ports).insert(port) {
            return Err(Error::VsockPortInUse { port });
        }
        let (sender, receiver) = mpsc::channel();
        let ports = Arc::clone(&self.vsock_ports);
        // Freed with the native listener: then the port is free again.
        let release_port = PortRelease { ports, port };
        let accept = move |fd, guest_port, _host_port| {
            let _keep = &release_port;
            // A receiver that is gone closes the connection (the stream drops here).
            let _ = sender.send(VsockStream::new(fd, guest_port));
        };
        self.native
            .vsock_listen(port, Box::new(accept))
            .map_err(Error::during(Operation::VsockListen(port)))?;
        Ok(VsockListener::new(port, self.native.clone(), receiver))
    }

    fn require(&self, present: bool, device: &'static str, builder: &'static str) -> Result<()> {
        if present {
            Ok(())
        } else {
            Err(Error::DeviceNotConfigured { device, builder })
        }
    }

    /// The simulator's runtime controls for this VM (simulator targets only).
    #[cfg(applevz_simulator)]
    pub fn simulator(&self) -> crate::sim::SimulatorControl<'_> {
        crate::sim::SimulatorControl::new(&self.native)
    }
}

/// Frees a vsock port in the VM's bookkeeping when the native listener goes away.
struct PortRelease {
    ports: Arc<Mutex<HashSet<u32>>>,
    port: u32,
}

impl Drop for PortRelease {
    fn drop(&mut self) {
        lock(&self.ports).remove(&self.port);
    }
}

/// The way out for pause/resume/suspend refused in `state`.
fn refusal_hint(state: VmState) -> &'static str {
    match state {
        VmState::Suspended => hint::SUSPENDED,
        VmState::Stopped => hint::STOPPED,
        VmState::Error => hint::ERROR,
        VmState::Running => hint::RUNNING,
        _ => hint::TRANSITIONAL,
    }
}

/// A fresh path in the target's directory, so the final rename stays on one file
/// system and is atomic.
fn temporary_path_next_to(target: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let unique = COUNTER.fetch_add(1, Ordering::Relaxed);
    target.with_file_name(format!(".{name}.partial-{}-{unique}", std::process::id()))
}

/// Renames a saved state into place; on failure it stays at its temporary path, since
/// it may be the only copy of the guest.
fn move_into_place(temporary: &CPath, target: &CPath) -> Result<()> {
    std::fs::rename(&temporary.path, &target.path).map_err(|source| Error::Io {
        action: "move the saved state into place (it is kept at its temporary path) at",
        path: target.path.clone(),
        source,
    })
}

impl Drop for VirtualMachine {
    fn drop(&mut self) {
        let state = lock(&self.shared.observed).framework_state;
        if !matches!(state, VmState::Stopped | VmState::Stopping) && self.native.can_stop() {
            log::info!("dropping a VM that is {state}: forcing it off");
            self.native.stop_detached();
        }
        // `native` drops next: its release lets the native side free the VM once the
        // stop (and any operation still in flight) has completed.
    }
}

impl std::fmt::Debug for VirtualMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtualMachine")
            .field("state", &self.state())
            .field("saved_state", &self.saved_state_path())
            .finish_non_exhaustive()
    }
}
