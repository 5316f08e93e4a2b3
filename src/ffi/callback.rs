//! Trampolines for the C callbacks, and their contexts.
//!
//! Rules kept here, once for every callback:
//! - the context's type is bound by the compiler: each kind of callback has one
//!   constructor that makes the trampoline (generic over the closure type where there
//!   is one), the context and its release function together, as a [`NativeCallback`];
//! - no panic unwinds into C: every trampoline runs Rust code inside `catch_unwind`,
//!   and a caught panic is logged as an error;
//! - every context has exactly one owner and is freed exactly once: a completion
//!   context is an `Arc` reference owned by the native side until the completion runs
//!   (so a wait that timed out on the Rust side leaves it valid); an observer or
//!   listener context is a box owned by the native VM until its release function runs;
//!   a callback never handed over frees its context when dropped.

use std::ffi::c_void;
use std::os::fd::{FromRawFd, OwnedFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, PoisonError, Weak};
use std::time::Duration;

use crate::deadline::{Alarm, Expire};
use crate::ffi::cf::CfError;
use crate::ffi::sys;
use crate::ffi::sys::cf::CFErrorRef;
use crate::framework_error::FrameworkError;
use crate::state::{EventKind, VmState};
use crate::util::{deadline_after, lock, remove_saved_state_file, wait_until_deadline};

/// Where one asynchronous operation's outcome lands: `()` for lifecycle operations,
/// an owned descriptor for a vsock connection.
pub(crate) struct CompletionSlot<T> {
    outcome: Mutex<Outcome<T>>,
    completed: Condvar,
}

struct Outcome<T> {
    result: Option<Result<T, FrameworkError>>,
    /// Set when the waiter gave up: the saved-state file to delete when the completion
    /// arrives (with the private directory it was written in).
    abandoned_with_cleanup: Option<PathBuf>,
    /// The waiter sleeps on `completed` (a completion that arrives first needs no
    /// wake-up call).
    waiting: bool,
    /// The waiter's deadline passed (set by the deadline keeper).
    expired: bool,
}

impl CompletionSlot<()> {
    /// A new slot for a lifecycle operation, and the completion that fills it. The
    /// completion's context owns one reference to the slot, which its trampoline
    /// takes back exactly once.
    pub(crate) fn for_operation() -> (Arc<Self>, NativeCallback<sys::avz_completion_fn>) {
        Self::completion_into(Self::new())
    }

    /// The completion that fills `slot` (an empty slot: new, or reset for reuse).
    fn completion_into(slot: Arc<Self>) -> (Arc<Self>, NativeCallback<sys::avz_completion_fn>) {
        /// # Safety
        /// `context` comes from `completion_into` and this is its one call; `error` is
        /// NULL or a +1 `CFError` that this call takes over.
        unsafe extern "C" fn trampoline(context: *mut c_void, error: CFErrorRef) {
            crate::probe::completion_called();
            // SAFETY: the context owns one Arc reference, taken back here exactly once
            // (the native side calls each completion exactly once).
            let slot = unsafe { Arc::from_raw(context.cast_const().cast::<CompletionSlot<()>>()) };
            // SAFETY: the completion's error is +1 and ours to release (create rule).
            let error = unsafe { CfError::from_create_rule(error) };
            guarded("completion", move || {
                slot.complete(match error {
                    None => Ok(()),
                    Some(error) => Err(error.into()),
                });
            });
        }
        let context = Arc::clone(&slot);
        (slot, NativeCallback::with_arc(context, Some(trampoline)))
    }
}

impl CompletionSlot<OwnedFd> {
    /// A new slot for a vsock connection, and the completion that fills it (owned as
    /// for [`CompletionSlot::for_operation`]).
    pub(crate) fn for_connection() -> (Arc<Self>, NativeCallback<sys::avz_connect_fn>) {
        /// # Safety
        /// `context` comes from `for_connection` and this is its one call; `fd` is -1
        /// or a descriptor this call takes over; `error` is NULL or a +1 `CFError` that
        /// this call takes over.
        unsafe extern "C" fn trampoline(context: *mut c_void, fd: i32, error: CFErrorRef) {
            // SAFETY: one Arc reference, taken back exactly once, as for operations.
            let slot =
                unsafe { Arc::from_raw(context.cast_const().cast::<CompletionSlot<OwnedFd>>()) };
            // SAFETY: a non-negative descriptor is ours to close (the ABI hands it
            // over); the OwnedFd closes it exactly once, also when nobody waits for it
            // any more.
            let fd = (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) });
            // SAFETY: the completion's error is +1 and ours to release (create rule).
            let error = unsafe { CfError::from_create_rule(error) };
            guarded("vsock connection", move || {
                slot.complete(match (fd, error) {
                    (Some(fd), None) => Ok(fd),
                    (_, Some(error)) => Err(error.into()),
                    (None, None) => Err(FrameworkError::missing("the vsock connection failed")),
                });
            });
        }
        let slot = Self::new();
        let context = Arc::clone(&slot);
        (slot, NativeCallback::with_arc(context, Some(trampoline)))
    }
}

impl<T> CompletionSlot<T> {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            outcome: Mutex::new(Outcome {
                result: None,
                abandoned_with_cleanup: None,
                waiting: false,
                expired: false,
            }),
            completed: Condvar::new(),
        })
    }

    /// Empties `slot` for its next operation when nobody else holds it (no
    /// completion, no deadline: then none can reach it any more); false when someone
    /// does.
    fn reset(slot: &mut Arc<Self>) -> bool {
        let Some(unused) = Arc::get_mut(slot) else {
            return false;
        };
        let outcome = unused
            .outcome
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        outcome.result = None;
        outcome.abandoned_with_cleanup = None;
        outcome.waiting = false;
        outcome.expired = false;
        true
    }

    fn complete(&self, result: Result<T, FrameworkError>) {
        let mut outcome = lock(&self.outcome);
        if let Some(path) = outcome.abandoned_with_cleanup.take() {
            remove_saved_state_file(&path);
        }
        outcome.result = Some(result);
        let waiting = outcome.waiting;
        drop(outcome);
        if waiting {
            self.completed.notify_all();
        }
    }

    /// For a wait that timed out: when the operation completes after all, delete
    /// `path` (the file a late save writes, and its private directory), so nothing is
    /// left behind.
    pub(crate) fn abandon_with_cleanup(&self, path: PathBuf) {
        let mut outcome = lock(&self.outcome);
        if outcome.result.is_some() {
            // Completed between the timeout and now.
            remove_saved_state_file(&path);
        } else {
            outcome.abandoned_with_cleanup = Some(path);
        }
    }

    /// Waits for the completion up to `timeout`; `None` when it did not arrive.
    ///
    /// The wait itself has no timeout: the deadline keeper (`crate::deadline`) wakes
    /// it when the deadline passes, which spares arming a kernel timer per operation.
    /// Without a keeper thread it is a timed wait of its own.
    pub(crate) fn wait(self: &Arc<Self>, timeout: Duration) -> Option<Result<T, FrameworkError>>
    where
        T: Send + 'static,
    {
        let mut outcome = lock(&self.outcome);
        if let Some(result) = outcome.result.take() {
            return Some(result);
        }
        let deadline = deadline_after(timeout);
        let alarm = match deadline {
            None => None,
            Some(deadline) => {
                let target = Arc::downgrade(self) as Weak<dyn Expire>;
                match Alarm::arm(deadline, target) {
                    Some(alarm) => Some(alarm),
                    None => loop {
                        // No keeper thread: a timed wait of our own.
                        if let Some(result) = outcome.result.take() {
                            return Some(result);
                        }
                        outcome.waiting = true;
                        outcome = wait_until_deadline(&self.completed, outcome, Some(deadline))?;
                    },
                }
            }
        };
        loop {
            if let Some(result) = outcome.result.take() {
                drop(outcome);
                drop(alarm);
                return Some(result);
            }
            if outcome.expired {
                drop(outcome);
                drop(alarm);
                return None;
            }
            outcome.waiting = true;
            outcome = self
                .completed
                .wait(outcome)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

impl<T: Send + 'static> Expire for CompletionSlot<T> {
    fn expire(&self) {
        let mut outcome = lock(&self.outcome);
        outcome.expired = true;
        let waiting = outcome.waiting;
        drop(outcome);
        if waiting {
            self.completed.notify_all();
        }
    }
}

/// Completion slots kept for reuse by one caller whose operations are serialized (the
/// lifecycle), so an operation allocates nothing. Two of them: a completion lets go of
/// its slot just after it woke the waiter, so the slot of the operation before last is
/// free when the next one begins even if the last one's is not yet.
#[derive(Default)]
pub(crate) struct SpareSlots([Option<Arc<CompletionSlot<()>>>; 2]);

impl SpareSlots {
    /// A slot for the next operation (a spare nobody holds any more, else a new one)
    /// and the completion that fills it, as [`CompletionSlot::for_operation`].
    pub(crate) fn take(
        &mut self,
    ) -> (
        Arc<CompletionSlot<()>>,
        NativeCallback<sys::avz_completion_fn>,
    ) {
        for spare in &mut self.0 {
            if spare.as_mut().is_some_and(CompletionSlot::reset) {
                let slot = spare.take().expect("checked above");
                return CompletionSlot::completion_into(slot);
            }
        }
        CompletionSlot::for_operation()
    }

    /// Keeps `slot` (its operation completed) for a later operation.
    pub(crate) fn give_back(&mut self, slot: Arc<CompletionSlot<()>>) {
        match self.0.iter_mut().find(|spare| spare.is_none()) {
            Some(empty) => *empty = Some(slot),
            None => self.0[0] = Some(slot),
        }
    }
}

/// A completion that ignores its outcome (for `Drop`, which does not wait): no
/// context, and the error, if any, is released.
pub(crate) fn ignored_completion() -> NativeCallback<sys::avz_completion_fn> {
    /// # Safety
    /// `error` is NULL or a +1 `CFError` that this call takes over; `context` is unused.
    unsafe extern "C" fn trampoline(_context: *mut c_void, error: CFErrorRef) {
        // SAFETY: the completion's error is +1 and ours to release (create rule);
        // dropping the handle releases it.
        drop(unsafe { CfError::from_create_rule(error) });
    }
    NativeCallback {
        function: Some(trampoline),
        context: std::ptr::null_mut(),
        reclaim: |_| {},
        release: None,
    }
}

/// What the native observer reports, translated.
pub(crate) struct NativeEvent {
    pub(crate) state: VmState,
    pub(crate) kind: EventKind,
}

/// Maps the framework's raw `VZVirtualMachineState`; an unknown value (from a newer
/// framework) is reported as `Error` rather than guessed.
pub(crate) fn state_from_raw(raw: i32) -> VmState {
    match u32::try_from(raw) {
        Ok(sys::AVZ_STATE_STOPPED) => VmState::Stopped,
        Ok(sys::AVZ_STATE_RUNNING) => VmState::Running,
        Ok(sys::AVZ_STATE_PAUSED) => VmState::Paused,
        Ok(sys::AVZ_STATE_ERROR) => VmState::Error,
        Ok(sys::AVZ_STATE_STARTING) => VmState::Starting,
        Ok(sys::AVZ_STATE_PAUSING) => VmState::Pausing,
        Ok(sys::AVZ_STATE_RESUMING) => VmState::Resuming,
        Ok(sys::AVZ_STATE_STOPPING) => VmState::Stopping,
        Ok(sys::AVZ_STATE_SAVING) => VmState::Saving,
        Ok(sys::AVZ_STATE_RESTORING) => VmState::Restoring,
        _ => VmState::Error,
    }
}

/// The state observer for `avz_vm_create`: `observer` receives every event, translated,
/// until the native VM releases it.
pub(crate) fn observer<F>(observer: F) -> NativeCallback<sys::avz_state_observer_fn>
where
    F: Fn(NativeEvent) + Send + Sync + 'static,
{
    /// # Safety
    /// `context` is the live `F` of the same callback (the native VM keeps it until its
    /// release); `error` is NULL or a `CFError` borrowed for the duration of the call.
    unsafe extern "C" fn trampoline<F: Fn(NativeEvent)>(
        context: *mut c_void,
        state: i32,
        event: i32,
        error: CFErrorRef,
    ) {
        crate::probe::observer_called();
        // SAFETY: the native VM keeps the context alive until it calls the release
        // function, which happens after the last observer call; it is an `F`, as this
        // trampoline was instantiated for the box it came with.
        let observer = unsafe { &*context.cast_const().cast::<F>() };
        // SAFETY: the error is borrowed (get rule): retain it to own a reference.
        let error = unsafe { CfError::from_get_rule(error) };
        guarded("state observer", move || {
            observer(NativeEvent {
                state: state_from_raw(state),
                kind: event_kind(event, error),
            });
        });
    }
    NativeCallback::with_box(Box::new(observer), Some(trampoline::<F>))
}

/// The kind of a raw observer event.
fn event_kind(event: i32, error: Option<CfError>) -> EventKind {
    match (u32::try_from(event), error) {
        (Ok(sys::AVZ_EVENT_GUEST_STOPPED), _) => EventKind::GuestStopped,
        (Ok(sys::AVZ_EVENT_STOPPED_WITH_ERROR), Some(error)) => {
            EventKind::StoppedWithError(error.into())
        }
        (Ok(sys::AVZ_EVENT_STOPPED_WITH_ERROR), None) => {
            EventKind::StoppedWithError(FrameworkError::missing("the VM stopped"))
        }
        (Ok(sys::AVZ_EVENT_NETWORK_DISCONNECTED), Some(error)) => {
            EventKind::NetworkDisconnected(error.into())
        }
        (Ok(sys::AVZ_EVENT_NETWORK_DISCONNECTED), None) => EventKind::NetworkDisconnected(
            FrameworkError::missing("a network attachment was disconnected"),
        ),
        _ => EventKind::StateChanged,
    }
}

/// The accept callback for `avz_vm_vsock_listen`: `accept` receives every connection
/// the guest opens (owned descriptor, guest port, host port) until the listener is
/// released.
pub(crate) fn vsock_accept<F>(accept: F) -> NativeCallback<sys::avz_accept_fn>
where
    F: Fn(OwnedFd, u32, u32) + Send + Sync + 'static,
{
    /// # Safety
    /// `context` is the live `F` of the same callback; `fd` is a descriptor this call
    /// takes over (or negative).
    unsafe extern "C" fn trampoline<F: Fn(OwnedFd, u32, u32)>(
        context: *mut c_void,
        fd: i32,
        guest_port: u32,
        host_port: u32,
    ) {
        if fd < 0 {
            return;
        }
        // SAFETY: the accepted descriptor is ours (the ABI hands it over); OwnedFd
        // closes it exactly once, whether or not anyone takes the connection.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: the native side keeps the context alive until its release, which
        // never runs concurrently with an accept call; it is an `F`, as this trampoline
        // was instantiated for the box it came with.
        let accept = unsafe { &*context.cast_const().cast::<F>() };
        guarded("vsock accept", move || accept(fd, guest_port, host_port));
    }
    NativeCallback::with_box(Box::new(accept), Some(trampoline::<F>))
}

/// A callback ready for C: a trampoline, the context it reads, and for a context the
/// native side keeps, the function that releases it. Made by one constructor per kind
/// of callback ([`CompletionSlot::for_operation`], [`observer`], …), in which the
/// compiler binds the context's type to the trampoline that reads it and to the
/// function that frees it, so they cannot disagree.
///
/// [`NativeCallback::into_raw`] hands the context over; a callback dropped before that
/// frees its context itself, so every context is freed exactly once.
pub(crate) struct NativeCallback<F> {
    function: F,
    context: *mut c_void,
    /// Frees the context when it is never handed over.
    reclaim: unsafe fn(*mut c_void),
    release: sys::avz_context_release_fn,
}

impl<F> NativeCallback<F> {
    /// A context holding one reference to `slot` (given back by the trampoline).
    fn with_arc<T>(slot: Arc<T>, function: F) -> Self {
        /// # Safety
        /// `context` comes from `Arc::into_raw::<T>` and is not used afterwards.
        unsafe fn reclaim<T>(context: *mut c_void) {
            // SAFETY: the caller's guarantee; this drops the one reference it holds.
            drop(unsafe { Arc::from_raw(context.cast_const().cast::<T>()) });
        }
        Self {
            function,
            context: Arc::into_raw(slot).cast_mut().cast(),
            reclaim: reclaim::<T>,
            release: None,
        }
    }

    /// A boxed context, freed by the `release` function the native side calls.
    fn with_box<T: Send + Sync + 'static>(context: Box<T>, function: F) -> Self {
        /// # Safety
        /// `context` comes from `Box::into_raw::<T>` and is not used afterwards.
        unsafe fn reclaim<T>(context: *mut c_void) {
            // SAFETY: the caller's guarantee.
            drop(unsafe { Box::from_raw(context.cast::<T>()) });
        }
        /// `avz_context_release_fn` for the box.
        ///
        /// # Safety
        /// `context` comes from `Box::into_raw::<T>`; the native side calls this once,
        /// after the last callback.
        unsafe extern "C" fn release<T>(context: *mut c_void) {
            guarded("context release", || {
                // SAFETY: the caller's guarantee.
                unsafe { reclaim::<T>(context) };
            });
        }
        Self {
            function,
            context: Box::into_raw(context).cast(),
            reclaim: reclaim::<T>,
            release: Some(release::<T>),
        }
    }

    /// The trampoline, the context and the release function, for one native call
    /// that takes over the context (and calls the trampoline, or the release, as its
    /// contract says).
    pub(crate) fn into_raw(self) -> (F, *mut c_void, sys::avz_context_release_fn)
    where
        F: Copy,
    {
        // Not dropped: the context now belongs to the native call.
        let this = std::mem::ManuallyDrop::new(self);
        (this.function, this.context, this.release)
    }
}

impl<F> Drop for NativeCallback<F> {
    fn drop(&mut self) {
        if !self.context.is_null() {
            // SAFETY: the context was never handed over (into_raw forgets `self`), so
            // this is its one owner; `reclaim` matches the constructor that made it.
            unsafe { (self.reclaim)(self.context) };
        }
    }
}

/// Runs a callback's Rust code so that no panic unwinds into C: a panic is caught and
/// logged as the bug it is.
fn guarded(callback: &str, body: impl FnOnce()) {
    if let Err(payload) = catch_unwind(AssertUnwindSafe(body)) {
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(a panic payload that is not a string)");
        log::error!("the {callback} callback panicked (caught before reaching C): {message}");
        // Dropping the payload runs its destructor, which may panic too.
        if let Err(second) = catch_unwind(AssertUnwindSafe(move || drop(payload))) {
            std::mem::forget(second);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::OnceLock;

    /// Calls a completion the way the native side does, once.
    fn complete(callback: NativeCallback<sys::avz_completion_fn>) {
        let (function, context, _) = callback.into_raw();
        // SAFETY: the trampoline and context of one callback; this is its one call.
        unsafe { function.expect("a trampoline")(context, std::ptr::null_mut()) };
    }

    #[test]
    fn a_completion_frees_its_context_exactly_once() {
        let (slot, callback) = CompletionSlot::for_operation();
        assert_eq!(
            Arc::strong_count(&slot),
            2,
            "the native side owns one reference"
        );
        complete(callback);
        assert_eq!(Arc::strong_count(&slot), 1, "taken back by the trampoline");
        assert_eq!(slot.wait(Duration::ZERO), Some(Ok(())));
    }

    #[test]
    fn a_callback_never_handed_over_frees_its_context() {
        let (slot, callback) = CompletionSlot::for_connection();
        assert_eq!(Arc::strong_count(&slot), 2);
        drop(callback);
        assert_eq!(Arc::strong_count(&slot), 1);
    }

    #[test]
    fn spare_slots_cover_a_completion_that_has_not_let_go_yet() {
        let mut spares = SpareSlots::default();
        let (first, callback) = spares.take();
        let first_ptr = Arc::as_ptr(&first);
        complete(callback);
        assert_eq!(first.wait(Duration::ZERO), Some(Ok(())));
        // A completion still holding its slot: simulated with an extra reference.
        let lingering = Arc::clone(&first);
        spares.give_back(first);
        let (second, callback) = spares.take();
        assert!(
            !Arc::ptr_eq(&second, &lingering),
            "a held slot is not reused"
        );
        complete(callback);
        assert_eq!(second.wait(Duration::ZERO), Some(Ok(())));
        spares.give_back(second);
        drop(lingering);
        let (third, callback) = spares.take();
        assert_eq!(Arc::as_ptr(&third), first_ptr, "let go of: reused");
        assert_eq!(third.wait(Duration::ZERO), None, "an emptied slot");
        complete(callback);
        assert_eq!(third.wait(Duration::ZERO), Some(Ok(())));
    }

    #[test]
    fn a_slot_is_reused_only_once_its_completion_let_go() {
        let mut spares = SpareSlots::default();
        let (slot, callback) = spares.take();
        let first = Arc::as_ptr(&slot);
        // Still held by the native side: a fresh slot.
        spares.give_back(Arc::clone(&slot));
        let (other, other_callback) = spares.take();
        assert_ne!(Arc::as_ptr(&other), first);
        complete(callback);
        complete(other_callback);
        assert_eq!(slot.wait(Duration::ZERO), Some(Ok(())));
        // Completed and let go: the same slot, empty again.
        drop(spares);
        let mut spares = SpareSlots::default();
        spares.give_back(slot);
        let (again, again_callback) = spares.take();
        assert_eq!(Arc::as_ptr(&again), first);
        assert_eq!(again.wait(Duration::ZERO), None);
        complete(again_callback);
        assert_eq!(again.wait(Duration::ZERO), Some(Ok(())));
    }

    #[test]
    fn a_wait_times_out_through_the_deadline_keeper() {
        let (slot, callback) = CompletionSlot::for_operation();
        let began = std::time::Instant::now();
        assert_eq!(slot.wait(Duration::from_millis(30)), None);
        assert!(began.elapsed() >= Duration::from_millis(30));
        // The timed-out slot is not reused while its completion holds it.
        let mut spares = SpareSlots::default();
        spares.give_back(Arc::clone(&slot));
        let (other, other_callback) = spares.take();
        assert!(!Arc::ptr_eq(&other, &slot));
        complete(callback);
        complete(other_callback);
        assert_eq!(slot.wait(Duration::ZERO), Some(Ok(())));
        assert_eq!(other.wait(Duration::ZERO), Some(Ok(())));
    }

    #[test]
    fn a_completion_after_the_waiter_gave_up_is_harmless() {
        let (slot, callback) = CompletionSlot::for_operation();
        assert_eq!(slot.wait(Duration::from_millis(1)), None);
        drop(slot); // the waiter is gone
        // The context alone keeps the slot alive.
        complete(callback);
    }

    #[test]
    fn a_late_save_is_cleaned_up() {
        let path = std::env::temp_dir().join(format!("applevz-late-{}", std::process::id()));
        let (slot, callback) = CompletionSlot::for_operation();
        assert_eq!(slot.wait(Duration::from_millis(1)), None);
        slot.abandon_with_cleanup(path.clone());
        std::fs::write(&path, b"written by a save that completed late").unwrap();
        complete(callback);
        assert!(!path.exists());
    }

    /// Collects error records, to see that a caught panic is reported.
    struct Errors(Mutex<Vec<String>>);

    impl log::Log for Errors {
        fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
            metadata.level() == log::Level::Error
        }
        fn log(&self, record: &log::Record<'_>) {
            if self.enabled(record.metadata()) {
                lock(&self.0).push(record.args().to_string());
            }
        }
        fn flush(&self) {}
    }

    fn logged_errors() -> &'static Errors {
        static ERRORS: OnceLock<&'static Errors> = OnceLock::new();
        ERRORS.get_or_init(|| {
            let errors: &'static Errors = Box::leak(Box::new(Errors(Mutex::new(Vec::new()))));
            log::set_logger(errors).expect("no other logger in the unit tests");
            log::set_max_level(log::LevelFilter::Error);
            errors
        })
    }

    #[test]
    fn a_panicking_observer_does_not_unwind_into_c() {
        let errors = logged_errors();
        let (function, context, release) = observer(|_| panic!("observer bug")).into_raw();
        // SAFETY: the trampoline and live context of one callback; NULL error is
        // allowed; then its one release.
        unsafe {
            function.expect("a trampoline")(context, 1, 0, std::ptr::null_mut());
            release.expect("a release")(context);
        }
        assert!(
            lock(&errors.0)
                .iter()
                .any(|e| e.contains("state observer callback panicked")
                    && e.contains("observer bug")),
            "{:?}",
            lock(&errors.0)
        );
    }

    #[test]
    fn the_observer_context_is_dropped_by_its_release() {
        let witness = Arc::new(());
        let held = Arc::clone(&witness);
        let (_, context, release) = observer(move |_| {
            let _ = &held;
        })
        .into_raw();
        assert_eq!(Arc::strong_count(&witness), 2);
        // SAFETY: the one release of the callback's context.
        unsafe { release.expect("a release")(context) };
        assert_eq!(Arc::strong_count(&witness), 1);
    }
}
