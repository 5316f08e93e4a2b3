//! What this host allows: virtualization at all, save/restore, Rosetta, and the
//! limits a configuration is checked against.

use crate::ffi::host;
use crate::ffi::sys;

/// The host's configuration limits (`VZVirtualMachineConfiguration`'s class
/// properties).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Fewest virtual CPUs.
    pub min_cpu_count: u32,
    /// Most virtual CPUs.
    pub max_cpu_count: u32,
    /// Smallest memory size in bytes.
    pub min_memory_size: u64,
    /// Largest memory size in bytes.
    pub max_memory_size: u64,
}

impl Limits {
    /// The limits of this host.
    #[must_use]
    pub fn host() -> Self {
        let raw = host::limits();
        Self {
            min_cpu_count: raw.min_cpu_count,
            max_cpu_count: raw.max_cpu_count,
            min_memory_size: raw.min_memory_size,
            max_memory_size: raw.max_memory_size,
        }
    }
}

/// Whether this host supports virtualization at all (`VZVirtualMachine.isSupported`).
#[must_use]
pub fn is_supported() -> bool {
    host::is_supported()
}

/// Whether this host can save and restore VM state (Apple silicon with macOS 14+).
#[must_use]
pub fn save_restore_supported() -> bool {
    host::save_restore_supported()
}

/// Whether Rosetta for Linux can be shared with guests on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RosettaAvailability {
    /// Not on this Mac (Intel, or macOS before 13).
    NotSupported,
    /// Supported but not installed (`softwareupdate --install-rosetta`).
    NotInstalled,
    /// Ready to share.
    Installed,
}

/// Whether Rosetta for Linux is available here.
#[must_use]
pub fn rosetta_availability() -> RosettaAvailability {
    match host::rosetta_availability() {
        sys::AVZ_ROSETTA_INSTALLED => RosettaAvailability::Installed,
        sys::AVZ_ROSETTA_NOT_INSTALLED => RosettaAvailability::NotInstalled,
        _ => RosettaAvailability::NotSupported,
    }
}
