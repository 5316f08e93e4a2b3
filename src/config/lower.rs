//! Lowering: a validated [`VmConfig`] becomes a native configuration, value by value,
//! through the safe wrappers of `crate::ffi`. Files are checked again by the native
//! side; a persisted machine identifier is created here on first use.

use std::ffi::CStr;
use std::fs::OpenOptions;
use std::io::ErrorKind;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use super::builder::{BootLoader, EfiVariableStore, MachineIdentifier};
use super::devices::{
    CachingMode, MacAddress, MacChoice, NetworkKind, SerialPort, StorageInterface, SyncMode,
};
use super::validate::{CPath, VmConfig, c_string};
use crate::error::{Error, Result};
use crate::ffi::native_config::{NativeConfig, SharedDirectories};
use crate::ffi::sys;
use crate::state::Operation;

impl VmConfig {
    /// Builds the native configuration. Files are checked again by the native side;
    /// a persisted machine identifier is created here on first use.
    pub(crate) fn to_native(&self) -> Result<NativeConfig> {
        let create_error = Error::during(Operation::Create);
        let mut native = NativeConfig::new();
        native.set_cpu_count(self.cpu_count);
        native.set_memory_size(self.memory_size);
        match &self.boot_loader {
            BootLoader::Linux(linux) => {
                let kernel = CPath::new("kernel path", &linux.kernel)?;
                let initrd = linux
                    .initrd
                    .as_deref()
                    .map(|initrd| CPath::new("initrd path", initrd))
                    .transpose()?;
                let command_line = c_string("kernel command line", linux.command_line.as_bytes())?;
                native
                    .set_linux_boot_loader(
                        &kernel.c,
                        initrd.as_ref().map(|i| i.c.as_c_str()),
                        &command_line,
                    )
                    .map_err(create_error)?;
            }
            BootLoader::Efi {
                variable_store,
                mode,
            } => {
                let create = match mode {
                    EfiVariableStore::Open => false,
                    EfiVariableStore::Create => true,
                    EfiVariableStore::OpenOrCreate => !variable_store.exists(),
                };
                let variable_store = CPath::new("EFI variable store path", variable_store)?;
                native
                    .set_efi_boot_loader(&variable_store.c, create)
                    .map_err(create_error)?;
                if create {
                    // Created by the framework under the process's umask: the guest's
                    // firmware variables are the owner's only, like every file that
                    // holds part of the guest.
                    restrict_to_owner(&variable_store.path, "restrict the EFI variable store")?;
                }
            }
        }
        let identity: Option<Vec<u8>> = match &self.platform {
            None => None,
            Some(MachineIdentifier::Fresh) => {
                native.set_generic_platform(None).map_err(create_error)?;
                None
            }
            Some(MachineIdentifier::Bytes(bytes)) => {
                native
                    .set_generic_platform(Some(bytes))
                    .map_err(create_error)?;
                Some(bytes.clone())
            }
            Some(MachineIdentifier::Persisted(path)) => {
                let bytes = load_or_create_identifier(path)?;
                native
                    .set_generic_platform(Some(&bytes))
                    .map_err(|source| Error::InvalidMachineIdentifier {
                        origin: path.display().to_string(),
                        reason: source.description,
                    })?;
                Some(bytes)
            }
        };
        for disk in &self.disks {
            let path = CPath::new("disk image path", &disk.path)?;
            let identifier = disk
                .identifier
                .as_deref()
                .map(|id| c_string("block device identifier", id.as_bytes()))
                .transpose()?;
            native
                .add_storage_device(
                    disk.interface.raw(),
                    &path.c,
                    disk.read_only,
                    disk.caching.raw(),
                    disk.sync.raw(),
                    identifier.as_deref(),
                )
                .map_err(create_error)?;
        }
        for (index, network) in self.networks.iter().enumerate() {
            let mac = match &network.mac {
                MacChoice::Random => None,
                MacChoice::Fixed(mac) => Some(c_string("MAC address", mac.as_bytes())?),
                MacChoice::Stable => {
                    let seed = identity
                        .as_deref()
                        .expect("build() requires an identity for a stable MAC");
                    let index = u32::try_from(index).unwrap_or(u32::MAX);
                    let mac = MacAddress::stable(seed, index).to_string();
                    Some(c_string("MAC address", mac.as_bytes())?)
                }
            };
            let mac = mac.as_deref();
            match &network.kind {
                NetworkKind::Nat => native.add_nat_network_device(mac),
                NetworkKind::FileHandle { socket, mtu } => {
                    native.add_file_handle_network_device(socket.as_raw_fd(), mac, mtu.unwrap_or(0))
                }
            }
            .map_err(create_error)?;
        }
        let raw_fd = |fd: &Option<Arc<OwnedFd>>| fd.as_ref().map_or(-1, AsRawFd::as_raw_fd);
        for serial in &self.serial_ports {
            match serial {
                SerialPort::File { path, append } => {
                    // Created here, owner-only, rather than by the framework under the
                    // process's umask: the guest's console may show anything.
                    create_owner_only(path, "create the serial log")?;
                    let path = CPath::new("serial log path", path)?;
                    native.add_serial_port_file(&path.c, *append)
                }
                SerialPort::Fds { read, write } => {
                    native.add_serial_port_fds(raw_fd(read), raw_fd(write))
                }
            }
            .map_err(create_error)?;
        }
        for port in &self.console_ports {
            let name = c_string("console port name", port.name.as_bytes())?;
            native
                .add_console_port(
                    &name,
                    port.is_console,
                    raw_fd(&port.input),
                    raw_fd(&port.output),
                )
                .map_err(create_error)?;
        }
        for share in &self.shares {
            let tag = c_string("share tag", share.tag.as_bytes())?;
            // (name, path, read-only); the name is empty in a single-directory share.
            let directories = share
                .directories
                .iter()
                .map(|directory| {
                    let name = directory.name.as_deref().unwrap_or_default();
                    Ok((
                        c_string("shared directory name", name.as_bytes())?,
                        CPath::new("shared directory path", &directory.path)?,
                        directory.read_only,
                    ))
                })
                .collect::<Result<Vec<_>>>()?;
            let borrowed: Vec<(&CStr, &CStr, bool)> = directories
                .iter()
                .map(|(name, path, read_only)| (name.as_c_str(), path.c.as_c_str(), *read_only))
                .collect();
            let directories = match borrowed.as_slice() {
                [(_, path, read_only)] if share.single => SharedDirectories::Single {
                    path,
                    read_only: *read_only,
                },
                all => SharedDirectories::Multiple(all),
            };
            native
                .add_directory_share(&tag, directories)
                .map_err(create_error)?;
        }
        if let Some(tag) = &self.rosetta_tag {
            let tag = c_string("Rosetta tag", tag.as_bytes())?;
            native.add_rosetta_share(&tag).map_err(create_error)?;
        }
        if self.entropy {
            native.add_entropy_device().map_err(create_error)?;
        }
        if self.memory_balloon {
            native.add_memory_balloon_device().map_err(create_error)?;
        }
        if self.vsock {
            native.add_socket_device().map_err(create_error)?;
        }
        #[cfg(applevz_simulator)]
        self.simulated_guest.apply_to(&mut native);
        Ok(native)
    }
}

impl CachingMode {
    fn raw(self) -> u32 {
        match self {
            Self::Automatic => sys::AVZ_CACHING_AUTOMATIC,
            Self::Uncached => sys::AVZ_CACHING_UNCACHED,
            Self::Cached => sys::AVZ_CACHING_CACHED,
        }
    }
}

impl SyncMode {
    fn raw(self) -> u32 {
        match self {
            Self::Full => sys::AVZ_SYNC_FULL,
            Self::Fsync => sys::AVZ_SYNC_FSYNC,
            Self::None => sys::AVZ_SYNC_NONE,
        }
    }
}

impl StorageInterface {
    fn raw(self) -> u32 {
        match self {
            Self::VirtioBlock => sys::AVZ_STORAGE_VIRTIO_BLOCK,
            Self::Nvme => sys::AVZ_STORAGE_NVME,
        }
    }
}

fn load_or_create_identifier(path: &Path) -> Result<Vec<u8>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(bytes),
        Err(error) if error.kind() == ErrorKind::NotFound => {
            let bytes = MachineIdentifier::generate()?;
            // create_new: never overwrite an identity another process just wrote.
            let write = || -> std::io::Result<()> {
                use std::io::Write;
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)?;
                file.write_all(&bytes)?;
                file.sync_all()
            };
            match write() {
                Ok(()) => Ok(bytes),
                // Another process created it first: its identity is the VM's.
                Err(error) if error.kind() == ErrorKind::AlreadyExists => {
                    load_or_create_identifier(path)
                }
                Err(source) => Err(Error::Io {
                    action: "write the machine identifier",
                    path: path.to_owned(),
                    source,
                }),
            }
        }
        Err(source) => Err(Error::Io {
            action: "read the machine identifier",
            path: path.to_owned(),
            source,
        }),
    }
}

/// Creates `path` with mode 0600 when it does not exist; an existing file is left as
/// it is.
fn create_owner_only(path: &Path, action: &'static str) -> Result<()> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map(drop)
        .map_err(|source| Error::Io {
            action,
            path: path.to_owned(),
            source,
        })
}

/// Makes `path` readable and writable by its owner only.
fn restrict_to_owner(path: &Path, action: &'static str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
        Error::Io {
            action,
            path: path.to_owned(),
            source,
        }
    })
}
