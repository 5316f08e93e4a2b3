//! A pseudo-terminal pair for tests, whose slave side stands in for the user's
//! terminal. Test-only: used by `terminal.rs`'s unit tests and, through `#[path]`, by
//! `tests/cli/`.

use std::os::fd::{FromRawFd, OwnedFd};

/// A new pseudo-terminal: (master, slave).
pub(crate) fn pty() -> (OwnedFd, OwnedFd) {
    let (mut master, mut slave) = (0, 0);
    // SAFETY: out-parameters for two descriptors; NULL name, settings and size.
    let status = unsafe {
        libc::openpty(
            &raw mut master,
            &raw mut slave,
            std::ptr::null_mut(),
            // *mut on macOS, *const on Linux: null_mut fits both.
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    };
    assert_eq!(status, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: openpty returned two fresh descriptors that we now own.
    unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) }
}
