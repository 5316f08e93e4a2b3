//! # applevz
//!
//! Drive Apple's Virtualization framework from Rust: configure a Linux virtual
//! machine, start it, shut it down under an explicit [`ShutdownPolicy`], pause and
//! resume it, and suspend it to a file and bring it back.
//!
//! ```no_run
//! use applevz::{LinuxBootLoader, ShutdownPolicy, VirtualMachine, VmConfig};
//!
//! # fn main() -> applevz::Result<()> {
//! let config = VmConfig::builder()
//!     .cpu_count(2)
//!     .memory_mib(1024)
//!     .linux_boot_loader(LinuxBootLoader::new("vmlinuz").initrd("initrd").command_line("console=hvc0"))
//!     .saved_state_path("vm.state")
//!     .build()?;
//! let vm = VirtualMachine::new(&config)?;
//! vm.start()?;
//! vm.suspend()?; // state saved to vm.state; the VM is Suspended
//! vm.start()?; // restored and resumed; vm.state is deleted
//! vm.shutdown(ShutdownPolicy::Powerdown)?;
//! # Ok(())
//! # }
//! ```
//!
//! Layers, following the data flow: `sys` (raw bindings) → `cf` (RAII over
//! CoreFoundation handles) → `native` (safe wrappers, callbacks) → [`VirtualMachine`]
//! (lifecycle). On macOS the native half is the Objective-C shim over
//! Virtualization.framework; everywhere else it is a simulator of the same ABI, scripted
//! through the `sim` module.

#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

mod callback;
mod capi;
mod cf;
mod config;
pub mod definition;
mod devices;
mod error;
mod machine;
mod native;
#[cfg(applevz_simulator)]
pub mod sim;
mod state;
mod sys;
mod vsock;

pub use config::{
    EfiVariableStore, Limits, LinuxBootLoader, MachineIdentifier, OnGracefulTimeout, Timeouts,
    VmConfig, VmConfigBuilder, is_supported, save_restore_supported,
};
pub use definition::VmDefinition;
pub use devices::{
    CachingMode, ConsolePort, DirectoryShare, Disk, MacAddress, MacChoice, Network,
    RosettaAvailability, SerialPort, SharedDirectory, StorageInterface, SyncMode,
    rosetta_availability,
};
pub use error::{Error, FrameworkError, Result, VZ_ERROR_DOMAIN, VzErrorCode};
pub use machine::VirtualMachine;
pub use state::{EventKind, Operation, ShutdownPolicy, StateEvent, VmState};
pub use vsock::{VsockListener, VsockStream};

/// True when this build runs against the simulator rather than Virtualization.framework.
pub const fn is_simulator() -> bool {
    cfg!(applevz_simulator)
}

/// The README's Rust example compiles (it is a doctest).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

#[cfg(test)]
mod tests {
    #[test]
    fn virtual_machine_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<super::VirtualMachine>();
    }
}
