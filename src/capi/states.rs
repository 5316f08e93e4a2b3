//! `applevz_vm_state`: the eleven states and their C values and names.

use std::ffi::{CStr, c_char};

use crate::state::VmState;

/// `applevz_vm_state`: the VM's state (`APPLEVZ_STATE_*`).
pub type applevz_vm_state = i32;

/// Not a state: what `applevz_vm_get_state(NULL)` returns.
pub const APPLEVZ_STATE_INVALID: applevz_vm_state = -1;
/// Not running; no saved state.
pub const APPLEVZ_STATE_STOPPED: applevz_vm_state = 0;
/// The guest runs.
pub const APPLEVZ_STATE_RUNNING: applevz_vm_state = 1;
/// The guest is frozen in memory.
pub const APPLEVZ_STATE_PAUSED: applevz_vm_state = 2;
/// The VM stopped because of an error.
pub const APPLEVZ_STATE_ERROR: applevz_vm_state = 3;
/// Booting.
pub const APPLEVZ_STATE_STARTING: applevz_vm_state = 4;
/// Going from running to paused.
pub const APPLEVZ_STATE_PAUSING: applevz_vm_state = 5;
/// Going from paused to running.
pub const APPLEVZ_STATE_RESUMING: applevz_vm_state = 6;
/// Going from running or paused to stopped.
pub const APPLEVZ_STATE_STOPPING: applevz_vm_state = 7;
/// Writing the VM's state to a file.
pub const APPLEVZ_STATE_SAVING: applevz_vm_state = 8;
/// Reading the VM's state from a file.
pub const APPLEVZ_STATE_RESTORING: applevz_vm_state = 9;
/// Stopped, with a saved state that `applevz_vm_start` restores.
pub const APPLEVZ_STATE_SUSPENDED: applevz_vm_state = 10;

/// Every state with its C value and name, in one place.
const STATES: [(VmState, applevz_vm_state, &CStr); 11] = [
    (VmState::Stopped, APPLEVZ_STATE_STOPPED, c"stopped"),
    (VmState::Running, APPLEVZ_STATE_RUNNING, c"running"),
    (VmState::Paused, APPLEVZ_STATE_PAUSED, c"paused"),
    (VmState::Error, APPLEVZ_STATE_ERROR, c"error"),
    (VmState::Starting, APPLEVZ_STATE_STARTING, c"starting"),
    (VmState::Pausing, APPLEVZ_STATE_PAUSING, c"pausing"),
    (VmState::Resuming, APPLEVZ_STATE_RESUMING, c"resuming"),
    (VmState::Stopping, APPLEVZ_STATE_STOPPING, c"stopping"),
    (VmState::Saving, APPLEVZ_STATE_SAVING, c"saving"),
    (VmState::Restoring, APPLEVZ_STATE_RESTORING, c"restoring"),
    (VmState::Suspended, APPLEVZ_STATE_SUSPENDED, c"suspended"),
];

/// The C value of a state. Exhaustive on purpose: a new [`VmState`] does not compile
/// until it has a value here (and, the unit test says, a row in `STATES`).
pub(super) fn state_to_c(state: VmState) -> applevz_vm_state {
    match state {
        VmState::Stopped => APPLEVZ_STATE_STOPPED,
        VmState::Running => APPLEVZ_STATE_RUNNING,
        VmState::Paused => APPLEVZ_STATE_PAUSED,
        VmState::Error => APPLEVZ_STATE_ERROR,
        VmState::Starting => APPLEVZ_STATE_STARTING,
        VmState::Pausing => APPLEVZ_STATE_PAUSING,
        VmState::Resuming => APPLEVZ_STATE_RESUMING,
        VmState::Stopping => APPLEVZ_STATE_STOPPING,
        VmState::Saving => APPLEVZ_STATE_SAVING,
        VmState::Restoring => APPLEVZ_STATE_RESTORING,
        VmState::Suspended => APPLEVZ_STATE_SUSPENDED,
    }
}

pub(super) fn state_from_c(value: applevz_vm_state) -> Option<VmState> {
    STATES
        .iter()
        .find(|(_, known, _)| *known == value)
        .map(|(state, _, _)| *state)
}

/// `applevz_state_name(state)`: `"stopped"`, `"running"`, … `"suspended"`; `"invalid"`
/// for a value that is not a state. A static string.
#[unsafe(no_mangle)]
pub extern "C" fn applevz_state_name(state: applevz_vm_state) -> *const c_char {
    STATES
        .iter()
        .find(|(_, value, _)| *value == state)
        .map_or(c"invalid", |(_, _, name)| name)
        .as_ptr()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_has_one_value_and_one_name() {
        for (state, value, name) in STATES {
            assert_eq!(state_to_c(state), value, "{state:?}");
            assert_eq!(state_from_c(value), Some(state));
            // SAFETY: applevz_state_name returns a static NUL-terminated string.
            let c_name = unsafe { CStr::from_ptr(applevz_state_name(value)) };
            assert_eq!(c_name, name);
        }
        let values: std::collections::BTreeSet<_> = STATES.iter().map(|row| row.1).collect();
        assert_eq!(values.len(), STATES.len());
        assert_eq!(state_from_c(APPLEVZ_STATE_INVALID), None);
        assert_eq!(state_from_c(11), None);
    }
}
