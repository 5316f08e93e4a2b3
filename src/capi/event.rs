//! `applevz_event`: one state change handed to a subscriber's callback, opaque to C and
//! read through accessor functions, so that a minor release can add what an event
//! carries (as new accessors) without changing anything a compiled caller relies on.

use crate::state::{EventKind, StateEvent};

use super::error::applevz_error;
use super::states::{APPLEVZ_STATE_INVALID, applevz_vm_state, state_to_c};

/// `applevz_event_kind`: what caused an event (`APPLEVZ_EVENT_*`).
pub type applevz_event_kind = i32;

/// Not a kind: what `applevz_event_get_kind(NULL)` returns.
pub const APPLEVZ_EVENT_INVALID: applevz_event_kind = -1;
/// The framework's state changed.
pub const APPLEVZ_EVENT_STATE_CHANGED: applevz_event_kind = 0;
/// The guest powered itself off.
pub const APPLEVZ_EVENT_GUEST_STOPPED: applevz_event_kind = 1;
/// The VM stopped because of an error (the event's error says which).
pub const APPLEVZ_EVENT_STOPPED_WITH_ERROR: applevz_event_kind = 2;
/// A network device's attachment was disconnected (the event's error says which and
/// why).
pub const APPLEVZ_EVENT_NETWORK_DISCONNECTED: applevz_event_kind = 3;
/// `applevz_vm_suspend` stored the VM's state: the VM is suspended.
pub const APPLEVZ_EVENT_SUSPENDED: applevz_event_kind = 4;
/// A saved state was restored and deleted, or discarded by a Poweroff.
pub const APPLEVZ_EVENT_SAVED_STATE_REMOVED: applevz_event_kind = 5;

/// `applevz_event`: one state change, borrowed by the callback for its duration.
pub struct applevz_event {
    state: applevz_vm_state,
    kind: applevz_event_kind,
    /// The framework's error for `STOPPED_WITH_ERROR` and `NETWORK_DISCONNECTED`.
    error: Option<applevz_error>,
}

impl applevz_event {
    /// The C view of `event`.
    pub(super) fn new(event: &StateEvent) -> Self {
        let (kind, error) = match &event.kind {
            EventKind::StateChanged => (APPLEVZ_EVENT_STATE_CHANGED, None),
            EventKind::GuestStopped => (APPLEVZ_EVENT_GUEST_STOPPED, None),
            EventKind::StoppedWithError(source) => (
                APPLEVZ_EVENT_STOPPED_WITH_ERROR,
                Some(applevz_error::from_framework(source)),
            ),
            EventKind::NetworkDisconnected(source) => (
                APPLEVZ_EVENT_NETWORK_DISCONNECTED,
                Some(applevz_error::from_framework(source)),
            ),
            EventKind::Suspended => (APPLEVZ_EVENT_SUSPENDED, None),
            EventKind::SavedStateRemoved => (APPLEVZ_EVENT_SAVED_STATE_REMOVED, None),
        };
        Self {
            state: state_to_c(event.state),
            kind,
            error,
        }
    }
}

/// `applevz_event_get_state(event)`: the VM's state after the event;
/// `APPLEVZ_STATE_INVALID` for NULL.
///
/// # Safety
/// `event` is NULL or the event a callback is running with.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn applevz_event_get_state(event: *const applevz_event) -> applevz_vm_state {
    // SAFETY: NULL or a live event, by this function's contract.
    unsafe { event.as_ref() }.map_or(APPLEVZ_STATE_INVALID, |event| event.state)
}

/// `applevz_event_get_kind(event)`: what happened; `APPLEVZ_EVENT_INVALID` for NULL.
///
/// # Safety
/// `event` is NULL or the event a callback is running with.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn applevz_event_get_kind(event: *const applevz_event) -> applevz_event_kind {
    // SAFETY: NULL or a live event, by this function's contract.
    unsafe { event.as_ref() }.map_or(APPLEVZ_EVENT_INVALID, |event| event.kind)
}

/// `applevz_event_get_error(event)`: the framework's error of a `STOPPED_WITH_ERROR` or
/// `NETWORK_DISCONNECTED` event, owned by the event; NULL otherwise or for NULL.
///
/// # Safety
/// `event` is NULL or the event a callback is running with.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn applevz_event_get_error(
    event: *const applevz_event,
) -> *const applevz_error {
    // SAFETY: NULL or a live event, by this function's contract.
    unsafe { event.as_ref() }
        .and_then(|event| event.error.as_ref())
        .map_or(std::ptr::null(), std::ptr::from_ref)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framework_error::{FrameworkError, VZ_ERROR_DOMAIN, VzErrorCode};
    use crate::state::VmState;

    #[test]
    fn accessors_read_the_event_and_tolerate_null() {
        let source = FrameworkError {
            domain: VZ_ERROR_DOMAIN.into(),
            code: VzErrorCode::Internal,
            raw_code: 1,
            description: "the guest crashed".into(),
        };
        let event = applevz_event::new(&StateEvent {
            state: VmState::Error,
            kind: EventKind::StoppedWithError(source),
        });
        // SAFETY: a live event, and NULL, are what the accessors take.
        unsafe {
            assert_eq!(applevz_event_get_state(&raw const event), 3);
            assert_eq!(
                applevz_event_get_kind(&raw const event),
                APPLEVZ_EVENT_STOPPED_WITH_ERROR
            );
            let error = applevz_event_get_error(&raw const event);
            assert_eq!(super::super::error::applevz_error_framework_code(error), 1);
            assert_eq!(
                applevz_event_get_state(std::ptr::null()),
                APPLEVZ_STATE_INVALID
            );
            assert_eq!(
                applevz_event_get_kind(std::ptr::null()),
                APPLEVZ_EVENT_INVALID
            );
            assert!(applevz_event_get_error(std::ptr::null()).is_null());
        }
        let quiet = applevz_event::new(&StateEvent {
            state: VmState::Running,
            kind: EventKind::StateChanged,
        });
        // SAFETY: a live event.
        assert!(unsafe { applevz_event_get_error(&raw const quiet) }.is_null());
    }
}
