//! Suspend and restore: the VM's saved state, with nothing lost on any failure.
//!
//! The VM tracks its saved state itself (the file it found when it was created, or the
//! one it wrote) instead of reading the file system on every `state()`. A saved state
//! is deleted only after the guest restored from it runs again, or by a
//! `shutdown(Poweroff)` called while the VM was already suspended with nothing in
//! flight.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::hint::{self, refusal_hint};
use super::tracker::Tracked;
use super::{VirtualMachine, create_native};
use crate::config::CPath;
use crate::error::{Error, Result};
use crate::ffi::native_vm::AsyncOp;
use crate::state::{EventKind, Operation, VmState};
use crate::util::{
    PARTIAL_SAVE_MARKER, lock, remove_private_save_directory, remove_saved_state_file,
};

impl VirtualMachine {
    /// Suspends a running or paused VM to its saved-state file: pause, save to a
    /// temporary file next to the target, stop, rename into place. Until the stop is
    /// issued, any failure resumes the VM if it was running, removes the temporary
    /// file and leaves an existing saved state untouched. From the moment the stop is
    /// issued the new file *is* the guest: it is moved into place even if the stop
    /// fails or times out, and the VM is never resumed after that. If it cannot be
    /// moved into place, the error names where it is, and the VM restores from there.
    ///
    /// Subscribers never see the VM `Stopped` during a suspend: its last event is
    /// `Suspended`. A suspended VM is left alone.
    ///
    /// # Errors
    /// [`Error::InvalidState`] unless the VM is running, paused or suspended;
    /// [`Error::NoSavedStatePath`]; [`Error::SuspendNotSupported`] (the VM keeps running);
    /// [`Error::SavedStateChanged`] for a file at the path that this VM did not write;
    /// [`Error::Framework`] or [`Error::Timeout`] from pause, save or stop; [`Error::Io`]
    /// when the saved state cannot be moved into place (the error names where it is).
    pub fn suspend(&self) -> Result<()> {
        let operation = Operation::Suspend;
        let (_gate, _, state) = self.acquire(operation, Tracked::vm_state);
        match state {
            VmState::Suspended => return Ok(()),
            VmState::Running | VmState::Paused => {}
            state => return self.refuse(operation, refusal_hint(state)),
        }
        let target = self
            .saved_state_target
            .as_ref()
            .ok_or(Error::NoSavedStatePath)?;
        if let Err(source) = &self.save_restore_check {
            return Err(Error::SuspendNotSupported {
                source: source.clone(),
            });
        }
        self.refuse_foreign_saved_state()?;
        // Made before the pause, so nothing can fail between the pause and the save
        // without the VM being resumed. The save goes into a private directory (mode
        // 0700) next to the target: the framework creates the file under the
        // process's umask, and the guest's memory must not be readable by others
        // while it is written.
        let temporary = CPath::new(
            "saved-state path",
            &private_save_path_next_to(&target.path)?,
        )?;

        let was_running = state == VmState::Running;
        if was_running {
            if let Err(error) = self.run(operation, AsyncOp::Pause, self.timeouts().pause) {
                remove_private_save_directory(&temporary.path);
                self.resume_after_failed_suspend(operation);
                return Err(error);
            }
        }
        if let Err(error) = self.run(operation, AsyncOp::Save(&temporary.c), self.timeouts().save) {
            // A save still under way removes its file when it ends (NativeVm::run).
            remove_saved_state_file(&temporary.path);
            if was_running {
                self.resume_after_failed_suspend(operation);
            }
            return Err(error);
        }

        // Guest memory: owner-only, whatever the umask or the framework chose.
        if let Err(error) = restrict_to_owner(&temporary.path) {
            log::warn!("could not make the saved state owner-only: {error}");
        }

        // The point of no return: `temporary` holds the guest from here on.
        self.tracker.update(|t| t.suspending = true, None);
        let stopped = self.force_stop(operation);
        if stopped.is_err() {
            // The stop may still be under way; wait for it to end, but whatever it
            // does, the saved state is kept.
            self.tracker.wait_until(self.timeouts().stop, |t| {
                !t.framework_state.is_transitional()
            });
        }
        let (kept_at, moved) = match move_into_place(&temporary, target) {
            Ok(()) => {
                remove_private_save_directory(&temporary.path);
                (target.path.clone(), Ok(()))
            }
            Err(error) => (temporary.path.clone(), Err(error)),
        };
        let framework_state = self.tracker.framework_state();
        let guest_gone = matches!(framework_state, VmState::Stopped | VmState::Error);
        self.tracker.update(
            |t| {
                t.suspending = false;
                t.saved_state = Some(kept_at.clone());
                t.saved_state_spent = false;
            },
            guest_gone.then_some(EventKind::Suspended),
        );
        if guest_gone {
            self.prepare_for_restore();
        } else {
            // The stop failed and the guest is still there (paused): running it again
            // spends the saved state, as after a restore.
            self.restored_from_saved_state.store(true, Ordering::SeqCst);
            log::warn!(
                "suspend: the VM did not stop ({framework_state}); its saved state is kept at {}",
                kept_at.display()
            );
        }
        stopped?;
        moved
    }

    /// After a failed suspend of a running VM: waits (up to the resume timeout) for an
    /// operation still under way, such as a save that outlived its timeout, to end,
    /// then resumes the VM if it is paused.
    fn resume_after_failed_suspend(&self, operation: Operation) {
        let (state, _) = self
            .tracker
            .wait_until(self.timeouts().resume, |t| !t.vm_state().is_transitional());
        if state == VmState::Paused {
            if let Err(error) = self.run(operation, AsyncOp::Resume, self.timeouts().resume) {
                log::error!(
                    "suspend failed and the VM could not be resumed: {}",
                    error.full_message()
                );
            }
        }
    }

    /// Restores the saved state into a fresh native VM, resumes it, and only then
    /// deletes the file. A failed restore keeps the file and the VM suspended.
    pub(super) fn start_from_saved_state(&self) -> Result<()> {
        let (path, native_has_run) = {
            let tracked = self.tracker.lock();
            let path = tracked.saved_state.clone();
            (
                path.expect("suspended implies a saved state"),
                tracked.native_has_run,
            )
        };
        if matches!(path.try_exists(), Ok(false)) {
            return Err(Error::SavedStateChanged {
                path,
                what: "the saved state this VM tracks vanished from",
                hint: hint::SAVED_STATE_VANISHED,
            });
        }
        let saved = CPath::new("saved-state path", &path)?;
        if native_has_run {
            self.fresh_native()?;
        }
        // Set before the restore begins: a restore that completes after its wait gave
        // up leaves a paused guest whose first resume must spend the file too.
        self.restored_from_saved_state.store(true, Ordering::SeqCst);
        let restore_timeout = self.timeouts().restore;
        match self
            .native
            .get()
            .run(AsyncOp::Restore(&saved.c), restore_timeout)
        {
            None => {
                return Err(self.timeout(Operation::Restore, restore_timeout, hint::TIMEOUT));
            }
            Some(Err(source)) => {
                self.restored_from_saved_state
                    .store(false, Ordering::SeqCst);
                self.prepare_for_restore();
                return Err(Error::RestoreFailed { path, source });
            }
            Some(Ok(())) => {}
        }
        if let Err(error) = self.run(Operation::Start, AsyncOp::Resume, self.timeouts().resume) {
            // Back to stopped, so the VM is suspended again with its file untouched.
            if let Err(stop_error) = self.force_stop(Operation::Start) {
                log::error!(
                    "could not stop the VM after a failed resume: {}",
                    stop_error.full_message()
                );
            }
            self.prepare_for_restore();
            return Err(error);
        }
        self.restored_from_saved_state
            .store(false, Ordering::SeqCst);
        self.remove_spent_saved_state()
    }

    /// Deletes the saved state of a guest that runs again. The VM forgets it either
    /// way: it is stale now.
    pub(super) fn remove_spent_saved_state(&self) -> Result<()> {
        let Some(path) = self.tracker.lock().saved_state.clone() else {
            return Ok(());
        };
        let removed = delete_saved_state(&path);
        self.forget_saved_state();
        match removed {
            Ok(_) => Ok(()),
            Err(source) => Err(Error::Io {
                action: "the VM runs again and will not restore its old saved state, but could not delete it: delete",
                path,
                source,
            }),
        }
    }

    /// `shutdown(Poweroff)` of a VM that was suspended with nothing in flight.
    pub(super) fn discard_saved_state(&self) -> Result<()> {
        let Some(path) = self.tracker.lock().saved_state.clone() else {
            return Ok(());
        };
        self.restored_from_saved_state
            .store(false, Ordering::SeqCst);
        match delete_saved_state(&path) {
            Ok(true) => {}
            Ok(false) => log::warn!("the saved state {} was already gone", path.display()),
            Err(source) => {
                return Err(Error::Io {
                    action: "discard the saved state (it is kept)",
                    path,
                    source,
                });
            }
        }
        self.forget_saved_state();
        Ok(())
    }

    /// The VM no longer has a saved state; subscribers hear so.
    fn forget_saved_state(&self) {
        self.tracker.update(
            |t| {
                t.saved_state = None;
                t.saved_state_spent = false;
            },
            Some(EventKind::SavedStateRemoved),
        );
    }

    /// Refuses to boot over, or suspend onto, a file at the saved-state path that this
    /// VM did not write: it may be another VM's guest.
    pub(super) fn refuse_foreign_saved_state(&self) -> Result<()> {
        let Some(target) = &self.saved_state_target else {
            return Ok(());
        };
        let tracked = self.tracker.lock().saved_state.clone();
        if tracked.is_none() && target.path.exists() {
            return Err(Error::SavedStateChanged {
                path: target.path.clone(),
                what: "a saved state this VM did not write appeared at",
                hint: hint::FOREIGN_SAVED_STATE,
            });
        }
        Ok(())
    }

    /// A suspended VM whose native object has run gets a fresh one now, rather than at
    /// the next `start()`, so that simulator controls taken in between apply to the
    /// object that restores. On failure `start()` tries again.
    fn prepare_for_restore(&self) {
        let due = {
            let t = self.tracker.lock();
            t.vm_state() == VmState::Suspended && t.native_has_run
        };
        if due {
            if let Err(error) = self.fresh_native() {
                log::warn!(
                    "no fresh native VM for the next restore yet: {}",
                    error.full_message()
                );
            }
        }
    }

    /// Replaces the native VM object by a fresh, never-run one (Apple documents
    /// restoring only into a stopped VM, and nothing about one that has already run,
    /// so every restore goes into a fresh object). Vsock listeners move along.
    pub(super) fn fresh_native(&self) -> Result<()> {
        let generation = self.tracker.lock().generation + 1;
        let native = create_native(
            lock(&self.native_config).config(),
            &self.tracker,
            generation,
        )
        .map_err(Error::during(Operation::Restore))?;
        // From here on, events of the old object are ignored. A new VM is stopped and
        // reports nothing until an operation runs on it.
        self.tracker.update(
            |t| {
                t.generation = generation;
                t.framework_state = VmState::Stopped;
                t.native_has_run = false;
            },
            None,
        );
        drop(self.vsock.move_to(native));
        Ok(())
    }
}

/// What suspends of a VM whose saved-state path is `saved_state` left behind when
/// their process ended before they finished (killed, crashed, the machine lost
/// power): each one a saved state that may be incomplete, or complete and the only
/// copy of the guest. applevz never deletes or adopts these itself; show them to
/// whoever can decide. Suspends under way in this process are not listed.
///
/// Each entry is the saved-state file left in a suspend's private directory
/// (`.vm.state.partial-<pid>-<n>/vm.state`), or the directory itself when it holds
/// no such file, or a plain `.vm.state.partial-<pid>-<n>` file (written by earlier
/// versions). Sorted by path.
///
/// # Errors
/// The file system's error when the saved state's directory cannot be read.
pub fn interrupted_suspends(saved_state: &Path) -> std::io::Result<Vec<PathBuf>> {
    let Some(name) = saved_state.file_name() else {
        return Ok(Vec::new());
    };
    let directory = match saved_state.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let prefix = format!(".{}{PARTIAL_SAVE_MARKER}", name.to_string_lossy());
    let ours = format!("{prefix}{}-", std::process::id());
    let mut found = Vec::new();
    let entries = match std::fs::read_dir(directory) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(error) => return Err(error),
    };
    for entry in entries {
        let entry = entry?;
        let entry_name = entry.file_name().to_string_lossy().into_owned();
        if !entry_name.starts_with(&prefix) || entry_name.starts_with(&ours) {
            continue;
        }
        let path = entry.path();
        let inside = path.join(name);
        found.push(if inside.is_file() { inside } else { path });
    }
    found.sort();
    Ok(found)
}

fn restrict_to_owner(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

/// A fresh path in a new private directory (mode 0700) in the target's directory:
/// `.vm.state.partial-<pid>-<n>/vm.state`. Next to the target, so the final rename
/// stays on one file system and is atomic; private, so nobody else can read the file
/// while the framework writes it, whatever mode it gets.
fn private_save_path_next_to(target: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = target.file_name().unwrap_or_default();
    let unique = COUNTER.fetch_add(1, Ordering::Relaxed);
    let directory = target.with_file_name(format!(
        ".{}{PARTIAL_SAVE_MARKER}{}-{unique}",
        name.to_string_lossy(),
        std::process::id()
    ));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&directory)
        .map_err(|source| Error::Io {
            action: "create a private directory for the saved state",
            path: directory.clone(),
            source,
        })?;
    Ok(directory.join(name))
}

/// Deletes a saved-state file and then the private directory it was written in, once
/// empty. A file already gone is no error: the answer says whether it was there.
fn delete_saved_state(path: &Path) -> std::io::Result<bool> {
    let existed = match std::fs::remove_file(path) {
        Ok(()) => true,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => false,
        Err(error) => return Err(error),
    };
    remove_private_save_directory(path);
    Ok(existed)
}

/// Renames a saved state into place; on failure it stays at its temporary path, since
/// it is the only copy of the guest, and the error says where.
fn move_into_place(temporary: &CPath, target: &CPath) -> Result<()> {
    std::fs::rename(&temporary.path, &target.path).map_err(|source| Error::Io {
        action: "could not move the saved state into place; it is kept, and starting the VM restores from",
        path: temporary.path.clone(),
        source,
    })
}
