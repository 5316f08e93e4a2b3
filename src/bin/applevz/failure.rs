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

/// Library errors map to statuses by kind: a refused state is `WRONG_STATE`, a bad
/// definition `BAD_DIRECTORY`, the rest ERROR.
impl From<applevz::Error> for Failure {
    fn from(error: applevz::Error) -> Self {
        let code = match &error {
            applevz::Error::InvalidState { .. } => exit::WRONG_STATE,
            applevz::Error::Definition { .. } => exit::BAD_DIRECTORY,
            _ => exit::ERROR,
        };
        Self::new(code, error.full_message())
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
        // The one file error whose action names a library call: a suspend that could
        // not rename its saved state into place.
        Error::Io {
            action,
            path,
            source,
        } if action.contains("starting the VM restores") => Failure::error(format!(
            "could not move the saved state into place ({source}): it is kept at {}, and \
             {run} restores the VM from there",
            path.display()
        )),
        Error::NoSavedStatePath => Failure::error(format!(
            "suspend needs a saved-state file: add saved_state = \"vm.state\" to {}",
            dir.join("vm.toml").display()
        )),
        _ => Failure::from(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use applevz::{Error, Operation, ShutdownPolicy};
    use std::time::Duration;

    /// Every lifecycle error, told for the tool, names commands, never library calls.
    #[test]
    fn lifecycle_errors_name_commands_not_library_calls() {
        let dir = Path::new("/vms/demo");
        let framework = || applevz::FrameworkError {
            domain: applevz::VZ_ERROR_DOMAIN.into(),
            code: applevz::VzErrorCode::Restore,
            raw_code: 12,
            description: "the saved state is damaged".into(),
        };
        let mut errors = Vec::new();
        for state in [
            VmState::Suspended,
            VmState::Stopped,
            VmState::Error,
            VmState::Running,
            VmState::Paused,
            VmState::Saving,
        ] {
            for operation in [
                Operation::Start,
                Operation::Pause,
                Operation::Resume,
                Operation::Suspend,
                Operation::Shutdown(ShutdownPolicy::Powerdown),
                Operation::Shutdown(ShutdownPolicy::Halt),
            ] {
                errors.push(Error::InvalidState {
                    operation,
                    state,
                    hint: applevz::Remedy::RestoreOrDiscard,
                });
                errors.push(Error::Timeout {
                    operation,
                    state,
                    timeout: Duration::from_secs(1),
                    hint: applevz::Remedy::MayStillFinish,
                });
            }
        }
        errors.push(Error::RestoreFailed {
            path: dir.join("vm.state"),
            source: framework(),
        });
        errors.push(Error::SavedStateChanged {
            path: dir.join("vm.state"),
            what: "a saved state this VM did not write appeared at",
            hint: applevz::Remedy::LeaveForeignSavedState,
        });
        errors.push(Error::Io {
            action: "could not move the saved state into place; it is kept, and starting the VM restores from",
            path: dir.join(".vm.state.partial-1-0/vm.state"),
            source: std::io::Error::other("disk full"),
        });
        errors.push(Error::NoSavedStatePath);
        for error in errors {
            let library = error.to_string();
            let told = in_dir(error, dir).message;
            for call in [
                "start()",
                "shutdown(",
                "wait_for_state",
                "VirtualMachine",
                "VmConfigBuilder",
            ] {
                assert!(
                    !told.contains(call),
                    "{told:?} (from {library:?}) names {call}"
                );
            }
            assert!(
                told.contains("applevz ") || told.contains("vm.toml"),
                "{told:?} names a command"
            );
        }
    }
}
