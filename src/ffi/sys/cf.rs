//! The CoreFoundation subset applevz uses, declared with CoreFoundation's own names
//! and types. On macOS these resolve to CoreFoundation.framework; elsewhere the
//! simulator (`shim/sim/`) provides the same symbols. Keep this list minimal: every
//! function here must exist, with these exact types, in both.

use std::ffi::{c_char, c_void};

/// `CFTypeRef`: any CoreFoundation-compatible object.
pub type CFTypeRef = *const c_void;
/// `CFIndex`: `signed long` on every Apple platform and in the simulator.
pub type CFIndex = std::ffi::c_long;
/// `Boolean`: `unsigned char`.
pub type Boolean = u8;
/// `CFStringEncoding`: `UInt32`.
pub type CFStringEncoding = u32;

/// Opaque `struct __CFError`.
#[repr(C)]
pub struct __CFError {
    _opaque: [u8; 0],
}
/// `CFErrorRef`.
pub type CFErrorRef = *mut __CFError;

/// Opaque `struct __CFString`.
#[repr(C)]
pub struct __CFString {
    _opaque: [u8; 0],
}
/// `CFStringRef`.
pub type CFStringRef = *const __CFString;

/// `kCFStringEncodingUTF8`.
pub const kCFStringEncodingUTF8: CFStringEncoding = 0x0800_0100;

#[cfg_attr(target_os = "macos", link(name = "CoreFoundation", kind = "framework"))]
unsafe extern "C" {
    pub fn CFRetain(cf: CFTypeRef) -> CFTypeRef;
    pub fn CFRelease(cf: CFTypeRef);
    pub fn CFErrorGetCode(err: CFErrorRef) -> CFIndex;
    /// Get rule: the domain is owned by the error.
    pub fn CFErrorGetDomain(err: CFErrorRef) -> CFStringRef;
    /// Create rule: the caller releases the description.
    pub fn CFErrorCopyDescription(err: CFErrorRef) -> CFStringRef;
    pub fn CFStringGetLength(string: CFStringRef) -> CFIndex;
    pub fn CFStringGetMaximumSizeForEncoding(
        length: CFIndex,
        encoding: CFStringEncoding,
    ) -> CFIndex;
    pub fn CFStringGetCString(
        string: CFStringRef,
        buffer: *mut c_char,
        buffer_size: CFIndex,
        encoding: CFStringEncoding,
    ) -> Boolean;
}
