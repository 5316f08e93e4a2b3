//! `applevz_error`: the error object of the C API, its stable kinds, and the
//! out-parameter convention (`applevz_error **error`).

use std::ffi::{CString, c_char};

use crate::error::{Error, Vocabulary, chain_message};
use crate::framework_error::{FrameworkError, VzErrorCode};
use crate::state::{Operation, ShutdownPolicy};

use super::guard;

/// `applevz_error_kind`: what went wrong, a stable number (`APPLEVZ_ERROR_*`).
pub type applevz_error_kind = i32;

/// What `applevz_error_code(NULL)` returns; never the kind of an error object.
pub const APPLEVZ_ERROR_NONE: applevz_error_kind = 0;
/// A NULL pointer where one is required, or a value outside its enumeration.
pub const APPLEVZ_ERROR_INVALID_ARGUMENT: applevz_error_kind = 1;
/// The operation is not possible in the VM's state (the message says the way out).
pub const APPLEVZ_ERROR_INVALID_STATE: applevz_error_kind = 2;
/// The operation did not finish in time.
pub const APPLEVZ_ERROR_TIMEOUT: applevz_error_kind = 3;
/// The framework refused or failed the operation.
pub const APPLEVZ_ERROR_FRAMEWORK: applevz_error_kind = 4;
/// Not possible on this host or for this configuration.
pub const APPLEVZ_ERROR_NOT_SUPPORTED: applevz_error_kind = 5;
/// A file operation failed (reading the definition, the saved state).
pub const APPLEVZ_ERROR_IO: applevz_error_kind = 6;
/// The definition file or the configuration it describes is invalid.
pub const APPLEVZ_ERROR_INVALID_CONFIG: applevz_error_kind = 7;
/// The saved-state file appeared or vanished behind the VM's back.
pub const APPLEVZ_ERROR_SAVED_STATE_CHANGED: applevz_error_kind = 8;
/// Restoring the saved state failed; the file is kept.
pub const APPLEVZ_ERROR_RESTORE_FAILED: applevz_error_kind = 9;
/// `suspend` on a VM whose definition has no `saved_state`.
pub const APPLEVZ_ERROR_NO_SAVED_STATE_PATH: applevz_error_kind = 10;
/// A bug in applevz (a caught panic).
pub const APPLEVZ_ERROR_INTERNAL: applevz_error_kind = 11;

/// The C API's names for the calls and settings an error message points to: its
/// functions and constants, and the definition file's keys (the only way a C caller
/// configures a VM).
const C_WORDS: Vocabulary = Vocabulary {
    start: "applevz_vm_start",
    pause: "applevz_vm_pause",
    wait_for_state: "applevz_vm_wait_for_state",
    shutdown: c_shutdown,
    operation: c_operation,
    reopen: "open the definition again with applevz_vm_open",
    ..Vocabulary::DEFINITION_FILE
};

fn c_shutdown(policy: ShutdownPolicy) -> &'static str {
    match policy {
        ShutdownPolicy::Powerdown => "applevz_vm_shutdown with APPLEVZ_SHUTDOWN_POWERDOWN",
        ShutdownPolicy::Halt => "applevz_vm_shutdown with APPLEVZ_SHUTDOWN_HALT",
        ShutdownPolicy::Poweroff => "applevz_vm_shutdown with APPLEVZ_SHUTDOWN_POWEROFF",
    }
}

/// An operation as "cannot {operation} while …" names it: the Rust API's verbs except
/// for a shutdown, which names its policy constant.
fn c_operation(operation: Operation) -> String {
    match operation {
        Operation::Shutdown(ShutdownPolicy::Powerdown) => {
            "shut down with APPLEVZ_SHUTDOWN_POWERDOWN".into()
        }
        Operation::Shutdown(ShutdownPolicy::Halt) => "shut down with APPLEVZ_SHUTDOWN_HALT".into(),
        Operation::Shutdown(ShutdownPolicy::Poweroff) => {
            "shut down with APPLEVZ_SHUTDOWN_POWEROFF".into()
        }
        other => other.to_string(),
    }
}

/// `applevz_error`: an error handed to C (+1: the caller frees it with
/// `applevz_error_free`). Its strings live as long as it does.
#[derive(Debug)]
pub struct applevz_error {
    kind: applevz_error_kind,
    message: CString,
    /// The framework's domain and numeric code, when the error came from it.
    framework: Option<(CString, i64)>,
}

impl applevz_error {
    fn new(kind: applevz_error_kind, message: String, framework: Option<&FrameworkError>) -> Self {
        Self {
            kind,
            message: c_string(message),
            framework: framework.map(|source| (c_string(source.domain.clone()), source.raw_code)),
        }
    }

    /// A NULL or out-of-range argument.
    pub(crate) fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(APPLEVZ_ERROR_INVALID_ARGUMENT, message.into(), None)
    }

    /// A system call of the C API itself failed (no thread for a subscription).
    pub(crate) fn io(message: impl Into<String>) -> Self {
        Self::new(APPLEVZ_ERROR_IO, message.into(), None)
    }

    /// An invalid configuration that the crate's types do not describe.
    #[cfg_attr(not(applevz_simulator), allow(dead_code))]
    pub(crate) fn invalid_config(message: impl Into<String>) -> Self {
        Self::new(APPLEVZ_ERROR_INVALID_CONFIG, message.into(), None)
    }

    /// A caught panic.
    pub(crate) fn internal(what: &str, panic: &str) -> Self {
        Self::new(
            APPLEVZ_ERROR_INTERNAL,
            format!("{what}: applevz panicked (a bug, please report it): {panic}"),
            None,
        )
    }

    /// A framework error on its own (the error of a state event).
    pub(crate) fn from_framework(source: &FrameworkError) -> Self {
        let kind = if source.code == VzErrorCode::NotSupported {
            APPLEVZ_ERROR_NOT_SUPPORTED
        } else {
            APPLEVZ_ERROR_FRAMEWORK
        };
        Self::new(kind, source.to_string(), Some(source))
    }

    /// The C view of a crate error: its kind, its full message worded in the C API's
    /// names and followed by each of its causes, and the framework's domain and code
    /// when it has them.
    pub(crate) fn from_error(error: &Error) -> Self {
        let message = chain_message(error.worded(&C_WORDS), error);
        Self::new(kind_of(error), message, framework_source(error))
    }

    /// Boxes the error for C (+1).
    pub(crate) fn into_raw(self) -> *mut Self {
        Box::into_raw(Box::new(self))
    }
}

/// The framework error inside `error`, if any.
fn framework_source(error: &Error) -> Option<&FrameworkError> {
    match error {
        Error::Framework { source, .. }
        | Error::SuspendNotSupported { source }
        | Error::RestoreFailed { source, .. } => Some(source),
        _ => None,
    }
}

/// The stable kind of a crate error. Exhaustive on purpose: a new variant of
/// [`Error`] does not compile until it has a kind here.
fn kind_of(error: &Error) -> applevz_error_kind {
    match error {
        Error::Framework { source, .. } if source.code == VzErrorCode::NotSupported => {
            APPLEVZ_ERROR_NOT_SUPPORTED
        }
        Error::Framework { .. } => APPLEVZ_ERROR_FRAMEWORK,
        Error::InvalidState { .. } | Error::VsockListenerClosed { .. } => {
            APPLEVZ_ERROR_INVALID_STATE
        }
        Error::Timeout { .. } => APPLEVZ_ERROR_TIMEOUT,
        Error::SuspendNotSupported { .. }
        | Error::RosettaNotSupported
        | Error::RosettaNotInstalled => APPLEVZ_ERROR_NOT_SUPPORTED,
        Error::NoSavedStatePath => APPLEVZ_ERROR_NO_SAVED_STATE_PATH,
        Error::RestoreFailed { .. } => APPLEVZ_ERROR_RESTORE_FAILED,
        Error::SavedStateChanged { .. } => APPLEVZ_ERROR_SAVED_STATE_CHANGED,
        Error::Io { .. } => APPLEVZ_ERROR_IO,
        Error::VsockPortInUse { .. } | Error::BalloonTarget { .. } => {
            APPLEVZ_ERROR_INVALID_ARGUMENT
        }
        Error::CpuCount { .. }
        | Error::MemorySize { .. }
        | Error::MemoryNotMibMultiple { .. }
        | Error::MissingBootLoader
        | Error::FileNotFound { .. }
        | Error::FileUnusable { .. }
        | Error::InvalidMacAddress { .. }
        | Error::InteriorNul { .. }
        | Error::InvalidMachineIdentifier { .. }
        | Error::NvmeNeedsGenericPlatform { .. }
        | Error::InvalidBlockDeviceIdentifier { .. }
        | Error::StableMacNeedsIdentity
        | Error::NotADatagramSocket { .. }
        | Error::InvalidMtu { .. }
        | Error::InvalidConsolePortName { .. }
        | Error::InvalidShareTag { .. }
        | Error::InvalidShareName { .. }
        | Error::DeviceNotConfigured { .. }
        | Error::DuplicateDisk { .. }
        | Error::DuplicateMacAddress { .. }
        | Error::Definition { .. } => APPLEVZ_ERROR_INVALID_CONFIG,
    }
}

/// A C string of `text`; a NUL byte inside (which C cannot carry) becomes U+FFFD.
fn c_string(text: String) -> CString {
    CString::new(text).unwrap_or_else(|error| {
        let text = String::from_utf8_lossy(&error.into_vec()).replace('\0', "\u{FFFD}");
        CString::new(text).unwrap_or_default()
    })
}

/// Stores `error` in `*out` (+1 for the caller) unless `out` is NULL, in which case
/// the error is dropped here.
///
/// # Safety
/// `out` is NULL or valid for writing one pointer.
pub(crate) unsafe fn store(out: *mut *mut applevz_error, error: applevz_error) {
    if out.is_null() {
        return;
    }
    // SAFETY: `out` is non-NULL and, by this function's contract, valid for writing.
    unsafe { out.write(error.into_raw()) };
}

/// Runs the body of a fallible export, a panic becoming an `APPLEVZ_ERROR_INTERNAL`
/// error of `what`.
pub(crate) fn run<T>(
    what: &str,
    body: impl FnOnce() -> Result<T, applevz_error>,
) -> Result<T, applevz_error> {
    guard(body, |panic| Err(applevz_error::internal(what, &panic)))
}

/// Ends a fallible export: `Ok(value)` returns `value`; an error is stored in `*out`
/// and `failed` is returned.
///
/// # Safety
/// `out` is NULL or valid for writing one pointer.
pub(crate) unsafe fn finish<T>(
    result: Result<T, applevz_error>,
    out: *mut *mut applevz_error,
    failed: T,
) -> T {
    match result {
        Ok(value) => value,
        Err(error) => {
            // SAFETY: forwarded from this function's contract.
            unsafe { store(out, error) };
            failed
        }
    }
}

/// `applevz_error_code(error)`: the error's kind; `APPLEVZ_ERROR_NONE` for NULL.
///
/// # Safety
/// `error` is NULL or a live error from this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn applevz_error_code(error: *const applevz_error) -> applevz_error_kind {
    // SAFETY: NULL or a live error, by this function's contract.
    match unsafe { error.as_ref() } {
        Some(error) => error.kind,
        None => APPLEVZ_ERROR_NONE,
    }
}

/// `applevz_error_message(error)`: the UTF-8 message, owned by the error (valid until
/// `applevz_error_free`); a static `"no error"` for NULL.
///
/// # Safety
/// `error` is NULL or a live error from this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn applevz_error_message(error: *const applevz_error) -> *const c_char {
    // SAFETY: NULL or a live error, by this function's contract.
    match unsafe { error.as_ref() } {
        Some(error) => error.message.as_ptr(),
        None => c"no error".as_ptr(),
    }
}

/// `applevz_error_framework_domain(error)`: the framework's error domain (such as
/// `"VZErrorDomain"`), owned by the error; NULL when the error did not come from the
/// framework, or for NULL.
///
/// # Safety
/// `error` is NULL or a live error from this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn applevz_error_framework_domain(
    error: *const applevz_error,
) -> *const c_char {
    // SAFETY: NULL or a live error, by this function's contract.
    match unsafe { error.as_ref() }.and_then(|error| error.framework.as_ref()) {
        Some((domain, _)) => domain.as_ptr(),
        None => std::ptr::null(),
    }
}

/// `applevz_error_framework_code(error)`: the framework's numeric code in its domain;
/// 0 when the error did not come from the framework, or for NULL.
///
/// # Safety
/// `error` is NULL or a live error from this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn applevz_error_framework_code(error: *const applevz_error) -> i64 {
    // SAFETY: NULL or a live error, by this function's contract.
    match unsafe { error.as_ref() }.and_then(|error| error.framework.as_ref()) {
        Some((_, code)) => *code,
        None => 0,
    }
}

/// `applevz_error_free(error)`: frees an error; NULL is ignored.
///
/// # Safety
/// `error` is NULL or an error from this library not yet freed (and not the borrowed
/// error of an event).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn applevz_error_free(error: *mut applevz_error) {
    if error.is_null() {
        return;
    }
    // SAFETY: a pointer from `applevz_error::into_raw` (Box::into_raw), freed once, by
    // this function's contract. Dropping CStrings cannot panic.
    drop(unsafe { Box::from_raw(error) });
}

#[cfg(test)]
mod tests {
    use std::ffi::CStr;

    use super::*;

    #[test]
    fn a_panic_becomes_an_internal_error() {
        let result: Result<(), applevz_error> = run("applevz_test", || panic!("boom"));
        let error = result.unwrap_err();
        assert_eq!(error.kind, APPLEVZ_ERROR_INTERNAL);
        let message = error.message.to_str().unwrap();
        assert!(
            message.starts_with("applevz_test: applevz panicked"),
            "{message}"
        );
        assert!(message.ends_with(": boom"), "{message}");
        let formatted: Result<(), applevz_error> = run("x", || panic!("{}", 42));
        assert!(
            formatted
                .unwrap_err()
                .message
                .to_str()
                .unwrap()
                .ends_with(": 42")
        );
    }

    #[test]
    fn errors_keep_their_kind_message_and_framework_error() {
        let source = FrameworkError {
            domain: crate::framework_error::VZ_ERROR_DOMAIN.into(),
            code: VzErrorCode::NotSupported,
            raw_code: 10,
            description: "not on this Mac".into(),
        };
        let error = applevz_error::from_error(&Error::SuspendNotSupported { source });
        assert_eq!(error.kind, APPLEVZ_ERROR_NOT_SUPPORTED);
        let raw = error.into_raw();
        // SAFETY: a live error from into_raw, freed once at the end.
        unsafe {
            assert_eq!(applevz_error_code(raw), APPLEVZ_ERROR_NOT_SUPPORTED);
            assert_eq!(applevz_error_framework_code(raw), 10);
            let domain = CStr::from_ptr(applevz_error_framework_domain(raw));
            assert_eq!(domain.to_str().unwrap(), "VZErrorDomain");
            let message = CStr::from_ptr(applevz_error_message(raw)).to_str().unwrap();
            assert!(
                message.ends_with("not on this Mac (VZErrorDomain error 10)"),
                "{message}"
            );
            applevz_error_free(raw);
        }
        let error = applevz_error::from_error(&Error::NoSavedStatePath);
        assert_eq!(error.kind, APPLEVZ_ERROR_NO_SAVED_STATE_PATH);
        assert!(error.framework.is_none());
    }

    #[test]
    fn a_nul_byte_in_a_message_does_not_cut_it() {
        let error = applevz_error::invalid_argument("a\0b");
        assert_eq!(error.message.to_str().unwrap(), "a\u{FFFD}b");
    }
}
