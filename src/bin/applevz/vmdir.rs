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

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::failure::Failure;

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
        Ok(file)
    }
}
