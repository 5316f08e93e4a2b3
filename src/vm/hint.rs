//! The ways out named by a refused or timed-out lifecycle operation. They are typed
//! ([`Remedy`]): each surface (the Rust API, the C API, the tool) words them with its
//! own names.

use crate::error::Remedy;
use crate::state::VmState;

pub(super) const SUSPENDED: Remedy = Remedy::RestoreOrDiscard;
pub(super) const TRANSITIONAL: Remedy = Remedy::WaitOrPoweroff;
pub(super) const ERROR: Remedy = Remedy::StartAfresh;
pub(super) const STOPPED: Remedy = Remedy::StartFirst;
pub(super) const RUNNING: Remedy = Remedy::PauseFirst;
pub(super) const TIMEOUT: Remedy = Remedy::MayStillFinish;
pub(super) const SETTLE_TIMEOUT: Remedy = Remedy::DidNotSettle;
pub(super) const GRACEFUL_TIMEOUT: Remedy = Remedy::GuestIgnoredStop;
pub(super) const CANNOT_STOP: Remedy = Remedy::CannotStop;
pub(super) const WAIT_TIMEOUT: Remedy = Remedy::NotThereInTime;
pub(super) const SAVED_STATE_VANISHED: Remedy = Remedy::ForgetVanishedSavedState;
pub(super) const FOREIGN_SAVED_STATE: Remedy = Remedy::LeaveForeignSavedState;

/// The way out for start/pause/resume/suspend refused in `state`.
pub(super) fn refusal_hint(state: VmState) -> Remedy {
    match state {
        VmState::Suspended => SUSPENDED,
        VmState::Stopped => STOPPED,
        VmState::Error => ERROR,
        VmState::Running => RUNNING,
        _ => TRANSITIONAL,
    }
}
