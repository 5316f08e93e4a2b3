//! What the Virtualization framework reports when it fails: a domain, a code (named
//! when the domain is `VZErrorDomain`) and a description, copied out of the native
//! `CFError` (see `cf.rs`, the one place where that happens).

/// The Virtualization framework's error domain.
pub const VZ_ERROR_DOMAIN: &str = "VZErrorDomain";

/// The codes of `VZErrorDomain` (`VZErrorCode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VzErrorCode {
    /// 1: an internal framework error.
    Internal,
    /// 2: the configuration is invalid (also what a missing entitlement looks like).
    InvalidVirtualMachineConfiguration,
    /// 3: the VM is in the wrong state for the request.
    InvalidVirtualMachineState,
    /// 4: the VM cannot go from its state to the one requested.
    InvalidVirtualMachineStateTransition,
    /// 5: a disk image is invalid.
    InvalidDiskImage,
    /// 6: too many VMs on this host.
    VirtualMachineLimitExceeded,
    /// 7: a network error.
    NetworkError,
    /// 8: the host ran out of disk space.
    OutOfDiskSpace,
    /// 9: the operation was cancelled (Apple documents it for cancelled installations,
    /// not for lifecycle calls).
    OperationCancelled,
    /// 10: not supported on this host.
    NotSupported,
    /// 11: saving the VM's state failed.
    Save,
    /// 12: restoring the VM's state failed.
    Restore,
    /// A code this crate has no name for, or a code of another domain.
    Other(i64),
}

impl VzErrorCode {
    /// Names `code` when `domain` is `VZErrorDomain`.
    #[must_use]
    pub fn from_domain_and_code(domain: &str, code: i64) -> Self {
        if domain != VZ_ERROR_DOMAIN {
            return Self::Other(code);
        }
        match code {
            1 => Self::Internal,
            2 => Self::InvalidVirtualMachineConfiguration,
            3 => Self::InvalidVirtualMachineState,
            4 => Self::InvalidVirtualMachineStateTransition,
            5 => Self::InvalidDiskImage,
            6 => Self::VirtualMachineLimitExceeded,
            7 => Self::NetworkError,
            8 => Self::OutOfDiskSpace,
            9 => Self::OperationCancelled,
            10 => Self::NotSupported,
            11 => Self::Save,
            12 => Self::Restore,
            other => Self::Other(other),
        }
    }
}

/// An error reported by the Virtualization framework (or by the simulator, which
/// uses the same domain and codes).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{description} ({domain} error {raw_code})")]
pub struct FrameworkError {
    /// The error domain, e.g. `VZErrorDomain` or `NSPOSIXErrorDomain`.
    pub domain: String,
    /// The code, named when the domain is `VZErrorDomain`.
    pub code: VzErrorCode,
    /// The numeric code as the framework gave it.
    pub raw_code: i64,
    /// The framework's description.
    pub description: String,
}

impl FrameworkError {
    /// Stands in for an error the native side should have produced but did not (a
    /// broken ABI contract), so the failure is still reported, never lost.
    pub(crate) fn missing(what: &str) -> Self {
        Self {
            domain: VZ_ERROR_DOMAIN.to_owned(),
            code: VzErrorCode::Internal,
            raw_code: 1,
            description: format!("{what}, but the native side gave no error object"),
        }
    }
}
