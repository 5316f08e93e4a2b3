//! `VirtualMachine`: the lifecycle logic (the contract: [`crate::lifecycle`],
//! `docs/lifecycle.md`), on top of the safe native wrappers in `crate::ffi`.
//!
//! The framework's contract, which everything here builds on: start from stopped or
//! error; pause from running; resume from paused; forced stop from running or paused
//! only; request-stop from running; save from paused; restore into a stopped VM,
//! ending paused. No operation cancels another, so a shutdown never cuts into an
//! operation in flight: it waits for it to settle.

mod delivery;
mod devices;
mod hint;
pub(crate) mod saved_state;
mod tracker;
pub(crate) mod vsock;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::{CPath, OnGracefulTimeout, Timeouts, VmConfig};
use crate::error::{Error, Remedy, Result};
use crate::ffi::callback::{NativeEvent, SpareSlots};
use crate::ffi::native_config::{BuiltConfig, NativeConfig};
use crate::ffi::native_vm::{AsyncOp, NativeSlot, NativeVm};
use crate::framework_error::{FrameworkError, VzErrorCode};
use crate::state::{Operation, ShutdownPolicy, StateEvent, VmState};
use crate::util::lock;
use crate::vm::vsock::VsockListeners;
use hint::refusal_hint;
use tracker::{Busy, Tracked, Tracker};

/// A Linux virtual machine.
///
/// `VirtualMachine` is `Send + Sync`: share it through an `Arc`. Lifecycle operations
/// are serialized: one at a time, in the order they were called (each waits its turn;
/// shutdowns follow the table at [`VirtualMachine::shutdown`]). Every operation
/// has a timeout (see [`Timeouts`]); a completion that arrives after its wait timed
/// out is harmless.
///
/// The whole contract: [`crate::lifecycle`].
///
/// Dropping a running or paused VM forces it off, like pulling the plug, without
/// waiting for the guest: call [`VirtualMachine::shutdown`] first for a graceful stop
/// or [`VirtualMachine::suspend`] to keep its state. Drop never blocks on the guest;
/// the native side releases the VM once its last operation completed.
pub struct VirtualMachine {
    native: NativeSlot,
    /// Kept to build a fresh native VM object for each restore.
    native_config: Mutex<BuiltConfig>,
    tracker: Arc<Tracker>,
    /// Where `suspend()` stores the guest (the configuration's saved-state path).
    saved_state_target: Option<CPath>,
    save_restore_check: std::result::Result<(), FrameworkError>,
    timeouts: Mutex<Timeouts>,
    on_graceful_timeout: OnGracefulTimeout,
    memory_size: u64,
    has_memory_balloon: bool,
    has_vsock: bool,
    vsock: Arc<VsockListeners>,
    /// The guest was restored from the saved state (or a restore is still under way)
    /// and has not run since. Running it spends the file: the resume that follows
    /// deletes it, so it is never restored a second time.
    restored_from_saved_state: AtomicBool,
    /// Completion slots of past operations, reused by the next ones (no allocation per
    /// operation).
    spare_completions: Mutex<SpareSlots>,
}

impl VirtualMachine {
    /// Creates a VM from a validated configuration. When the configuration's
    /// saved-state file exists, the VM starts out [`VmState::Suspended`] and tracks
    /// that file from then on.
    ///
    /// # Errors
    /// [`Error::Framework`] (operation `create`) when the framework rejects the configuration
    /// or cannot create the VM; [`Error::InvalidMachineIdentifier`] or [`Error::Io`] for a
    /// persisted machine identity it cannot use or write.
    pub fn new(config: &VmConfig) -> Result<Self> {
        let native_config = config.to_native()?;
        native_config
            .validate()
            .map_err(Error::during(Operation::Create))?;
        let save_restore_check = native_config.validate_save_restore();
        let saved_state = config
            .saved_state
            .as_ref()
            .map(|p| p.path.clone())
            .filter(|path| path.exists());

        let tracker = Arc::new(Tracker::new(VmState::Stopped, saved_state));
        let native =
            create_native(&native_config, &tracker, 0).map_err(Error::during(Operation::Create))?;
        // A new VM is stopped, but ask the framework rather than assume it.
        let framework_state = native.state();
        tracker.update(|t| t.framework_state = framework_state, None);
        let native = NativeSlot::new(native);

        Ok(Self {
            vsock: Arc::new(VsockListeners::new(native.clone())),
            native,
            native_config: Mutex::new(BuiltConfig::new(native_config)),
            tracker,
            saved_state_target: config.saved_state.clone(),
            save_restore_check,
            timeouts: Mutex::new(config.timeouts),
            on_graceful_timeout: config.on_graceful_timeout,
            memory_size: config.memory_size(),
            has_memory_balloon: config.has_memory_balloon(),
            has_vsock: config.has_vsock(),
            restored_from_saved_state: AtomicBool::new(false),
            spare_completions: Mutex::new(SpareSlots::default()),
        })
    }

    /// The VM's state.
    pub fn state(&self) -> VmState {
        self.tracker.vm_state()
    }

    /// The per-operation timeouts in force.
    pub fn timeouts(&self) -> Timeouts {
        *lock(&self.timeouts)
    }

    /// Replaces the per-operation timeouts; operations that start afterwards use them.
    pub fn set_timeouts(&self, timeouts: Timeouts) {
        *lock(&self.timeouts) = timeouts;
    }

    /// The configured saved-state file of this VM (where `suspend()` writes).
    pub fn saved_state_path(&self) -> Option<&Path> {
        self.saved_state_target.as_ref().map(|p| p.path.as_path())
    }

    /// The file `start()` restores this VM from, when it is suspended: normally the
    /// configured saved-state path; after a suspend whose final rename failed, the
    /// temporary file that holds the guest.
    pub fn saved_state_file(&self) -> Option<std::path::PathBuf> {
        self.tracker.lock().saved_state.clone()
    }

    /// A new subscription: the receiver gets every state change from now on, in
    /// order. Dropping the receiver ends the subscription.
    pub fn subscribe(&self) -> Receiver<StateEvent> {
        let (sender, receiver) = mpsc::channel();
        self.subscribe_with(sender);
        receiver
    }

    /// A subscription into a channel of your own: every state change from now on is
    /// sent as `T::from(event)`, in order; it ends once the receiver is gone. One
    /// thread can then wait on a single channel for state changes and its own messages
    /// alike, without polling. An operation's events are all sent before the operation
    /// returns, so a message sent after it returned comes after them.
    ///
    /// The conversion runs outside every lock of the VM, on the thread that delivers
    /// the event (the framework's queue, or the thread of the operation that caused
    /// it), so it may read the VM but must not block on it: a lifecycle call made there
    /// would wait for the very queue it runs on. A conversion that panics is
    /// unsubscribed and reported once in the log; the VM and its other subscribers go
    /// on.
    pub fn subscribe_with<T: From<StateEvent> + Send + 'static>(&self, sender: mpsc::Sender<T>) {
        self.tracker
            .subscribe(Box::new(move |event| sender.send(T::from(event)).is_ok()));
    }

    /// As [`VirtualMachine::subscribe`], with a key that ends the subscription at once
    /// (its sender is dropped, so the receiver disconnects), for the C API, whose
    /// subscription threads must end when freed rather than at the next event.
    pub(crate) fn subscribe_keyed(&self) -> (Receiver<StateEvent>, SubscriptionKey) {
        let (sender, receiver) = mpsc::channel();
        let id = self
            .tracker
            .subscribe(Box::new(move |event| sender.send(event).is_ok()));
        let key = SubscriptionKey {
            tracker: Arc::downgrade(&self.tracker),
            id,
        };
        (receiver, key)
    }

    /// The lifecycle operation holding the VM now, and those waiting for it in the
    /// order they will take it: for tests that must know a call is queued before
    /// making the next one, without sleeping.
    #[doc(hidden)]
    pub fn operations_in_flight(&self) -> (Option<Operation>, Vec<Operation>) {
        self.tracker.lock().operations()
    }

    /// Waits until the VM is in `target`, up to `timeout`; event-driven.
    ///
    /// # Errors
    /// [`Error::Timeout`] when the VM is not in `target` within `timeout`.
    pub fn wait_for_state(&self, target: VmState, timeout: Duration) -> Result<()> {
        match self
            .tracker
            .wait_until(timeout, |tracked| tracked.vm_state() == target)
        {
            (_, true) => Ok(()),
            (state, false) => Err(Error::Timeout {
                operation: Operation::WaitForState(target),
                state,
                timeout,
                hint: hint::WAIT_TIMEOUT,
            }),
        }
    }

    /// Starts the VM: a stopped VM boots, a VM in the error state boots afresh, a
    /// paused one resumes, a running one is left alone, and a suspended one is
    /// restored from its saved state and resumed, after which the saved state is
    /// deleted. A failed restore keeps the file.
    ///
    /// A file at the saved-state path that this VM did not write is never adopted:
    /// starting a stopped VM then fails with [`Error::SavedStateChanged`].
    ///
    /// # Errors
    /// [`Error::InvalidState`] when an operation that outlived its own wait is still
    /// under way in the framework (starting, pausing, …);
    /// [`Error::SavedStateChanged`] for a saved state that appeared or vanished behind the VM's
    /// back; [`Error::RestoreFailed`] (the file is kept); [`Error::Framework`] and
    /// [`Error::Timeout`] from the framework's operations.
    pub fn start(&self) -> Result<()> {
        let operation = Operation::Start;
        let (_gate, timeouts, (state, has_saved_state)) = self.acquire(operation, |tracked| {
            (tracked.vm_state(), tracked.holds_saved_state())
        });
        match state {
            VmState::Running => Ok(()),
            VmState::Paused => self.resume_guest(operation),
            VmState::Suspended => self.start_from_saved_state(),
            // The guest failed after a suspend put its state in place: restore that.
            VmState::Error if has_saved_state => self.start_from_saved_state(),
            VmState::Stopped | VmState::Error => {
                self.refuse_foreign_saved_state()?;
                self.restored_from_saved_state
                    .store(false, Ordering::SeqCst);
                self.run(operation, AsyncOp::Start, timeouts.start)
            }
            _ => self.refuse(operation, hint::TRANSITIONAL),
        }
    }

    /// Stops the VM under `policy`, as the [shutdown table of the lifecycle
    /// contract](crate::lifecycle#shutdown) says:
    ///
    /// | state | Powerdown | Halt | Poweroff |
    /// |---|---|---|---|
    /// | stopped, error | no-op | no-op | no-op |
    /// | running | ask the guest, wait up to the graceful timeout, then fail or force (see [`OnGracefulTimeout`]) | forced stop | forced stop |
    /// | paused | resume, then as running | forced stop | forced stop |
    /// | suspended | invalid state | no-op | discard the saved state |
    /// | an operation in flight | wait for it to settle (bounded by its timeouts), then act on the state it settled in | same | same, never discarding a saved state |
    ///
    /// One rule for every policy: calls that conflict take the VM in the order they
    /// arrived, so a shutdown waits for the operations that came before it and goes
    /// before every one that came after it. A forced shutdown (Halt or Poweroff) asked
    /// while a Powerdown waits for the guest cuts that wait short: the Powerdown forces
    /// the VM off at once. A Poweroff that waited behind another operation never
    /// discards a saved state: only one called while the VM was already suspended, with
    /// nothing in flight or waiting, does.
    ///
    /// # Errors
    /// [`Error::InvalidState`] where the table says so; [`Error::Timeout`] when the guest
    /// ignores a Powerdown (with [`OnGracefulTimeout::Fail`]) or an operation ahead does
    /// not settle within its bound (the shutdown then gives up its place);
    /// [`Error::Framework`] when the framework refuses the stop; [`Error::Io`] when a
    /// Poweroff cannot discard the saved state (it is kept).
    pub fn shutdown(&self, policy: ShutdownPolicy) -> Result<()> {
        let operation = Operation::Shutdown(policy);
        let forced = policy != ShutdownPolicy::Powerdown;
        let (gate, found_suspended_idle) =
            self.tracker
                .acquire_bounded(self.busy(operation), forced, |tracked| {
                    tracked.idle() && tracked.vm_state() == VmState::Suspended
                });
        let _gate = match gate {
            Ok(gate) => gate,
            Err((ahead, state)) => {
                return Err(Error::Timeout {
                    operation,
                    state,
                    timeout: ahead.bound(),
                    hint: hint::SETTLE_TIMEOUT,
                });
            }
        };
        self.shutdown_settled(policy, found_suspended_idle)
    }

    fn shutdown_settled(&self, policy: ShutdownPolicy, found_suspended_idle: bool) -> Result<()> {
        let operation = Operation::Shutdown(policy);
        let mut state = self.state();
        if state.is_transitional() {
            // An operation that outlived its own wait may still be under way in the
            // framework: wait for it too, then act on where it ended.
            let timeout = self.busy(operation).bound();
            match self
                .tracker
                .wait_until(timeout, |t| !t.vm_state().is_transitional())
            {
                (settled, true) => state = settled,
                (state, false) => {
                    return Err(Error::Timeout {
                        operation,
                        state,
                        timeout,
                        hint: hint::SETTLE_TIMEOUT,
                    });
                }
            }
        }
        match (state, policy) {
            (VmState::Stopped | VmState::Error, _) => Ok(()),
            (VmState::Suspended, ShutdownPolicy::Powerdown) => {
                self.refuse(operation, hint::SUSPENDED)
            }
            (VmState::Suspended, ShutdownPolicy::Halt) => Ok(()),
            (VmState::Suspended, ShutdownPolicy::Poweroff) if found_suspended_idle => {
                self.discard_saved_state()
            }
            (VmState::Suspended, ShutdownPolicy::Poweroff) => {
                log::info!(
                    "shutdown(Poweroff): the VM became suspended while it waited; its saved state is kept"
                );
                Ok(())
            }
            (VmState::Running, ShutdownPolicy::Powerdown) => self.graceful_stop(operation),
            (VmState::Paused, ShutdownPolicy::Powerdown) => {
                // A paused guest cannot hear the request.
                self.resume_guest(operation)?;
                self.graceful_stop(operation)
            }
            (VmState::Running | VmState::Paused, _) => self.force_stop(operation),
            _ => self.refuse(operation, hint::TRANSITIONAL),
        }
    }

    /// Pauses a running VM (a paused VM is left alone).
    ///
    /// # Errors
    /// [`Error::InvalidState`] unless the VM is running or paused; [`Error::Framework`] or
    /// [`Error::Timeout`] from the framework's pause.
    pub fn pause(&self) -> Result<()> {
        let operation = Operation::Pause;
        let (_gate, timeouts, state) = self.acquire(operation, Tracked::vm_state);
        match state {
            VmState::Paused => Ok(()),
            VmState::Running => self.run(operation, AsyncOp::Pause, timeouts.pause),
            state => self.refuse(operation, refusal_hint(state)),
        }
    }

    /// Resumes a paused VM (a running VM is left alone). A suspended VM is resumed by
    /// [`VirtualMachine::start`]. A VM paused by a restore that completed after
    /// `start()` gave up on it is restored from its saved state: once it runs, that
    /// state is spent and the file is deleted, as `start()` does after a restore.
    ///
    /// # Errors
    /// [`Error::InvalidState`] unless the VM is paused or running; [`Error::Framework`] or
    /// [`Error::Timeout`] from the framework's resume; [`Error::Io`] when a spent saved state
    /// cannot be deleted.
    pub fn resume(&self) -> Result<()> {
        let operation = Operation::Resume;
        let (_gate, _, state) = self.acquire(operation, Tracked::vm_state);
        match state {
            VmState::Running => Ok(()),
            VmState::Paused => self.resume_guest(operation),
            state => self.refuse(operation, refusal_hint(state)),
        }
    }

    /// Takes the VM for `operation` once no other operation holds it; returns the
    /// timeouts it runs under and what `read` finds then, under the same lock.
    ///
    /// The state read there is the framework's, as its observer last reported it, and
    /// as good as asking the framework again: every event reaches the tracker in order,
    /// before the completion of the operation that caused it (the ABI's order of
    /// events), and the previous operation returned only after its completion, so
    /// nothing the framework did is missing. What it may still do on its own (the guest
    /// powers off, the VM fails) could come just as well right after a fresh read; an
    /// operation the framework then refuses is reported like any refused state (`run`).
    fn acquire<R>(
        &self,
        operation: Operation,
        read: impl FnOnce(&Tracked) -> R,
    ) -> (tracker::Gate<'_>, Timeouts, R) {
        let busy = self.busy(operation);
        let (gate, found) = self.tracker.acquire(busy, read);
        (gate, busy.timeouts, found)
    }

    /// `operation` holding the VM, with the timeouts it runs under.
    fn busy(&self, operation: Operation) -> Busy {
        Busy {
            operation,
            timeouts: self.timeouts(),
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

    /// Asks the guest to power off and waits for it, up to the graceful timeout.
    fn graceful_stop(&self, operation: Operation) -> Result<()> {
        if let Err(source) = self.native.get().request_stop() {
            // The guest may have powered off by itself in the meantime.
            if self.tracker.framework_state() == VmState::Stopped {
                return Ok(());
            }
            return Err(Error::during(operation)(source));
        }
        let timeout = self.timeouts().graceful_shutdown;
        let (_, ended) = self.tracker.wait_until(timeout, |t| {
            matches!(t.framework_state, VmState::Stopped | VmState::Error) || t.forced_requests > 0
        });
        match self.tracker.framework_state() {
            VmState::Stopped => Ok(()),
            VmState::Error => {
                log::warn!("{operation}: the VM failed while the guest was shutting down");
                Ok(())
            }
            _ if ended => {
                log::info!(
                    "a forced shutdown was asked during the graceful one: forcing the VM off"
                );
                self.force_stop(operation)
            }
            _ => match self.on_graceful_timeout {
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

    /// Forces a running or paused VM off and waits until the framework reports it
    /// stopped (or failed: either way the guest no longer runs).
    fn force_stop(&self, operation: Operation) -> Result<()> {
        let timeout = self.timeouts().stop;
        let gone = |state: VmState| matches!(state, VmState::Stopped | VmState::Error);
        match self.tracker.framework_state() {
            state if gone(state) => return Ok(()),
            VmState::Running | VmState::Paused => {
                if let Err(error) = self.run(operation, AsyncOp::Stop, timeout) {
                    // Refused because the guest powered off or failed in the meantime, or
                    // the stop's completion did not come although the framework reports
                    // the guest gone: either way, that is what was asked.
                    let refused = matches!(error, Error::InvalidState { .. });
                    let timed_out = matches!(error, Error::Timeout { .. });
                    let state = self.tracker.framework_state();
                    if timed_out && gone(state) {
                        log::warn!("{operation}: the VM is {state}, but its stop never completed");
                    } else if !(refused && (gone(state) || state == VmState::Stopping)) {
                        return Err(error);
                    }
                }
            }
            VmState::Stopping => {}
            _ => return self.refuse(operation, hint::CANNOT_STOP),
        }
        match self
            .tracker
            .wait_until(timeout, |t| gone(t.framework_state))
        {
            (_, true) => Ok(()),
            (_, false) => Err(self.timeout(operation, timeout, hint::TIMEOUT)),
        }
    }

    /// Runs one native operation and waits for its completion.
    ///
    /// The framework refusing the operation for the VM's state (codes 3 and 4: the
    /// state changed underneath, for example the guest powered off) is reported like
    /// any refused state.
    fn run(&self, operation: Operation, op: AsyncOp<'_>, timeout: Duration) -> Result<()> {
        // Operations are serialized, so nobody else uses the spares meanwhile (and
        // should one, it finds none and allocates). The native VM is borrowed, not
        // retained: it is replaced only by a restore, under the same gate.
        let mut spares = std::mem::take(&mut *lock(&self.spare_completions));
        let outcome = self
            .native
            .with(|native| native.run_reusing(op, timeout, &mut spares));
        *lock(&self.spare_completions) = spares;
        match outcome {
            Some(Ok(())) => Ok(()),
            Some(Err(source))
                if matches!(
                    source.code,
                    VzErrorCode::InvalidVirtualMachineState
                        | VzErrorCode::InvalidVirtualMachineStateTransition
                ) =>
            {
                let state = self.state();
                log::debug!("{operation} refused by the framework: {source}");
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

    fn refuse(&self, operation: Operation, hint: Remedy) -> Result<()> {
        Err(Error::InvalidState {
            operation,
            state: self.state(),
            hint,
        })
    }

    fn timeout(&self, operation: Operation, timeout: Duration, hint: Remedy) -> Error {
        Error::Timeout {
            operation,
            state: self.state(),
            timeout,
            hint,
        }
    }
}

/// Ends one subscription of a VM, if the VM is still there (see
/// [`VirtualMachine::subscribe_keyed`]).
pub(crate) struct SubscriptionKey {
    tracker: std::sync::Weak<Tracker>,
    id: u64,
}

impl SubscriptionKey {
    /// Ends the subscription: when this returns its sender is dropped (unless called
    /// from inside a delivery to it, when that happens right after).
    pub(crate) fn cancel(&self) {
        if let Some(tracker) = self.tracker.upgrade() {
            tracker.unsubscribe(self.id);
        }
    }
}

/// A native VM whose events reach `tracker` as coming from native object `generation`.
fn create_native(
    config: &NativeConfig,
    tracker: &Arc<Tracker>,
    generation: u64,
) -> std::result::Result<NativeVm, FrameworkError> {
    let observer = Arc::clone(tracker);
    NativeVm::create(config, move |event: NativeEvent| {
        observer.on_native_event(generation, event);
    })
}

impl Busy {
    /// The longest a forced shutdown waits for the operation: the sum of the timeouts
    /// of the steps it may take (computed only when someone waits).
    fn bound(&self) -> Duration {
        let t = &self.timeouts;
        let sum = |steps: &[Duration]| {
            steps
                .iter()
                .fold(Duration::ZERO, |total, step| total.saturating_add(*step))
        };
        match self.operation {
            // Booting, or restoring, resuming and (on failure) stopping again.
            Operation::Start => sum(&[t.start.max(t.restore), t.resume, t.stop]),
            Operation::Pause => t.pause,
            Operation::Resume => t.resume,
            // Pause, save, stop, settle; or, on failure, resume.
            Operation::Suspend => sum(&[t.pause, t.save, t.stop, t.stop, t.resume]),
            Operation::Shutdown(ShutdownPolicy::Powerdown) => {
                sum(&[t.resume, t.graceful_shutdown, t.stop])
            }
            _ => sum(&[t.stop, t.stop]),
        }
    }
}

impl Drop for VirtualMachine {
    fn drop(&mut self) {
        let state = self.tracker.framework_state();
        if matches!(state, VmState::Running | VmState::Paused) {
            log::info!("dropping a VM that is {state}: forcing it off");
            self.native.get().stop_detached();
        }
        // The native VM drops next: its release lets the native side free it once the
        // stop (and any operation still in flight) has completed.
    }
}

impl std::fmt::Debug for VirtualMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtualMachine")
            .field("state", &self.state())
            .field("saved_state", &self.saved_state_file())
            .finish_non_exhaustive()
    }
}
