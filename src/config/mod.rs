//! The configuration layer, in data-flow order: `builder.rs` collects what the caller
//! asks for, `validate.rs` checks it (against `host.rs`'s limits) into a [`VmConfig`],
//! `lower.rs` turns that into a native configuration. `devices.rs` describes the
//! devices a configuration holds; `definition.rs` reads and writes configurations as
//! TOML files.
//!
//! This file only declares the modules and names what the rest of the crate uses.

mod builder;
pub mod definition;
pub(crate) mod devices;
mod host;
mod lower;
mod validate;

pub use builder::{
    EfiVariableStore, LinuxBootLoader, MachineIdentifier, OnGracefulTimeout, Timeouts,
    VmConfigBuilder,
};
pub use host::{
    Limits, RosettaAvailability, is_supported, rosetta_availability, save_restore_supported,
};
pub(crate) use validate::CPath;
pub use validate::VmConfig;
