//! The C API for C and C++ programs: the functions, types and constants declared in
//! `include/applevz_vm.h`, exported with `#[unsafe(no_mangle)]` from the crate's static
//! library (`libapplevz.a`).
//!
//! It is built only on the crate's public Rust API (`VmDefinition`, `VirtualMachine`),
//! like the command-line tool, so C callers get exactly the Rust lifecycle. Not to be
//! confused with `include/applevz.h`, the internal ABI between this crate and its
//! native half.
//!
//! Rules kept by every export here:
//! - no panic crosses into C: each export's body runs inside [`guard`], and a caught
//!   panic becomes an `APPLEVZ_ERROR_INTERNAL` error (or, for a function without an
//!   error out-parameter, a documented value);
//! - a NULL pointer where one is required is an `APPLEVZ_ERROR_INVALID_ARGUMENT` error
//!   (or a documented value), never a dereference;
//! - every object handed to C is a `Box` turned into a raw pointer and freed by exactly
//!   one `*_free` function.
//!
//! The names are C's (`applevz_vm`, `applevz_vm_state`), so that the header and this
//! code read the same; `tests/capi.rs` checks that every export, type and constant here
//! matches its declaration in the header.

#![allow(non_camel_case_types)]

#[cfg(all(test, applevz_simulator))]
mod callback_tests;
mod error;
#[cfg(applevz_simulator)]
mod sim_guest;
mod states;
mod subscription;
mod vm;

use std::any::Any;
use std::ffi::c_char;
use std::panic::{AssertUnwindSafe, catch_unwind};

/// `applevz_version()`: the library's version (`"0.1.0"`), a static NUL-terminated
/// string the caller never frees.
#[unsafe(no_mangle)]
pub extern "C" fn applevz_version() -> *const c_char {
    const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");
    VERSION.as_ptr().cast()
}

/// `applevz_is_simulator()`: true when this library drives the simulator instead of
/// Virtualization.framework.
#[unsafe(no_mangle)]
pub extern "C" fn applevz_is_simulator() -> bool {
    cfg!(applevz_simulator)
}

/// Runs `body`; when it panics, returns `on_panic(message)` instead of unwinding into C.
///
/// The panic hook has already printed the panic (to stderr by default). `body` is
/// asserted unwind-safe: after a panic nothing it touched is used again except through
/// the crate's own locks, which tolerate poisoning.
pub(crate) fn guard<T>(body: impl FnOnce() -> T, on_panic: impl FnOnce(String) -> T) -> T {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(value) => value,
        Err(payload) => on_panic(panic_message(payload)),
    }
}

/// The message of a caught panic. Dropping a payload may itself panic (a payload
/// whose `Drop` panics): that second panic is caught too and its payload leaked.
fn panic_message(payload: Box<dyn Any + Send>) -> String {
    let message = if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "a panic without a message".to_owned()
    };
    if let Err(second) = catch_unwind(AssertUnwindSafe(move || drop(payload))) {
        std::mem::forget(second);
    }
    message
}
