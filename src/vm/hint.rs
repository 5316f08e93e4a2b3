//! The ways out named by a refused or timed-out lifecycle operation.

use crate::state::VmState;

pub(super) const SUSPENDED: &str =
    "suspended: start() resumes it, shutdown(Poweroff) discards the saved state";
pub(super) const TRANSITIONAL: &str = "another operation is under way: wait_for_state() until it settles, \
     or shutdown(Poweroff), which waits for it and then forces the VM off";
pub(super) const ERROR: &str = "the VM failed and its guest does not run: start() boots it afresh";
pub(super) const STOPPED: &str = "the VM is not running: start() it first";
pub(super) const RUNNING: &str = "pause() it first";
pub(super) const TIMEOUT: &str = "the operation may still finish; shutdown(Poweroff) waits for it to \
     settle and then forces the VM off";
pub(super) const SETTLE_TIMEOUT: &str =
    "the operation in flight did not settle; the VM was not stopped";
pub(super) const GRACEFUL_TIMEOUT: &str = "the guest ignored the stop request (does it handle the ACPI power button?): \
     shutdown(Poweroff) forces it off, or configure OnGracefulTimeout::ForceStop";
pub(super) const CANNOT_STOP: &str = "the framework cannot stop the VM in this state";

/// The way out for start/pause/resume/suspend refused in `state`.
pub(super) fn refusal_hint(state: VmState) -> &'static str {
    match state {
        VmState::Suspended => SUSPENDED,
        VmState::Stopped => STOPPED,
        VmState::Error => ERROR,
        VmState::Running => RUNNING,
        _ => TRANSITIONAL,
    }
}
