//! The native layer: everything that touches the C ABI of `include/applevz.h`, in
//! data-flow order:
//!
//! - `sys`: raw bindings (bindgen output, checked in) and the CoreFoundation subset;
//! - `cf`: RAII over CoreFoundation handles, and the one conversion of a `CFError`;
//! - `callback`: the trampolines C calls back into, and their contexts;
//! - `host`, `native_config`, `native_vm`: safe wrappers, one method per native
//!   function; `knobs`: the simulator's extra functions, wrapped the same way.
//!
//! Nothing above this module calls `unsafe` code of the bindings.

pub(crate) mod callback;
pub(crate) mod cf;
pub(crate) mod host;
#[cfg(applevz_simulator)]
pub(crate) mod knobs;
pub(crate) mod native_config;
pub(crate) mod native_vm;
pub(crate) mod sys;
