//! The crate's one error type. It names operations and states (`state.rs`) and wraps
//! the framework's errors (`framework_error.rs`); neither of those refers back to it.

use std::path::PathBuf;
use std::time::Duration;

use crate::framework_error::{FrameworkError, VzErrorCode};
use crate::state::{Operation, ShutdownPolicy, VmState};

/// The way out of a refused or timed-out operation, kept neutral here: each surface
/// (the Rust API, the C API, the tool) words it with its own names. `Display` words it
/// for the Rust API (`start()`, `shutdown(Poweroff)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Remedy {
    /// The VM is suspended: starting it restores the saved state; a Poweroff shutdown
    /// discards it.
    RestoreOrDiscard,
    /// Another operation is under way: wait until it settles, or shut down with
    /// Poweroff, which waits for it and then forces the VM off.
    WaitOrPoweroff,
    /// The VM failed: starting it boots it afresh.
    StartAfresh,
    /// The VM is not running: start it first.
    StartFirst,
    /// The VM runs: pause it first.
    PauseFirst,
    /// The operation may still finish: a Poweroff shutdown waits for it to settle and
    /// then forces the VM off.
    MayStillFinish,
    /// The operation in flight did not settle; the VM was not stopped.
    DidNotSettle,
    /// The guest ignored the stop request: a Poweroff shutdown forces it off, or the
    /// configuration can ask for a forced stop after the graceful timeout.
    GuestIgnoredStop,
    /// The framework cannot stop the VM in this state.
    CannotStop,
    /// `wait_for_state`: the VM did not get there in time.
    NotThereInTime,
    /// The saved state vanished: nothing was restored; a Poweroff shutdown forgets it,
    /// then starting boots afresh.
    ForgetVanishedSavedState,
    /// A vsock connection: the guest did not answer (is it still booting?).
    GuestDidNotAnswer,
    /// A saved state this VM did not write appeared: it is left alone; move it away, or
    /// open a new VM to restore it.
    LeaveForeignSavedState,
}

impl Remedy {
    /// The way out in the names of `words`' surface.
    pub(crate) fn worded(self, words: &Vocabulary) -> String {
        let start = words.start;
        let poweroff = (words.shutdown)(ShutdownPolicy::Poweroff);
        match self {
            Self::RestoreOrDiscard => {
                format!("{start} restores it, {poweroff} discards the saved state")
            }
            Self::WaitOrPoweroff => format!(
                "another operation is under way: {} until it settles, or {poweroff}, which \
                 waits for it and then forces the VM off",
                words.wait_for_state
            ),
            Self::StartAfresh => {
                format!("the VM failed and its guest does not run: {start} boots it afresh")
            }
            Self::StartFirst => format!("the VM is not running: {start} boots it"),
            Self::PauseFirst => format!("pause it first with {}", words.pause),
            Self::MayStillFinish => format!(
                "the operation may still finish; {poweroff} waits for it to settle and then \
                 forces the VM off"
            ),
            Self::DidNotSettle => {
                "the operation in flight did not settle; the VM was not stopped".into()
            }
            Self::GuestIgnoredStop => format!(
                "the guest ignored the stop request (does it handle the ACPI power button?): \
                 {poweroff} forces it off, or configure {}",
                words.force_stop_on_graceful_timeout
            ),
            Self::CannotStop => "the framework cannot stop the VM in this state".into(),
            Self::NotThereInTime => "the VM did not get there in time".into(),
            Self::ForgetVanishedSavedState => {
                format!("nothing was restored; {poweroff} forgets it, then {start} boots afresh")
            }
            Self::GuestDidNotAnswer => "the guest did not answer; is it still booting?".into(),
            Self::LeaveForeignSavedState => format!(
                "it is left alone: move it away, or {} to restore it",
                words.reopen
            ),
        }
    }
}

impl std::fmt::Display for Remedy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.worded(&Vocabulary::RUST))
    }
}

/// The names one surface of applevz gives the calls and settings an error message
/// points to. The error layer words its messages with them ([`Error::worded`]); the
/// Rust API's are [`Vocabulary::RUST`], the C API has its own in `src/capi/`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Vocabulary {
    /// Starting (or restoring) the VM.
    pub(crate) start: &'static str,
    /// Pausing it.
    pub(crate) pause: &'static str,
    /// Waiting for a state.
    pub(crate) wait_for_state: &'static str,
    /// Shutting down with a policy, as a way out.
    pub(crate) shutdown: fn(ShutdownPolicy) -> &'static str,
    /// An operation, as "cannot {operation} while …" names it.
    pub(crate) operation: fn(Operation) -> String,
    /// Getting a new VM object for the same definition.
    pub(crate) reopen: &'static str,
    /// The setting that forces the VM off after the graceful timeout.
    pub(crate) force_stop_on_graceful_timeout: &'static str,
    /// The setting of the saved-state file.
    pub(crate) saved_state: &'static str,
    /// The setting that selects the generic platform.
    pub(crate) generic_platform: &'static str,
    /// The settings that give the VM a persisted identity.
    pub(crate) persisted_identity: &'static str,
}

impl Vocabulary {
    /// The Rust API's names.
    pub(crate) const RUST: Self = Self {
        start: "start()",
        pause: "pause()",
        wait_for_state: "wait_for_state()",
        shutdown: rust_shutdown,
        operation: rust_operation,
        reopen: "create a new VirtualMachine",
        force_stop_on_graceful_timeout: "OnGracefulTimeout::ForceStop",
        saved_state: "VmConfigBuilder::saved_state_path",
        generic_platform: "VmConfigBuilder::generic_platform",
        persisted_identity: "generic_platform(MachineIdentifier::Persisted(..)) or a saved-state path",
    };

    /// A VM definition file's names for its settings (the lifecycle names stay the Rust
    /// API's: a definition's errors never name a lifecycle call).
    pub(crate) const DEFINITION_FILE: Self = Self {
        force_stop_on_graceful_timeout: "on_graceful_timeout = \"force-stop\" in the definition",
        saved_state: "saved_state in the definition",
        generic_platform: "machine_identifier in the definition",
        persisted_identity: "machine_identifier or saved_state in the definition",
        ..Self::RUST
    };
}

fn rust_shutdown(policy: ShutdownPolicy) -> &'static str {
    match policy {
        ShutdownPolicy::Powerdown => "shutdown(Powerdown)",
        ShutdownPolicy::Halt => "shutdown(Halt)",
        ShutdownPolicy::Poweroff => "shutdown(Poweroff)",
    }
}

fn rust_operation(operation: Operation) -> String {
    operation.to_string()
}

/// Everything that can go wrong in applevz.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The framework refused or failed an operation.
    #[error("{}", self.worded(&Vocabulary::RUST))]
    Framework {
        /// What was asked.
        operation: Operation,
        /// The framework's error.
        #[source]
        source: FrameworkError,
    },

    /// The operation is not possible in the VM's current state.
    #[error("{}", self.worded(&Vocabulary::RUST))]
    InvalidState {
        /// What was asked.
        operation: Operation,
        /// The state the VM was in.
        state: VmState,
        /// What to do instead.
        hint: Remedy,
    },

    /// The operation did not finish in time. A late completion is harmless.
    #[error("{}", self.worded(&Vocabulary::RUST))]
    Timeout {
        /// What was asked.
        operation: Operation,
        /// The state when the wait gave up.
        state: VmState,
        /// How long it waited.
        timeout: Duration,
        /// What to do next.
        hint: Remedy,
    },

    /// `suspend()` is impossible for this VM on this host; the VM keeps running.
    #[error("this VM cannot be suspended here (it keeps running)")]
    SuspendNotSupported {
        /// Why, as the framework says it.
        #[source]
        source: FrameworkError,
    },

    /// `suspend()` needs a saved-state path in the configuration.
    #[error("{}", self.worded(&Vocabulary::RUST))]
    NoSavedStatePath,

    /// Restoring a saved state failed; the file is kept.
    #[error("{}", self.worded(&Vocabulary::RUST))]
    RestoreFailed {
        /// The saved-state file.
        path: PathBuf,
        /// The framework's reason (for example a file made by another host or
        /// configuration).
        #[source]
        source: FrameworkError,
    },

    /// The saved-state file is not where the VM left it: a file appeared at the path
    /// that this VM did not write, or the one it tracks vanished. Nothing was changed;
    /// the VM never adopts or forgets a saved state behind the caller's back.
    #[error("{}", self.worded(&Vocabulary::RUST))]
    SavedStateChanged {
        /// The saved-state file.
        path: PathBuf,
        /// What happened to it.
        what: &'static str,
        /// What to do.
        hint: Remedy,
    },

    /// A file operation of applevz itself failed.
    #[error("{action} {}", path.display())]
    Io {
        /// What applevz was doing.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },

    /// The CPU count is outside the host's limits.
    #[error("invalid configuration: {requested} CPUs is outside this host's range {min}..={max}")]
    CpuCount {
        /// Requested count.
        requested: u32,
        /// Smallest allowed.
        min: u32,
        /// Largest allowed.
        max: u32,
    },

    /// The memory size is outside the host's limits.
    #[error(
        "invalid configuration: {requested} bytes of memory is outside this host's range \
         {min}..={max}"
    )]
    MemorySize {
        /// Requested size in bytes.
        requested: u64,
        /// Smallest allowed.
        min: u64,
        /// Largest allowed.
        max: u64,
    },

    /// The memory size is not a whole number of MiB.
    #[error("invalid configuration: memory size {requested} bytes is not a multiple of 1 MiB")]
    MemoryNotMibMultiple {
        /// Requested size in bytes.
        requested: u64,
    },

    /// No boot loader was configured.
    #[error("invalid configuration: no boot loader (set linux_boot_loader or efi_boot_loader)")]
    MissingBootLoader,

    /// A file the configuration names does not exist.
    #[error("invalid configuration: {role} {path} does not exist")]
    FileNotFound {
        /// What the file is for (kernel, initrd, disk image, …).
        role: &'static str,
        /// The path.
        path: PathBuf,
    },

    /// A file the configuration names exists but cannot be used.
    #[error("invalid configuration: {role} {path} cannot be used: {reason}")]
    FileUnusable {
        /// What the file is for.
        role: &'static str,
        /// The path.
        path: PathBuf,
        /// Why (not readable, not writable, a directory, …).
        reason: String,
    },

    /// A MAC address does not parse.
    #[error("invalid configuration: MAC address {value:?} {reason}")]
    InvalidMacAddress {
        /// The address as given.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// A string that crosses to C contains a NUL byte.
    #[error("invalid configuration: {what} contains a NUL byte: {value:?}")]
    InteriorNul {
        /// Which value.
        what: &'static str,
        /// The value, lossily printed.
        value: String,
    },

    /// A machine identifier is not usable.
    #[error("invalid configuration: machine identifier ({origin}): {reason}")]
    InvalidMachineIdentifier {
        /// Where it came from (its file, or "given bytes").
        origin: String,
        /// What is wrong with it.
        reason: String,
    },

    /// An NVMe disk on a configuration without the generic platform.
    #[error("{}", self.worded(&Vocabulary::RUST))]
    NvmeNeedsGenericPlatform {
        /// The disk image.
        path: PathBuf,
    },

    /// A block device identifier the guest could not see.
    #[error("invalid configuration: block device identifier {value:?} {reason}")]
    InvalidBlockDeviceIdentifier {
        /// The identifier as given.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// Two disks are the same file (also through another path or a link).
    #[error(
        "invalid configuration: disk {index} ({path}) is the same file as disk {first}: \
         an image can be attached once"
    )]
    DuplicateDisk {
        /// The later disk's path, as given.
        path: PathBuf,
        /// Its position among the disks.
        index: usize,
        /// The position of the disk that already uses the file.
        first: usize,
    },

    /// Two network devices have the same fixed MAC address.
    #[error(
        "invalid configuration: MAC address {value} of network device {index} is already \
         network device {first}'s: each device needs its own"
    )]
    DuplicateMacAddress {
        /// The address, in canonical form.
        value: String,
        /// The later device's position among the network devices.
        index: usize,
        /// The position of the device that already has it.
        first: usize,
    },

    /// `MacChoice::Stable` without a persisted machine identity to derive it from.
    #[error("{}", self.worded(&Vocabulary::RUST))]
    StableMacNeedsIdentity,

    /// A file-handle network attachment needs a datagram socket.
    #[error("invalid configuration: the network socket is {reason}")]
    NotADatagramSocket {
        /// What the descriptor is instead.
        reason: String,
    },

    /// An MTU outside 1500..=65535.
    #[error("invalid configuration: MTU {mtu} is outside 1500..=65535")]
    InvalidMtu {
        /// The MTU as given.
        mtu: u32,
    },

    /// A console port name the guest could not see.
    #[error("invalid configuration: console port name {name:?} {reason}")]
    InvalidConsolePortName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// A virtiofs tag is not valid (or used twice).
    #[error("invalid configuration: shared-directory tag {tag:?} {reason}")]
    InvalidShareTag {
        /// The tag as given.
        tag: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The name of a directory in a multiple-directory share is not valid.
    #[error("invalid configuration: directory name {name:?} under tag {tag:?} {reason}")]
    InvalidShareName {
        /// The share's tag.
        tag: String,
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// Rosetta for Linux does not exist on this Mac.
    #[error("Rosetta for Linux needs Apple silicon with macOS 13 or later")]
    RosettaNotSupported,

    /// Rosetta for Linux is supported but not installed.
    #[error("Rosetta is not installed: run `softwareupdate --install-rosetta`")]
    RosettaNotInstalled,

    /// A runtime control for a device the configuration does not have.
    #[error("this VM has no {device}: enable it in the configuration ({builder})")]
    DeviceNotConfigured {
        /// The device.
        device: &'static str,
        /// The builder method that adds it.
        builder: &'static str,
    },

    /// A VM definition file is not valid.
    #[error(
        "{}{}: {}{reason}",
        file.display(),
        location.map(|(line, column)| format!(":{line}:{column}")).unwrap_or_default(),
        if key.is_empty() { String::new() } else { format!("{key}: ") }
    )]
    Definition {
        /// The file.
        file: PathBuf,
        /// The key (`disk[1].caching`), empty when the file as a whole is wrong.
        key: String,
        /// Why.
        reason: String,
        /// Where in the file, when known: line and column, both from 1 (the column
        /// counts characters).
        location: Option<(usize, usize)>,
    },

    /// The listener was removed or its VM destroyed.
    #[error("the vsock listener on port {port} is closed (removed, or its VM destroyed)")]
    VsockListenerClosed {
        /// The host port.
        port: u32,
    },

    /// A vsock port already has a listener of this VM.
    #[error("vsock port {port} already has a listener: drop or remove it first")]
    VsockPortInUse {
        /// The host port.
        port: u32,
    },

    /// A memory balloon target outside what the VM can use.
    #[error(
        "memory balloon target {requested} bytes is outside {min}..={max} (the configured memory)"
    )]
    BalloonTarget {
        /// Requested size in bytes.
        requested: u64,
        /// Smallest allowed (the host's minimum memory size).
        min: u64,
        /// Largest allowed (the VM's configured memory).
        max: u64,
    },
}

impl Error {
    /// This error's own message (without its sources) in the names of `words`' surface.
    /// The variants that point to a call or a setting are worded here; the others have
    /// one wording for every surface.
    pub(crate) fn worded(&self, words: &Vocabulary) -> String {
        match self {
            Self::Framework { operation, .. } => {
                format!("{} failed", (words.operation)(*operation))
            }
            Self::InvalidState {
                operation,
                state,
                hint,
            } => format!(
                "cannot {} while the VM is {state}: {}",
                (words.operation)(*operation),
                hint.worded(words)
            ),
            Self::Timeout {
                operation,
                state,
                timeout,
                hint,
            } => format!(
                "{} did not finish within {timeout:?}; the VM is {state}: {}",
                (words.operation)(*operation),
                hint.worded(words)
            ),
            Self::NoSavedStatePath => format!(
                "suspend needs a saved-state file: set {}",
                words.saved_state
            ),
            Self::RestoreFailed { path, .. } => format!(
                "could not restore the saved state {} (the file is kept; {} discards it)",
                path.display(),
                (words.shutdown)(ShutdownPolicy::Poweroff)
            ),
            Self::SavedStateChanged { path, what, hint } => {
                format!("{what} {}: {}", path.display(), hint.worded(words))
            }
            Self::NvmeNeedsGenericPlatform { path } => format!(
                "invalid configuration: NVMe disk {} needs the generic platform ({})",
                path.display(),
                words.generic_platform
            ),
            Self::StableMacNeedsIdentity => format!(
                "invalid configuration: a stable MAC address needs a persisted machine \
                 identity ({})",
                words.persisted_identity
            ),
            other => other.to_string(),
        }
    }

    /// The message followed by each of its causes, `": "`-separated, the way anyhow's
    /// `{:#}` prints a chain: the framework's or the system's reason is a cause
    /// ([`std::error::Error::source`]), not part of [`Display`](std::fmt::Display).
    #[must_use]
    pub fn full_message(&self) -> String {
        chain_message(self.to_string(), self)
    }

    /// Wraps a framework error as the failure of `operation` (for `map_err`).
    pub(crate) fn during(operation: Operation) -> impl Fn(FrameworkError) -> Self + Copy {
        move |source| Self::Framework { operation, source }
    }

    /// The framework's error code, when this error came from the framework.
    #[must_use]
    pub fn vz_code(&self) -> Option<VzErrorCode> {
        match self {
            Self::Framework { source, .. }
            | Self::SuspendNotSupported { source }
            | Self::RestoreFailed { source, .. } => Some(source.code),
            _ => None,
        }
    }
}

/// `message` followed by the messages of `error`'s sources, `": "`-separated.
pub(crate) fn chain_message(mut message: String, error: &dyn std::error::Error) -> String {
    let mut cause = error.source();
    while let Some(source) = cause {
        message.push_str(": ");
        message.push_str(&source.to_string());
        cause = source.source();
    }
    message
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    fn framework() -> FrameworkError {
        FrameworkError {
            domain: crate::framework_error::VZ_ERROR_DOMAIN.into(),
            code: VzErrorCode::Restore,
            raw_code: 12,
            description: "the saved state is damaged".into(),
        }
    }

    /// Every variant with a cause: `Display` leaves the cause out, `source()` returns
    /// it, so printing the chain the way anyhow's `{:#}` does shows each cause once.
    #[test]
    fn each_cause_is_printed_once_along_the_chain() {
        let errors = [
            Error::Framework {
                operation: Operation::Start,
                source: framework(),
            },
            Error::SuspendNotSupported {
                source: framework(),
            },
            Error::RestoreFailed {
                path: "/vms/a/vm.state".into(),
                source: framework(),
            },
            Error::Io {
                action: "read the VM definition",
                path: "/vms/a/vm.toml".into(),
                source: std::io::Error::other("disk on fire"),
            },
        ];
        for error in errors {
            let cause = error.source().expect("the cause is the source").to_string();
            assert!(!error.to_string().contains(&cause), "{error}");
            // anyhow's `{:#}`: every message of the chain, ": "-separated.
            let mut chain = vec![error.to_string()];
            let mut next = error.source();
            while let Some(source) = next {
                chain.push(source.to_string());
                next = source.source();
            }
            let printed = chain.join(": ");
            assert_eq!(printed.matches(&cause).count(), 1, "{printed}");
            assert_eq!(error.full_message(), printed);
        }
    }

    #[test]
    fn the_rust_wording_names_rust_calls_and_repeats_no_word() {
        let suspended = Error::InvalidState {
            operation: Operation::Pause,
            state: VmState::Suspended,
            hint: Remedy::RestoreOrDiscard,
        };
        assert_eq!(
            suspended.to_string(),
            "cannot pause while the VM is suspended: start() restores it, \
             shutdown(Poweroff) discards the saved state"
        );
        let refused = Error::InvalidState {
            operation: Operation::Shutdown(ShutdownPolicy::Halt),
            state: VmState::Starting,
            hint: Remedy::WaitOrPoweroff,
        };
        assert!(
            refused
                .to_string()
                .contains("wait_for_state() until it settles, or shutdown(Poweroff)"),
            "{refused}"
        );
        assert!(
            Error::NoSavedStatePath
                .to_string()
                .ends_with("set VmConfigBuilder::saved_state_path")
        );
    }
}
