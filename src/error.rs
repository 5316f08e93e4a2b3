//! The crate's one error type. It names operations and states (`state.rs`) and wraps
//! the framework's errors (`framework_error.rs`); neither of those refers back to it.

use std::path::PathBuf;
use std::time::Duration;

use crate::framework_error::{FrameworkError, VzErrorCode};
use crate::state::{Operation, VmState};

/// Everything that can go wrong in applevz.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The framework refused or failed an operation.
    #[error("{operation} failed: {source}")]
    Framework {
        /// What was asked.
        operation: Operation,
        /// The framework's error.
        #[source]
        source: FrameworkError,
    },

    /// The operation is not possible in the VM's current state.
    #[error("cannot {operation} while the VM is {state}: {hint}")]
    InvalidState {
        /// What was asked.
        operation: Operation,
        /// The state the VM was in.
        state: VmState,
        /// What to do instead.
        hint: &'static str,
    },

    /// The operation did not finish in time. A late completion is harmless.
    #[error("{operation} did not finish within {timeout:?}; the VM is {state}: {hint}")]
    Timeout {
        /// What was asked.
        operation: Operation,
        /// The state when the wait gave up.
        state: VmState,
        /// How long it waited.
        timeout: Duration,
        /// What to do next.
        hint: &'static str,
    },

    /// `suspend()` is impossible for this VM on this host; the VM keeps running.
    #[error("this VM cannot be suspended here (it keeps running): {source}")]
    SuspendNotSupported {
        /// Why, as the framework says it.
        #[source]
        source: FrameworkError,
    },

    /// `suspend()` needs a saved-state path in the configuration.
    #[error("suspend needs a saved-state file: set one with VmConfigBuilder::saved_state_path")]
    NoSavedStatePath,

    /// Restoring a saved state failed; the file is kept.
    #[error(
        "could not restore the saved state {path} (the file is kept; shutdown(Poweroff) \
         discards it): {source}"
    )]
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
    #[error("{what} {path}: {hint}")]
    SavedStateChanged {
        /// The saved-state file.
        path: PathBuf,
        /// What happened to it.
        what: &'static str,
        /// What to do.
        hint: &'static str,
    },

    /// A file operation of applevz itself failed.
    #[error("{action} {path}: {source}")]
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
    #[error(
        "invalid configuration: NVMe disk {path} needs the generic platform \
         (VmConfigBuilder::generic_platform)"
    )]
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
    #[error(
        "invalid configuration: a stable MAC address needs a persisted machine identity \
         (generic_platform(MachineIdentifier::Persisted(..)) or a saved-state path)"
    )]
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

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
