//! Host capabilities and limits, asked of the native side.

use std::ffi::CStr;

use crate::ffi::cf::call_with_error;
use crate::ffi::sys;
use crate::framework_error::FrameworkError;

/// The host's configuration limits.
pub(crate) fn limits() -> sys::avz_limits {
    let mut limits = sys::avz_limits {
        min_cpu_count: 0,
        max_cpu_count: 0,
        min_memory_size: 0,
        max_memory_size: 0,
    };
    // SAFETY: `limits` is a valid, writable avz_limits for the call (borrowed).
    unsafe { sys::avz_get_limits(&raw mut limits) };
    limits
}

/// Whether this host supports virtualization.
pub(crate) fn is_supported() -> bool {
    // SAFETY: no arguments; safe from any thread.
    unsafe { sys::avz_is_supported() }
}

/// Whether this host can save and restore VM state at all.
pub(crate) fn save_restore_supported() -> bool {
    // SAFETY: no arguments; safe from any thread.
    unsafe { sys::avz_save_restore_supported() }
}

/// Whether the framework accepts `tag` for a virtio file-system device.
pub(crate) fn validate_directory_share_tag(tag: &CStr) -> Result<(), FrameworkError> {
    call_with_error("the tag is invalid", |error| {
        // SAFETY: borrowed NUL-terminated tag; valid out-param.
        unsafe { sys::avz_validate_directory_share_tag(tag.as_ptr(), error) }
    })
}

/// `VZLinuxRosettaDirectoryShare.availability` (raw `AVZ_ROSETTA_*`; a value outside
/// them reads as not supported).
pub(crate) fn rosetta_availability() -> u32 {
    // SAFETY: no arguments; safe from any thread.
    let raw = unsafe { sys::avz_rosetta_availability() };
    u32::try_from(raw).unwrap_or(sys::AVZ_ROSETTA_NOT_SUPPORTED)
}

/// A new machine identifier's data representation.
pub(crate) fn new_machine_identifier() -> Result<Vec<u8>, FrameworkError> {
    let mut buffer = vec![0u8; sys::AVZ_MACHINE_IDENTIFIER_MAX as usize];
    let mut length = 0usize;
    call_with_error("creating a machine identifier failed", |error| {
        // SAFETY: `buffer` is writable for its length; `length` and `error` are
        // valid out-parameters for the duration of the call.
        unsafe {
            sys::avz_machine_identifier_create(
                buffer.as_mut_ptr(),
                buffer.len(),
                &raw mut length,
                error,
            )
        }
    })?;
    buffer.truncate(length.min(buffer.len()));
    Ok(buffer)
}
