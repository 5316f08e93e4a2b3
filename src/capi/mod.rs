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
mod event;
#[cfg(applevz_simulator)]
mod sim_guest;
mod states;
mod subscription;
mod vm;

use std::any::Any;
use std::ffi::{c_char, c_int};
use std::panic::{AssertUnwindSafe, catch_unwind};

/// `applevz_version()`: the library's version (`"0.1.0"`), a static NUL-terminated
/// string the caller never frees.
#[unsafe(no_mangle)]
pub extern "C" fn applevz_version() -> *const c_char {
    const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");
    VERSION.as_ptr().cast()
}

/// `applevz_version_number()`: the library's version as one number,
/// `MAJOR * 1000000 + MINOR * 1000 + PATCH` (`0.1.0` is 1000), the value of the
/// header's `APPLEVZ_VERSION_NUMBER` for the same release. Taken from Cargo.toml's
/// version, which tests/capi.rs checks against the header's macros.
#[unsafe(no_mangle)]
pub extern "C" fn applevz_version_number() -> c_int {
    VERSION_NUMBER
}

/// Cargo.toml's version as `applevz_version_number()` gives it; a part of 1000 or more
/// does not build (it would overflow into the next part).
const VERSION_NUMBER: c_int = {
    let major = decimal(env!("CARGO_PKG_VERSION_MAJOR"));
    let minor = decimal(env!("CARGO_PKG_VERSION_MINOR"));
    let patch = decimal(env!("CARGO_PKG_VERSION_PATCH"));
    assert!(major < 2000 && minor < 1000 && patch < 1000);
    major * 1_000_000 + minor * 1000 + patch
};

/// A decimal number of a version part, at compile time.
const fn decimal(text: &str) -> c_int {
    let bytes = text.as_bytes();
    assert!(!bytes.is_empty());
    let mut value: c_int = 0;
    let mut at = 0;
    while at < bytes.len() {
        assert!(bytes[at].is_ascii_digit());
        value = value * 10 + (bytes[at] - b'0') as c_int;
        at += 1;
    }
    value
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_number_is_cargo_tomls_version() {
        let parts: Vec<c_int> = env!("CARGO_PKG_VERSION")
            .split(['.', '-', '+'])
            .take(3)
            .map(|part| part.parse().unwrap())
            .collect();
        assert_eq!(
            applevz_version_number(),
            parts[0] * 1_000_000 + parts[1] * 1000 + parts[2]
        );
        // SAFETY: applevz_version returns a static NUL-terminated string.
        let text = unsafe { std::ffi::CStr::from_ptr(applevz_version()) };
        assert_eq!(text.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
    }
}
