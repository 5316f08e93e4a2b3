//! Trampolines for the C callbacks.
//!
//! Rules kept here, once for every callback:
//! - no panic unwinds into C: every trampoline runs Rust code inside `catch_unwind`;
//! - every context has exactly one owner and is freed exactly once: a completion
//!   context is an `Arc` reference owned by the native side until the completion runs
//!   (so a wait that timed out on the Rust side leaves it valid); an observer context
//!   is a box owned by the native VM until its release function runs.

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
use crate::util::{deadline_after, lock, remove_if_present, wait_until_deadline};

/// Where one asynchronous operation's outcome lands: `()` for lifecycle operations,
/// an owned descriptor for a vsock connection.
pub(crate) struct CompletionSlot<T = ()> {
    outcome: Mutex<Outcome<T>>,
    completed: Condvar,
}

struct Outcome<T> {
    result: Option<Result<T, FrameworkError>>,
    /// Set when the waiter gave up: the file to delete when the completion arrives.
    abandoned_with_cleanup: Option<PathBuf>,
}

impl<T> CompletionSlot<T> {
    /// A new slot and the raw context to hand to the native call. The context owns one
    /// reference to the slot; the completion trampoline takes it back exactly once.
    pub(crate) fn new() -> (Arc<Self>, *mut c_void) {
        let slot = Arc::new(Self {
            outcome: Mutex::new(Outcome {
                result: None,
                abandoned_with_cleanup: None,
            }),
            completed: Condvar::new(),
        });
        let context = Arc::into_raw(Arc::clone(&slot)).cast_mut().cast::<c_void>();
        (slot, context)
    }

    fn complete(&self, result: Result<T, FrameworkError>) {
        let mut outcome = lock(&self.outcome);
        if let Some(path) = outcome.abandoned_with_cleanup.take() {
            remove_if_present(&path);
        }
        outcome.result = Some(result);
        drop(outcome);
        self.completed.notify_all();
    }

    /// For a wait that timed out: when the operation completes after all, delete
    /// `path` (the file a late save writes), so nothing is left behind.
    pub(crate) fn abandon_with_cleanup(&self, path: PathBuf) {
        let mut outcome = lock(&self.outcome);
        if outcome.result.is_some() {
            // Completed between the timeout and now.
            remove_if_present(&path);
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

/// `avz_completion_fn` for contexts made by [`CompletionSlot::new`].
///
/// # Safety
/// `context` comes from [`CompletionSlot::new`] and this is its one call; `error` is
/// NULL or a +1 CFError that this call takes over.
pub(crate) unsafe extern "C" fn completion_trampoline(context: *mut c_void, error: CFErrorRef) {
    // SAFETY: the context owns one Arc reference, taken back here exactly once (the
    // native side calls each completion exactly once).
    let slot = unsafe { Arc::from_raw(context.cast_const().cast::<CompletionSlot>()) };
    // SAFETY: the completion's error is +1 and ours to release (create rule).
    let error = unsafe { CfError::from_create_rule(error) };
    let _ = catch_unwind(AssertUnwindSafe(move || {
        slot.complete(match error {
            None => Ok(()),
            Some(error) => Err(error.into()),
        });
    }));
}

/// `avz_connect_fn` for contexts made by `CompletionSlot::<OwnedFd>::new`.
///
/// # Safety
/// `context` comes from `CompletionSlot::<OwnedFd>::new` and this is its one call;
/// `fd` is -1 or a descriptor this call takes over; `error` is NULL or a +1 CFError
/// that this call takes over.
pub(crate) unsafe extern "C" fn connect_trampoline(
    context: *mut c_void,
    fd: i32,
    error: CFErrorRef,
) {
    // SAFETY: as completion_trampoline: one Arc reference, taken back exactly once.
    let slot = unsafe { Arc::from_raw(context.cast_const().cast::<CompletionSlot<OwnedFd>>()) };
    // SAFETY: a non-negative descriptor is ours to close (the ABI hands it over); the
    // OwnedFd closes it exactly once, also when nobody waits for it any more.
    let fd = (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) });
    // SAFETY: the completion's error is +1 and ours to release (create rule).
    let error = unsafe { CfError::from_create_rule(error) };
    let _ = catch_unwind(AssertUnwindSafe(move || {
        slot.complete(match (fd, error) {
            (Some(fd), None) => Ok(fd),
            (_, Some(error)) => Err(error.into()),
            (None, None) => Err(FrameworkError::missing("the vsock connection failed")),
        });
    }));
}

/// `avz_completion_fn` that ignores the outcome (used by `Drop`, which does not wait).
///
/// # Safety
/// `error` is NULL or a +1 CFError that this call takes over; `context` is unused.
pub(crate) unsafe extern "C" fn ignore_completion(_context: *mut c_void, error: CFErrorRef) {
    // SAFETY: the completion's error is +1 and ours to release (create rule); dropping
    // the handle releases it.
    drop(unsafe { CfError::from_create_rule(error) });
}

/// What the native observer reports, translated.
pub(crate) struct NativeEvent {
    pub(crate) state: VmState,
    pub(crate) kind: EventKind,
}

/// Maps the framework's raw `VZVirtualMachineState`; an unknown value (from a newer
/// framework) is reported as `Error` rather than guessed.
pub(crate) fn state_from_raw(raw: i32) -> VmState {
    match raw as u32 {
        sys::AVZ_STATE_STOPPED => VmState::Stopped,
        sys::AVZ_STATE_RUNNING => VmState::Running,
        sys::AVZ_STATE_PAUSED => VmState::Paused,
        sys::AVZ_STATE_ERROR => VmState::Error,
        sys::AVZ_STATE_STARTING => VmState::Starting,
        sys::AVZ_STATE_PAUSING => VmState::Pausing,
        sys::AVZ_STATE_RESUMING => VmState::Resuming,
        sys::AVZ_STATE_STOPPING => VmState::Stopping,
        sys::AVZ_STATE_SAVING => VmState::Saving,
        sys::AVZ_STATE_RESTORING => VmState::Restoring,
        _ => VmState::Error,
    }
}

/// The Rust side of the state observer.
pub(crate) type ObserverFn = Box<dyn Fn(NativeEvent) + Send + Sync>;

/// `avz_state_observer_fn` for contexts made by `box_into_raw::<ObserverFn>`.
///
/// # Safety
/// `context` comes from `box_into_raw::<ObserverFn>` and has not been released; `error` is
/// NULL or a CFError borrowed for the duration of the call.
pub(crate) unsafe extern "C" fn observer_trampoline(
    context: *mut c_void,
    state: i32,
    event: i32,
    error: CFErrorRef,
) {
    // SAFETY: the native VM keeps the context alive until it calls the release
    // function, which happens after the last observer call.
    let observer = unsafe { &*context.cast_const().cast::<ObserverFn>() };
    // SAFETY: the error is borrowed (get rule): retain it to own a reference.
    let error = unsafe { CfError::from_get_rule(error) };
    let _ = catch_unwind(AssertUnwindSafe(move || {
        let kind = match (event as u32, error) {
            (sys::AVZ_EVENT_GUEST_STOPPED, _) => EventKind::GuestStopped,
            (sys::AVZ_EVENT_STOPPED_WITH_ERROR, Some(error)) => {
                EventKind::StoppedWithError(error.into())
            }
            (sys::AVZ_EVENT_STOPPED_WITH_ERROR, None) => {
                EventKind::StoppedWithError(FrameworkError::missing("the VM stopped"))
            }
            (sys::AVZ_EVENT_NETWORK_DISCONNECTED, Some(error)) => {
                EventKind::NetworkDisconnected(error.into())
            }
            (sys::AVZ_EVENT_NETWORK_DISCONNECTED, None) => EventKind::NetworkDisconnected(
                FrameworkError::missing("a network attachment was disconnected"),
            ),
            _ => EventKind::StateChanged,
        };
        observer(NativeEvent {
            state: state_from_raw(state),
            kind,
        });
    }));
}

/// The Rust side of a vsock listener: an accepted connection (owned descriptor,
/// guest port, host port).
pub(crate) type AcceptFn = Box<dyn Fn(OwnedFd, u32, u32) + Send + Sync>;

/// Turns a callback into the context of a boxed-callback ABI (observer, listener).
pub(crate) fn box_into_raw<T>(callback: T) -> *mut c_void {
    Box::into_raw(Box::new(callback)).cast()
}

/// `avz_accept_fn` for contexts made by `box_into_raw::<AcceptFn>`.
///
/// # Safety
/// `context` is a live `AcceptFn` context; `fd` is a descriptor this call takes over.
pub(crate) unsafe extern "C" fn accept_trampoline(
    context: *mut c_void,
    fd: i32,
    guest_port: u32,
    host_port: u32,
) {
    if fd < 0 {
        return;
    }
    // SAFETY: the accepted descriptor is ours (the ABI hands it over); OwnedFd closes it
    // exactly once, whether or not anyone takes the connection.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: the native side keeps the context alive until its release, which never
    // runs concurrently with an accept call.
    let accept = unsafe { &*context.cast_const().cast::<AcceptFn>() };
    let _ = catch_unwind(AssertUnwindSafe(move || accept(fd, guest_port, host_port)));
}

/// `avz_context_release_fn` for contexts made by [`box_into_raw`] with `T`.
///
/// # Safety
/// `context` comes from `box_into_raw::<T>`; this is its one release.
pub(crate) unsafe extern "C" fn release_box<T>(context: *mut c_void) {
    // SAFETY: the native side calls the release function exactly once, after the last
    // callback; the box was made by `box_into_raw::<T>`.
    let callback = unsafe { Box::from_raw(context.cast::<T>()) };
    let _ = catch_unwind(AssertUnwindSafe(move || drop(callback)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_completion_frees_its_context_exactly_once() {
        let (slot, context) = CompletionSlot::<()>::new();
        assert_eq!(
            Arc::strong_count(&slot),
            2,
            "the native side owns one reference"
        );
        // SAFETY: `context` comes from CompletionSlot::new; this is its one call.
        unsafe { completion_trampoline(context, std::ptr::null_mut()) };
        assert_eq!(Arc::strong_count(&slot), 1, "taken back by the trampoline");
        assert_eq!(slot.wait(Duration::ZERO), Some(Ok(())));
    }

    #[test]
    fn a_completion_after_the_waiter_gave_up_is_harmless() {
        let (slot, context) = CompletionSlot::<()>::new();
        assert_eq!(slot.wait(Duration::from_millis(1)), None);
        drop(slot); // the waiter is gone
        // SAFETY: as above; the context alone keeps the slot alive.
        unsafe { completion_trampoline(context, std::ptr::null_mut()) };
    }

    #[test]
    fn a_late_save_is_cleaned_up() {
        let path = std::env::temp_dir().join(format!("applevz-late-{}", std::process::id()));
        let (slot, context) = CompletionSlot::<()>::new();
        assert_eq!(slot.wait(Duration::from_millis(1)), None);
        slot.abandon_with_cleanup(path.clone());
        std::fs::write(&path, b"written by a save that completed late").unwrap();
        // SAFETY: as above.
        unsafe { completion_trampoline(context, std::ptr::null_mut()) };
        assert!(!path.exists());
    }

    #[test]
    fn a_panicking_observer_does_not_unwind_into_c() {
        let context = box_into_raw::<ObserverFn>(Box::new(|_| panic!("observer bug")));
        // SAFETY: a live context from observer_into_raw; NULL error is allowed.
        unsafe {
            observer_trampoline(context, 1, 0, std::ptr::null_mut());
            release_box::<ObserverFn>(context);
        }
    }

    #[test]
    fn the_observer_context_is_dropped_by_its_release() {
        let witness = Arc::new(());
        let held = Arc::clone(&witness);
        let context = box_into_raw::<ObserverFn>(Box::new(move |_| {
            let _ = &held;
        }));
        assert_eq!(Arc::strong_count(&witness), 2);
        // SAFETY: the one release of a context from box_into_raw.
        unsafe { release_box::<ObserverFn>(context) };
        assert_eq!(Arc::strong_count(&witness), 1);
    }
}
