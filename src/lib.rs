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
//! Layers, following the data flow (ARCHITECTURE.md has the map): a call goes from
//! `vm` ([`VirtualMachine`], the lifecycle) or `config` ([`VmConfigBuilder`] → checks →
//! a native configuration) down to `ffi` (safe wrappers, typed callbacks, RAII over
//! CoreFoundation handles, raw bindings) and across the C ABI; completions and state
//! events come back up the same way. Every layer speaks the vocabulary below it:
//! `state` ([`VmState`], [`Operation`], events), `framework_error` and `error`
//! ([`Error`]). On macOS the native half is the Objective-C shim over
//! Virtualization.framework; everywhere else it is a simulator of the same ABI,
//! scripted through the `sim` module. This file only declares modules and re-exports;
//! no module imports it.

#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

mod capi;
mod config;
mod deadline;
mod error;
mod ffi;
mod framework_error;
#[doc(hidden)]
pub mod probe;
#[cfg(applevz_simulator)]
pub mod sim;
mod state;
mod util;
mod vm;

pub use config::definition;
#[doc(no_inline)]
pub use config::definition::VmDefinition;
pub use config::devices::{
    CachingMode, ConsolePort, DirectoryShare, Disk, MacAddress, MacChoice, Network, SerialPort,
    SharedDirectory, StorageInterface, SyncMode,
};
pub use config::{
    EfiVariableStore, Limits, LinuxBootLoader, MachineIdentifier, OnGracefulTimeout,
    RosettaAvailability, Timeouts, VmConfig, VmConfigBuilder, is_supported, rosetta_availability,
    save_restore_supported,
};
pub use error::{Error, Remedy, Result};
pub use framework_error::{FrameworkError, VZ_ERROR_DOMAIN, VzErrorCode};
pub use state::{EventKind, Operation, ShutdownPolicy, StateEvent, VmState};
pub use vm::VirtualMachine;
pub use vm::saved_state::interrupted_suspends;
pub use vm::vsock::{VsockListener, VsockStream};

/// The lifecycle contract (`docs/lifecycle.md` in the repository): states, what each
/// operation does from each of them, the shutdown table, the order of concurrent
/// calls, and what is kept on every failure. This module has no items; it is the
/// document, shown in the API documentation.
#[doc = include_str!("../docs/lifecycle.md")]
pub mod lifecycle {}

/// True when this build runs against the simulator rather than Virtualization.framework.
#[must_use]
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
