//! Small general helpers below every layer: locking, deadlines, removing a file that
//! may be absent (and a saved state's private directory). Only `std` here, so any
//! module can use them.

use std::path::Path;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Locks a mutex, ignoring poisoning: state guarded here stays consistent because
/// every critical section is a plain assignment or push.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The instant `timeout` from now; `None` when that is too far for the clock to
/// represent (`Duration::MAX`, or a definition file's `1e19` seconds): no limit.
pub(crate) fn deadline_after(timeout: Duration) -> Option<Instant> {
    Instant::now().checked_add(timeout)
}

/// One wait on `condvar` until `deadline` (`None`: no limit). Returns the guard again,
/// or `None` once the deadline has passed.
pub(crate) fn wait_until_deadline<'a, T>(
    condvar: &Condvar,
    guard: MutexGuard<'a, T>,
    deadline: Option<Instant>,
) -> Option<MutexGuard<'a, T>> {
    let guard = match deadline {
        None => condvar.wait(guard).unwrap_or_else(PoisonError::into_inner),
        Some(deadline) => {
            let remaining = deadline.checked_duration_since(Instant::now())?;
            condvar
                .wait_timeout(guard, remaining)
                .unwrap_or_else(PoisonError::into_inner)
                .0
        }
    };
    Some(guard)
}

/// Removes a file that may or may not exist; other failures are logged, since every
/// caller is already on a failure or late-completion path with nothing better to do.
pub(crate) fn remove_if_present(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => log::debug!("removed {}", path.display()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => log::warn!("could not remove {}: {error}", path.display()),
    }
}

/// In the name of the private directory (mode 0700) a suspend writes its saved state
/// in, next to the target: `.vm.state.partial-<pid>-<n>/vm.state` (see
/// `vm/saved_state.rs`).
pub(crate) const PARTIAL_SAVE_MARKER: &str = ".partial-";

/// Removes a saved-state file that may be absent and, when it was written in a
/// suspend's private directory, that directory once it is empty.
pub(crate) fn remove_saved_state_file(path: &Path) {
    remove_if_present(path);
    remove_private_save_directory(path);
}

/// Removes the private directory `file` was saved in, if it is one and is empty (a
/// save still writing there removes it when it ends).
pub(crate) fn remove_private_save_directory(file: &Path) {
    let Some(directory) = file.parent() else {
        return;
    };
    let private = directory
        .file_name()
        .is_some_and(|name| name.to_string_lossy().contains(PARTIAL_SAVE_MARKER));
    if !private {
        return;
    }
    match std::fs::remove_dir(directory) {
        Ok(()) => log::debug!("removed {}", directory.display()),
        Err(error)
            if matches!(
                error.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::DirectoryNotEmpty
            ) => {}
        Err(error) => log::warn!("could not remove {}: {error}", directory.display()),
    }
}
