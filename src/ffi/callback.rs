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
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

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
}

impl CompletionSlot<()> {
    /// A new slot for a lifecycle operation, and the completion that fills it. The
    /// completion's context owns one reference to the slot, which its trampoline
    /// takes back exactly once.
    pub(crate) fn for_operation() -> (Arc<Self>, NativeCallback<sys::avz_completion_fn>) {
        /// # Safety
        /// `context` comes from `for_operation` and this is its one call; `error` is
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
        let slot = Self::new();
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
            }),
            completed: Condvar::new(),
        })
    }

    fn complete(&self, result: Result<T, FrameworkError>) {
        let mut outcome = lock(&self.outcome);
        if let Some(path) = outcome.abandoned_with_cleanup.take() {
            remove_saved_state_file(&path);
        }
        outcome.result = Some(result);
        drop(outcome);
        self.completed.notify_all();
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
    pub(crate) fn wait(&self, timeout: Duration) -> Option<Result<T, FrameworkError>> {
        let deadline = deadline_after(timeout);
        let mut outcome = lock(&self.outcome);
        loop {
            if let Some(result) = outcome.result.take() {
                return Some(result);
            }
            outcome = wait_until_deadline(&self.completed, outcome, deadline)?;
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
