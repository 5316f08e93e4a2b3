//! The VM directory: what `applevz init` creates and every other command reads.
//!
//! ```text
//! DIR/vm.toml                  the definition (applevz::VmDefinition)
//! DIR/disk.img                 the sparse root disk
//! DIR/machine-identifier       the persisted machine identity
//! DIR/efi-vars                 the EFI variable store (EFI boot only)
//! DIR/vm.state                 the saved state while suspended
//! DIR/console.log              the serial console when it is not on a terminal
//! DIR/run.lock                 held (flock) by the `applevz run` process
//! DIR/control.sock             that process's control channel (mode 0600)
//! ```
//!
//! The files that hold part of the guest (disk.img, machine-identifier, efi-vars,
//! vm.state, console.log) are created with mode 0600 whatever the umask.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::failure::Failure;
use crate::out::errln;

pub(crate) const DEFINITION: &str = "vm.toml";
pub(crate) const DISK: &str = "disk.img";
pub(crate) const MACHINE_IDENTIFIER: &str = "machine-identifier";
pub(crate) const EFI_VARIABLES: &str = "efi-vars";
pub(crate) const SAVED_STATE: &str = "vm.state";
pub(crate) const CONSOLE_LOG: &str = "console.log";
const LOCK: &str = "run.lock";
const CONTROL_SOCKET: &str = "control.sock";

/// A VM directory that exists and has a definition.
pub(crate) struct VmDir {
    pub(crate) path: PathBuf,
}

impl VmDir {
    /// Opens an existing VM directory.
    pub(crate) fn open(path: &Path) -> Result<Self, Failure> {
        if !path.is_dir() {
            return Err(Failure::bad_directory(format!(
                "{} is not a directory",
                path.display()
            )));
        }
        if !path.join(DEFINITION).is_file() {
            return Err(Failure::bad_directory(format!(
                "{} has no {DEFINITION}: not a VM directory (create one with `applevz init`)",
                path.display()
            )));
        }
        Ok(Self {
            path: path.to_owned(),
        })
    }

    pub(crate) fn definition(&self) -> PathBuf {
        self.path.join(DEFINITION)
    }

    pub(crate) fn control_socket(&self) -> PathBuf {
        self.path.join(CONTROL_SOCKET)
    }

    pub(crate) fn saved_state(&self) -> PathBuf {
        self.path.join(SAVED_STATE)
    }

    /// Takes the run lock, or says which process holds it. The lock lives as long as
    /// the returned file (and dies with the process, so it is never stale).
    pub(crate) fn lock(&self) -> Result<File, Failure> {
        let path = self.path.join(LOCK);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            // Holds only a pid, but lives in the owner's private VM directory.
            .mode(0o600)
            .open(&path)
            .map_err(|error| Failure::error(format!("cannot open {}: {error}", path.display())))?;
        // SAFETY: a valid descriptor owned by `file`; flock has no memory effects.
        let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
        if !locked {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let who = if holder.is_empty() {
                String::new()
            } else {
                format!(" (pid {holder})")
            };
            return Err(Failure::already_running(format!(
                "the VM in {} is already running{who}",
                self.path.display()
            )));
        }
        let _ = file.set_len(0);
        let _ = file.rewind();
        let _ = writeln!(file, "{}", std::process::id());
        log::debug!("holding {} (pid {})", path.display(), std::process::id());
        Ok(file)
    }
}

/// A file for a message: its path, size and when it was last written, e.g.
/// `DIR/vm.state (536870912 bytes = 512.0 MiB, written 2026-01-02 03:04:05 UTC)`.
pub(crate) fn describe_file(path: &Path) -> String {
    let Ok(metadata) = std::fs::metadata(path) else {
        return path.display().to_string();
    };
    let size = metadata.len();
    // Tenths of a MiB or GiB, in integers: exact for every size a file can have.
    let tenths = |unit: u64| format!("{}.{}", size / unit, size % unit * 10 / unit);
    let size = match size {
        0..=0xF_FFFF => format!("{size} bytes"),
        _ if size < 1 << 30 => format!("{size} bytes = {} MiB", tenths(1 << 20)),
        _ => format!("{size} bytes = {} GiB", tenths(1 << 30)),
    };
    match metadata.modified() {
        Ok(time) => format!("{} ({size}, written {})", path.display(), local_time(time)),
        Err(_) => format!("{} ({size})", path.display()),
    }
}

/// A moment as local date and time, e.g. `2026-01-02 03:04:05 CET`.
fn local_time(time: std::time::SystemTime) -> String {
    let seconds = time
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    let seconds = libc::time_t::try_from(seconds).unwrap_or(libc::time_t::MAX);
    // SAFETY: tm is plain data, filled by localtime_r for a valid time_t.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers to a time_t and a tm; localtime_r is thread-safe.
    if unsafe { libc::localtime_r(&raw const seconds, &raw mut tm) }.is_null() {
        return format!("{seconds} s after the epoch");
    }
    let mut buffer = [0u8; 64];
    // SAFETY: the buffer's size is passed; the format is NUL-terminated; tm is filled.
    let length = unsafe {
        libc::strftime(
            buffer.as_mut_ptr().cast(),
            buffer.len(),
            c"%Y-%m-%d %H:%M:%S %Z".as_ptr(),
            &raw const tm,
        )
    };
    String::from_utf8_lossy(&buffer[..length]).into_owned()
}

impl VmDir {
    /// Where the VM in this directory keeps its saved state: the definition's
    /// `saved_state` (relative to the directory), else DIR/vm.state.
    pub(crate) fn saved_state_target(&self) -> PathBuf {
        applevz::VmDefinition::load(&self.definition())
            .ok()
            .and_then(|definition| definition.saved_state)
            .map_or_else(|| self.saved_state(), |path| self.path.join(path))
    }

    /// What suspends that were cut short (their process killed while saving) left in
    /// this directory, as a message saying what to do; `None` when there is nothing.
    /// An empty private directory holds nothing to lose: `tidy` removes it (saying
    /// so), otherwise it is listed like the rest.
    pub(crate) fn interrupted_suspends(&self, tidy: bool) -> Option<String> {
        let target = self.saved_state_target();
        let found = match applevz::interrupted_suspends(&target) {
            Ok(found) => found,
            Err(error) => {
                return Some(format!(
                    "cannot look for interrupted suspends next to {}: {error}",
                    target.display()
                ));
            }
        };
        let mut left = Vec::new();
        for path in found {
            let empty_directory =
                std::fs::read_dir(&path).is_ok_and(|mut entries| entries.next().is_none());
            if !empty_directory {
                left.push(path);
            } else if tidy {
                match std::fs::remove_dir(&path) {
                    Ok(()) => errln!(
                        "applevz: removed {}, an empty directory an interrupted suspend left",
                        path.display()
                    ),
                    Err(_) => left.push(path),
                }
            } else {
                errln!(
                    "applevz: {} is an empty directory an interrupted suspend left (nothing to \
                     lose; `applevz run` removes it)",
                    path.display()
                );
            }
        }
        if left.is_empty() {
            return None;
        }
        let d = self.path.display();
        let mut message = format!(
            "a suspend of the VM in {d} was interrupted (its process ended while it saved the \
             guest) and left what may be an incomplete saved state, or the only copy of the \
             guest; nothing was deleted, and `applevz run` does not boot afresh over it:"
        );
        for path in &left {
            // The suspend's private directory (or the file itself, from older versions).
            let private = if path.is_file()
                && path
                    .parent()
                    .and_then(Path::file_name)
                    .is_some_and(|name| name.to_string_lossy().contains(".partial-"))
            {
                path.parent().unwrap_or(path)
            } else {
                path
            };
            if path.is_dir() {
                let _ = write!(message, "\n  {} (a directory)", path.display());
            } else {
                let _ = write!(message, "\n  {}", describe_file(path));
            }
            if path.is_file() {
                let tidy_up = if private == path.as_path() {
                    String::new()
                } else {
                    format!(" && rmdir {}", shell_quote(private))
                };
                let _ = write!(
                    message,
                    "\n    to try to resume from it: mv {} {}{tidy_up}, then `applevz run {d}` \
                     (if it cannot be restored, `applevz stop {d} --policy poweroff` discards it)",
                    shell_quote(path),
                    shell_quote(&target),
                );
                if target.exists() {
                    let _ = write!(
                        message,
                        "; {} exists too: move it away first",
                        target.display()
                    );
                }
            }
            let _ = write!(
                message,
                "\n    to give it up and boot afresh: rm -r {}",
                shell_quote(private)
            );
        }
        Some(message)
    }
}

/// `path` quoted for a POSIX shell.
fn shell_quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}
