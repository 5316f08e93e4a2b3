//! RAII over CoreFoundation-compatible handles.
//!
//! Ownership is visible at every call site through two named constructors, after
//! CoreFoundation's two rules:
//! - [`CfHandle::from_create_rule`]: the pointer came from a function that returns +1
//!   ("Create"/"Copy", or an applevz function documented "returns +1"); the handle takes
//!   over that reference.
//! - [`CfHandle::from_get_rule`]: the pointer is borrowed (+0, "Get", or a borrowed
//!   callback argument); the handle retains it to own a reference of its own.
//!
//! Drop releases exactly the one reference the handle owns.

use std::ffi::c_char;
use std::ptr::NonNull;

use crate::ffi::sys::cf::{
    CFErrorCopyDescription, CFErrorGetCode, CFErrorGetDomain, CFErrorRef, CFRelease, CFRetain,
    CFStringGetCString, CFStringGetLength, CFStringGetMaximumSizeForEncoding, CFStringRef,
    CFTypeRef, kCFStringEncodingUTF8,
};
use crate::framework_error::{FrameworkError, VzErrorCode};

/// One owned reference to a CoreFoundation-compatible object.
///
/// Neither `Send` nor `Sync`: whether an object may cross threads depends on what it
/// is, so each wrapper that owns a handle says so itself, with its reason
/// (`NativeVm`, `BuiltConfig`).
#[derive(Debug)]
pub(crate) struct CfHandle(NonNull<std::ffi::c_void>);

impl CfHandle {
    /// Takes over a +1 reference. Returns `None` for NULL.
    ///
    /// # Safety
    /// `ptr` is NULL or a CF-compatible object whose +1 reference the caller owns and
    /// hands over (it must not be released elsewhere).
    pub(crate) unsafe fn from_create_rule(ptr: *const std::ffi::c_void) -> Option<Self> {
        NonNull::new(ptr.cast_mut()).map(Self)
    }

    /// Retains a borrowed (+0) reference. Returns `None` for NULL.
    ///
    /// # Safety
    /// `ptr` is NULL or a CF-compatible object that stays alive for the duration of
    /// this call.
    pub(crate) unsafe fn from_get_rule(ptr: *const std::ffi::c_void) -> Option<Self> {
        let ptr = NonNull::new(ptr.cast_mut())?;
        // SAFETY: the caller guarantees the object is alive; CFRetain adds the
        // reference this handle will own and release in Drop.
        unsafe { CFRetain(ptr.as_ptr()) };
        Some(Self(ptr))
    }

    /// The raw pointer, borrowed for as long as `self` lives.
    pub(crate) fn as_ptr(&self) -> CFTypeRef {
        self.0.as_ptr()
    }
}

impl Clone for CfHandle {
    fn clone(&self) -> Self {
        // SAFETY: `self` owns a reference, so the object is alive.
        unsafe { Self::from_get_rule(self.as_ptr()) }.expect("a live handle is non-null")
    }
}

impl Drop for CfHandle {
    fn drop(&mut self) {
        // SAFETY: the handle owns exactly one reference (taken by one of the two
        // constructors) and gives it back exactly once, here.
        unsafe { CFRelease(self.as_ptr()) }
    }
}

/// An owned `CFErrorRef`.
#[derive(Debug, Clone)]
pub(crate) struct CfError(CfHandle);

impl CfError {
    /// Takes over a +1 error, as stored in an out-parameter or passed to a completion.
    ///
    /// # Safety
    /// As [`CfHandle::from_create_rule`], and the object is a `CFError`.
    pub(crate) unsafe fn from_create_rule(error: CFErrorRef) -> Option<Self> {
        // SAFETY: forwarded from the caller.
        unsafe { CfHandle::from_create_rule(error.cast_const().cast()) }.map(Self)
    }

    /// Retains a borrowed error, as passed to the state observer.
    ///
    /// # Safety
    /// As [`CfHandle::from_get_rule`], and the object is a `CFError`.
    pub(crate) unsafe fn from_get_rule(error: CFErrorRef) -> Option<Self> {
        // SAFETY: forwarded from the caller.
        unsafe { CfHandle::from_get_rule(error.cast_const().cast()) }.map(Self)
    }

    fn as_raw(&self) -> CFErrorRef {
        self.0.as_ptr().cast_mut().cast()
    }

    /// The error's code.
    // CFIndex is `long`: the conversion is real on 32-bit targets.
    #[allow(clippy::useless_conversion)]
    pub(crate) fn code(&self) -> i64 {
        // SAFETY: `self` owns a live CFError.
        i64::from(unsafe { CFErrorGetCode(self.as_raw()) })
    }

    /// The error's domain (e.g. `VZErrorDomain`).
    pub(crate) fn domain(&self) -> String {
        // SAFETY: `self` owns a live CFError; the domain follows the get rule and
        // lives as long as the error, which outlives this read.
        let domain = unsafe { CFErrorGetDomain(self.as_raw()) };
        // SAFETY: the domain is a live CFString (get rule, borrowed from the error).
        unsafe { string_to_rust(domain) }
    }

    /// The error's localized description.
    pub(crate) fn description(&self) -> String {
        // SAFETY: `self` owns a live CFError; the copy follows the create rule and is
        // owned by `description`, released when it drops.
        let description =
            unsafe { CfHandle::from_create_rule(CFErrorCopyDescription(self.as_raw()).cast()) };
        match description {
            // SAFETY: the handle keeps the CFString alive during the read.
            Some(handle) => unsafe { string_to_rust(handle.as_ptr().cast()) },
            None => String::new(),
        }
    }
}

impl From<CfError> for FrameworkError {
    /// The one place where a native error becomes a Rust error.
    fn from(error: CfError) -> Self {
        let domain = error.domain();
        let raw_code = error.code();
        Self {
            code: VzErrorCode::from_domain_and_code(&domain, raw_code),
            raw_code,
            description: error.description(),
            domain,
        }
    }
}

/// Runs a native call that reports failure through a `CFErrorRef *` out-parameter.
pub(crate) fn call_with_error(
    what: &str,
    call: impl FnOnce(*mut CFErrorRef) -> bool,
) -> Result<(), FrameworkError> {
    let mut error: CFErrorRef = std::ptr::null_mut();
    let succeeded = call(&raw mut error);
    // SAFETY: the ABI stores a +1 error (or nothing) in the out-parameter; we take it
    // over whatever `succeeded` says, so it is released exactly once.
    let error = unsafe { CfError::from_create_rule(error) };
    match (succeeded, error) {
        (true, _) => Ok(()),
        (false, Some(error)) => Err(error.into()),
        (false, None) => Err(FrameworkError::missing(what)),
    }
}

/// Copies a `CFString` into a Rust `String` (empty for NULL or unconvertible strings).
///
/// # Safety
/// `string` is NULL or a live `CFString` for the duration of the call.
unsafe fn string_to_rust(string: CFStringRef) -> String {
    if string.is_null() {
        return String::new();
    }
    // SAFETY: `string` is a live CFString (caller's guarantee).
    let utf16_length = unsafe { CFStringGetLength(string) };
    // SAFETY: pure computation on the length.
    let max_bytes =
        unsafe { CFStringGetMaximumSizeForEncoding(utf16_length, kCFStringEncodingUTF8) };
    let Ok(capacity) = usize::try_from(max_bytes.saturating_add(1)) else {
        return String::new();
    };
    let mut buffer = vec![0u8; capacity];
    // SAFETY: `buffer` is writable for `capacity` bytes, which is what we pass.
    let copied = unsafe {
        CFStringGetCString(
            string,
            buffer.as_mut_ptr().cast::<c_char>(),
            max_bytes.saturating_add(1),
            kCFStringEncodingUTF8,
        )
    };
    if copied == 0 {
        return String::new();
    }
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    buffer.truncate(end);
    String::from_utf8_lossy(&buffer).into_owned()
}

#[cfg(all(test, applevz_simulator))]
mod tests {
    use super::*;
    use crate::ffi::sys;
    use serial_test::serial;

    /// The simulator's live-object count, read at the level these tests work at (the
    /// raw bindings), so that this layer's tests need nothing above it.
    fn live_objects() -> i64 {
        // SAFETY: no arguments; thread-safe.
        unsafe { sys::sim_bindings::avz_sim_live_objects() }
    }

    fn new_config() -> *const std::ffi::c_void {
        // SAFETY: returns a +1 configuration; each test releases it exactly once.
        unsafe { sys::avz_config_create() }.cast_const().cast()
    }

    #[test]
    #[serial]
    fn create_rule_takes_over_the_reference() {
        let before = live_objects();
        let raw = new_config();
        assert_eq!(live_objects(), before + 1);
        // SAFETY: `raw` is +1 and handed over here.
        let handle = unsafe { CfHandle::from_create_rule(raw) }.unwrap();
        let copy = handle.clone();
        drop(handle);
        assert_eq!(live_objects(), before + 1, "the clone keeps it alive");
        drop(copy);
        assert_eq!(live_objects(), before, "released exactly once per owner");
    }

    #[test]
    #[serial]
    fn get_rule_retains_its_own_reference() {
        let before = live_objects();
        let raw = new_config();
        // SAFETY: `raw` is alive (we own +1 of it) for the call.
        let borrowed = unsafe { CfHandle::from_get_rule(raw) }.unwrap();
        // SAFETY: give back our own +1; the handle still owns its reference.
        unsafe { CFRelease(raw) };
        assert_eq!(live_objects(), before + 1);
        drop(borrowed);
        assert_eq!(live_objects(), before);
    }

    #[test]
    #[serial]
    fn null_is_none_under_both_rules() {
        // SAFETY: NULL is allowed by both constructors.
        unsafe {
            assert!(CfHandle::from_create_rule(std::ptr::null()).is_none());
            assert!(CfHandle::from_get_rule(std::ptr::null()).is_none());
        }
    }

    #[test]
    #[serial]
    fn errors_keep_domain_code_and_description() {
        let before = live_objects();
        let raw = new_config();
        let mut error: CFErrorRef = std::ptr::null_mut();
        // SAFETY: live configuration, valid out-parameter.
        let valid = unsafe { sys::avz_config_validate(raw.cast_mut().cast(), &raw mut error) };
        assert!(!valid, "an empty configuration has no boot loader");
        // SAFETY: the out-parameter holds a +1 error.
        let error = unsafe { CfError::from_create_rule(error) }.expect("an error object");
        assert_eq!(error.domain(), "VZErrorDomain");
        assert_eq!(error.code(), 2);
        assert!(
            error.description().contains("boot loader"),
            "{}",
            error.description()
        );
        drop(error);
        // SAFETY: our +1 of the configuration.
        unsafe { CFRelease(raw) };
        assert_eq!(live_objects(), before);
    }
}
