//! How a command fails: a message and an exit status.

use std::path::Path;

use applevz::VmState;

/// Exit statuses. `run` ends with one per way the VM can end; every command uses the
/// error statuses.
pub(crate) mod exit {
    /// Success; for `run`: the guest shut down when asked.
    pub(crate) const OK: u8 = 0;
    /// An operation failed (the message says why).
    pub(crate) const ERROR: u8 = 1;
    /// Bad command-line usage (clap's own status).
    pub(crate) const USAGE: u8 = 2;
    /// No VM is running in that directory.
    pub(crate) const NOT_RUNNING: u8 = 3;
    /// The VM is in the wrong state for the command.
    pub(crate) const WRONG_STATE: u8 = 4;
    /// Not a VM directory, or its definition is invalid.
    pub(crate) const BAD_DIRECTORY: u8 = 5;
    /// `run`: the VM in that directory already runs.
    pub(crate) const ALREADY_RUNNING: u8 = 6;
    /// `init`: the directory already holds a VM.
    pub(crate) const EXISTS: u8 = 7;
    /// `run`: the guest powered itself off.
    pub(crate) const GUEST_POWERED_OFF: u8 = 10;
    /// `run`: the VM crashed (stopped with an error).
    pub(crate) const CRASHED: u8 = 11;
    /// `run`: the VM was forced off (Poweroff, Halt, or a graceful timeout).
    pub(crate) const FORCED_OFF: u8 = 12;
    /// `run`: the VM was suspended to its directory.
    pub(crate) const SUSPENDED: u8 = 13;
}

/// A command's failure: a message for stderr and an exit status.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) code: u8,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
    pub(crate) fn error(message: impl Into<String>) -> Self {
        Self::new(exit::ERROR, message)
    }
    pub(crate) fn bad_directory(message: impl Into<String>) -> Self {
        Self::new(exit::BAD_DIRECTORY, message)
    }
    pub(crate) fn already_running(message: impl Into<String>) -> Self {
        Self::new(exit::ALREADY_RUNNING, message)
    }
    pub(crate) fn not_running(message: impl Into<String>) -> Self {
        Self::new(exit::NOT_RUNNING, message)
    }
}

/// Library errors map to statuses by kind: a refused state is WRONG_STATE, a bad
/// definition BAD_DIRECTORY, the rest ERROR.
impl From<applevz::Error> for Failure {
    fn from(error: applevz::Error) -> Self {
        let code = match &error {
            applevz::Error::InvalidState { .. } => exit::WRONG_STATE,
            applevz::Error::Definition { .. } => exit::BAD_DIRECTORY,
            _ => exit::ERROR,
        };
        Self::new(code, error.to_string())
    }
}

/// A library error about the VM in `dir`, told in the tool's terms: where the
/// library's message names a way out as a library call (`start()`,
/// `shutdown(Poweroff)`), this names the command that does it.
pub(crate) fn in_dir(error: applevz::Error, dir: &Path) -> Failure {
    use applevz::{Error, Operation, ShutdownPolicy};
    let d = dir.display();
    let run = format!("`applevz run {d}`");
    let poweroff = format!("`applevz stop {d} --policy poweroff`");
    let verb = |operation: &Operation| match operation {
        Operation::Start => "start".to_owned(),
        Operation::Restore => "restore".to_owned(),
        Operation::Shutdown(ShutdownPolicy::Powerdown) => "stop".to_owned(),
        Operation::Shutdown(ShutdownPolicy::Halt) => "stop (halt)".to_owned(),
        Operation::Shutdown(ShutdownPolicy::Poweroff) => "stop (poweroff)".to_owned(),
        other => other.to_string(),
    };
    match &error {
        Error::InvalidState {
            operation, state, ..
        } => {
            let way_out = match state {
                VmState::Suspended => format!(
                    "it is suspended: {run} resumes it, {poweroff} discards the saved state"
                ),
                VmState::Stopped => format!("it is not running: {run} starts it"),
                VmState::Error => format!("the VM failed: {run} boots it afresh"),
                VmState::Running
                    if *operation == Operation::Shutdown(ShutdownPolicy::Powerdown) =>
                {
                    format!(
                        "a graceful stop is already waiting for the guest: {poweroff} (or \
                         --policy halt) cuts it short"
                    )
                }
                VmState::Running => format!("pause it first: `applevz pause {d}`"),
                _ => format!(
                    "another operation is under way: wait for it (`applevz status {d}`), or \
                     {poweroff} waits for it and then forces the VM off"
                ),
            };
            Failure::new(
                exit::WRONG_STATE,
                format!(
                    "cannot {} while the VM is {state}: {way_out}",
                    verb(operation)
                ),
            )
        }
        Error::Timeout {
            operation,
            state,
            timeout,
            ..
        } => Failure::error(format!(
            "{} did not finish within {timeout:?}; the VM is {state}: it may still finish; \
             {poweroff} waits for it to settle and then forces the VM off",
            verb(operation)
        )),
        Error::RestoreFailed { path, source } => Failure::error(format!(
            "could not restore the saved state {}: {source}. The file is kept: {poweroff} \
             discards it (the suspended guest is lost) and {run} then boots afresh",
            path.display()
        )),
        Error::SavedStateChanged { path, what, .. } => Failure::error(format!(
            "{what} {}: nothing was changed. If that file is another VM's, move it away; \
             {poweroff} discards a saved state the VM tracks",
            path.display()
        )),
        Error::NoSavedStatePath => Failure::error(format!(
            "suspend needs a saved-state file: add saved_state = \"vm.state\" to {}",
            dir.join("vm.toml").display()
        )),
        _ => Failure::from(error),
    }
}
