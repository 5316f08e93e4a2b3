//! Validation: [`VmConfigBuilder::build`] checks everything that can be checked
//! before the framework sees it, each failure with its own error, and yields a
//! [`VmConfig`]: the same values, now known to be good (and completed: a persisted
//! machine identity next to the saved state, MAC addresses in canonical form).

use std::collections::HashSet;
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::builder::{
    BootLoader, EfiVariableStore, MIB, MachineIdentifier, OnGracefulTimeout, Timeouts,
    VmConfigBuilder,
};
use super::devices::{
    ConsolePort, DirectoryShare, Disk, MacAddress, MacChoice, Network, NetworkKind, SerialPort,
    StorageInterface, check_block_device_identifier, check_datagram_socket, check_share_name,
    check_share_tag,
};
use super::host::{Limits, RosettaAvailability, rosetta_availability};
use crate::error::{Error, Result};
use crate::ffi::host;
use crate::ffi::sys;
#[cfg(applevz_simulator)]
use crate::sim::SimulatedGuest;

/// A validated VM configuration; make one with [`VmConfig::builder`].
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub(super) cpu_count: u32,
    pub(super) memory_size: u64,
    pub(super) boot_loader: BootLoader,
    pub(super) platform: Option<MachineIdentifier>,
    pub(super) disks: Vec<Disk>,
    pub(super) networks: Vec<Network>,
    pub(super) serial_ports: Vec<SerialPort>,
    pub(super) console_ports: Vec<ConsolePort>,
    pub(super) shares: Vec<DirectoryShare>,
    pub(super) rosetta_tag: Option<String>,
    pub(super) entropy: bool,
    pub(super) memory_balloon: bool,
    pub(super) vsock: bool,
    pub(crate) saved_state: Option<CPath>,
    pub(crate) timeouts: Timeouts,
    pub(crate) on_graceful_timeout: OnGracefulTimeout,
    #[cfg(applevz_simulator)]
    pub(super) simulated_guest: SimulatedGuest,
}

impl VmConfig {
    /// A builder with 1 CPU and 512 MiB of memory and nothing else.
    #[must_use]
    pub fn builder() -> VmConfigBuilder {
        VmConfigBuilder::new()
    }

    /// The saved-state file, if the configuration has one.
    #[must_use]
    pub fn saved_state_path(&self) -> Option<&Path> {
        self.saved_state.as_ref().map(|p| p.path.as_path())
    }

    /// The per-operation timeouts.
    #[must_use]
    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// The memory size in bytes.
    #[must_use]
    pub fn memory_size(&self) -> u64 {
        self.memory_size
    }

    /// Whether the VM has a memory balloon device.
    #[must_use]
    pub fn has_memory_balloon(&self) -> bool {
        self.memory_balloon
    }

    /// Whether the VM has a virtio-vsock device.
    #[must_use]
    pub fn has_vsock(&self) -> bool {
        self.vsock
    }
}

/// A path checked for interior NUL bytes, kept with its C form.
#[derive(Debug, Clone)]
pub(crate) struct CPath {
    pub(crate) path: PathBuf,
    pub(crate) c: CString,
}

impl CPath {
    pub(crate) fn new(what: &'static str, path: &Path) -> Result<Self> {
        Ok(Self {
            path: path.to_owned(),
            c: c_string(what, path.as_os_str().as_bytes())?,
        })
    }
}

pub(super) fn c_string(what: &'static str, bytes: &[u8]) -> Result<CString> {
    CString::new(bytes).map_err(|_| Error::InteriorNul {
        what,
        value: String::from_utf8_lossy(bytes).into_owned(),
    })
}

impl VmConfigBuilder {
    /// Validates everything that can be checked before the framework sees it, each
    /// failure with its own error.
    ///
    /// # Errors
    /// The first check that fails, each with its own [`Error`] variant: CPU count and memory
    /// against the host's [`Limits`], a missing boot loader, files that do not exist or cannot
    /// be opened as needed, MAC addresses, tags and names, NUL bytes, Rosetta's availability.
    pub fn build(self) -> Result<VmConfig> {
        let limits = Limits::host();
        if !(limits.min_cpu_count..=limits.max_cpu_count).contains(&self.cpu_count) {
            return Err(Error::CpuCount {
                requested: self.cpu_count,
                min: limits.min_cpu_count,
                max: limits.max_cpu_count,
            });
        }
        if self.memory_size % MIB != 0 {
            return Err(Error::MemoryNotMibMultiple {
                requested: self.memory_size,
            });
        }
        if !(limits.min_memory_size..=limits.max_memory_size).contains(&self.memory_size) {
            return Err(Error::MemorySize {
                requested: self.memory_size,
                min: limits.min_memory_size,
                max: limits.max_memory_size,
            });
        }

        let boot_loader = self.boot_loader.ok_or(Error::MissingBootLoader)?;
        validate_boot_loader(&boot_loader)?;

        let saved_state = self
            .saved_state_path
            .map(|path| {
                check_creatable("saved-state file", &path)?;
                CPath::new("saved-state path", &path)
            })
            .transpose()?;

        // A saved state is bound to the machine identity: without a persisted one, a
        // new process could never restore it.
        let platform = match (self.platform, &saved_state) {
            (Some(identifier), _) => Some(identifier),
            (None, Some(saved)) if host::save_restore_supported() => Some(
                MachineIdentifier::Persisted(machine_identifier_next_to(&saved.path)),
            ),
            (None, _) => None,
        };
        if let Some(identifier) = &platform {
            validate_identifier(identifier)?;
        }

        for disk in &self.disks {
            validate_disk(disk, platform.is_some())?;
        }
        check_distinct_disks(&self.disks)?;

        let has_identity = matches!(
            platform,
            Some(MachineIdentifier::Bytes(_) | MachineIdentifier::Persisted(_))
        );
        let networks = self
            .networks
            .into_iter()
            .map(|network| validate_network(network, has_identity))
            .collect::<Result<Vec<_>>>()?;
        check_distinct_macs(&networks)?;

        for port in &self.serial_ports {
            if let SerialPort::File { path, .. } = port {
                if path.exists() {
                    check_file("serial log", path, true)?;
                } else {
                    check_creatable("serial log", path)?;
                }
                CPath::new("serial log path", path)?;
            }
        }

        for port in &self.console_ports {
            if port.name.is_empty() {
                return Err(Error::InvalidConsolePortName {
                    name: port.name.clone(),
                    reason: "is empty",
                });
            }
            c_string("console port name", port.name.as_bytes())?;
        }

        let mut tags = HashSet::new();
        let mut claim_tag = |tag: &str| -> Result<()> {
            check_share_tag(tag)?;
            if !tags.insert(tag.to_owned()) {
                return Err(Error::InvalidShareTag {
                    tag: tag.to_owned(),
                    reason: "is used by another share".into(),
                });
            }
            Ok(())
        };
        for share in &self.shares {
            claim_tag(&share.tag)?;
            validate_share(share)?;
        }
        if let Some(tag) = &self.rosetta_tag {
            match rosetta_availability() {
                RosettaAvailability::Installed => {}
                RosettaAvailability::NotInstalled => return Err(Error::RosettaNotInstalled),
                RosettaAvailability::NotSupported => return Err(Error::RosettaNotSupported),
            }
            claim_tag(tag)?;
            c_string("Rosetta tag", tag.as_bytes())?;
        }

        Ok(VmConfig {
            cpu_count: self.cpu_count,
            memory_size: self.memory_size,
            boot_loader,
            platform,
            disks: self.disks,
            networks,
            serial_ports: self.serial_ports,
            console_ports: self.console_ports,
            shares: self.shares,
            rosetta_tag: self.rosetta_tag,
            entropy: self.entropy,
            memory_balloon: self.memory_balloon,
            vsock: self.vsock,
            saved_state,
            timeouts: self.timeouts,
            on_graceful_timeout: self.on_graceful_timeout,
            #[cfg(applevz_simulator)]
            simulated_guest: self.simulated_guest,
        })
    }
}

fn validate_boot_loader(boot_loader: &BootLoader) -> Result<()> {
    match boot_loader {
        BootLoader::Linux(linux) => {
            check_file("kernel", &linux.kernel, false)?;
            if let Some(initrd) = &linux.initrd {
                check_file("initrd", initrd, false)?;
            }
            CPath::new("kernel path", &linux.kernel)?;
            if let Some(initrd) = &linux.initrd {
                CPath::new("initrd path", initrd)?;
            }
            c_string("kernel command line", linux.command_line.as_bytes())?;
        }
        BootLoader::Efi {
            variable_store: path,
            mode,
        } => {
            match mode {
                EfiVariableStore::Open => check_file("EFI variable store", path, true)?,
                EfiVariableStore::Create => check_creatable("EFI variable store", path)?,
                EfiVariableStore::OpenOrCreate if path.exists() => {
                    check_file("EFI variable store", path, true)?;
                }
                EfiVariableStore::OpenOrCreate => check_creatable("EFI variable store", path)?,
            }
            CPath::new("EFI variable store path", path)?;
        }
    }
    Ok(())
}

fn validate_disk(disk: &Disk, generic_platform: bool) -> Result<()> {
    check_file("disk image", &disk.path, !disk.read_only)?;
    if disk.interface == StorageInterface::Nvme && !generic_platform {
        return Err(Error::NvmeNeedsGenericPlatform {
            path: disk.path.clone(),
        });
    }
    if let Some(identifier) = &disk.identifier {
        check_block_device_identifier(identifier)?;
    }
    CPath::new("disk image path", &disk.path)?;
    if let Some(identifier) = &disk.identifier {
        c_string("block device identifier", identifier.as_bytes())?;
    }
    Ok(())
}

/// Refuses a file attached as two disks: the same file by another path, through a
/// symbolic link or a hard link (compared by device and inode, after every check that
/// the files exist).
fn check_distinct_disks(disks: &[Disk]) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::HashMap::new();
    for (index, disk) in disks.iter().enumerate() {
        let metadata = metadata_of("disk image", &disk.path)?;
        if let Some(&first) = seen.get(&(metadata.dev(), metadata.ino())) {
            return Err(Error::DuplicateDisk {
                path: disk.path.clone(),
                index,
                first,
            });
        }
        seen.insert((metadata.dev(), metadata.ino()), index);
    }
    Ok(())
}

/// Refuses a fixed MAC address given to two network devices (they are in canonical
/// form by now, so spelling does not matter). Random and stable addresses are
/// distinct by construction.
fn check_distinct_macs(networks: &[Network]) -> Result<()> {
    let mut seen = std::collections::HashMap::new();
    for (index, network) in networks.iter().enumerate() {
        if let MacChoice::Fixed(mac) = &network.mac {
            if let Some(&first) = seen.get(mac) {
                return Err(Error::DuplicateMacAddress {
                    value: mac.clone(),
                    index,
                    first,
                });
            }
            seen.insert(mac.clone(), index);
        }
    }
    Ok(())
}

/// Checks a network device; a fixed MAC address comes back in canonical form.
fn validate_network(mut network: Network, has_identity: bool) -> Result<Network> {
    match &network.mac {
        MacChoice::Random => {}
        MacChoice::Fixed(mac) => {
            let parsed: MacAddress = mac.parse()?;
            network.mac = MacChoice::Fixed(parsed.to_string());
        }
        MacChoice::Stable if has_identity => {}
        MacChoice::Stable => return Err(Error::StableMacNeedsIdentity),
    }
    if let NetworkKind::FileHandle { socket, mtu } = &network.kind {
        check_datagram_socket(socket)?;
        if let Some(mtu) = *mtu {
            if !(1500..=65535).contains(&mtu) {
                return Err(Error::InvalidMtu { mtu });
            }
        }
    }
    Ok(network)
}

fn validate_share(share: &DirectoryShare) -> Result<()> {
    if share.directories.is_empty() {
        return Err(Error::InvalidShareTag {
            tag: share.tag.clone(),
            reason: "shares no directory".into(),
        });
    }
    let mut seen = HashSet::new();
    for directory in &share.directories {
        if let Some(name) = &directory.name {
            check_share_name(&share.tag, name)?;
            if !seen.insert(name.clone()) {
                return Err(Error::InvalidShareName {
                    tag: share.tag.clone(),
                    name: name.clone(),
                    reason: "appears twice",
                });
            }
            c_string("shared directory name", name.as_bytes())?;
        }
        check_directory("shared directory", &directory.path)?;
        CPath::new("shared directory path", &directory.path)?;
    }
    c_string("share tag", share.tag.as_bytes())?;
    Ok(())
}

/// Where a saved state's machine identity is kept when the caller chose none.
fn machine_identifier_next_to(saved_state: &Path) -> PathBuf {
    let mut name = saved_state.file_name().unwrap_or_default().to_owned();
    name.push(".machine-identifier");
    saved_state.with_file_name(name)
}

fn validate_identifier(identifier: &MachineIdentifier) -> Result<()> {
    let max = sys::AVZ_MACHINE_IDENTIFIER_MAX as usize;
    let size_error = |origin: String, length: u64| Error::InvalidMachineIdentifier {
        origin,
        reason: format!("{length} bytes is not an identifier (1..={max})"),
    };
    match identifier {
        MachineIdentifier::Fresh => Ok(()),
        MachineIdentifier::Bytes(bytes) if bytes.is_empty() || bytes.len() > max => {
            Err(size_error("given bytes".into(), bytes.len() as u64))
        }
        MachineIdentifier::Bytes(_) => Ok(()),
        MachineIdentifier::Persisted(path) if path.exists() => {
            check_file("machine identifier", path, false)?;
            let length = File::open(path)
                .and_then(|f| f.metadata())
                .map_or(0, |m| m.len());
            if length == 0 || length > max as u64 {
                return Err(size_error(path.display().to_string(), length));
            }
            Ok(())
        }
        MachineIdentifier::Persisted(path) => {
            check_creatable("machine identifier", path)?;
            CPath::new("machine identifier path", path)?;
            Ok(())
        }
    }
}

/// Checks that `path` names an existing regular file that can be opened as asked.
fn check_file(role: &'static str, path: &Path, write: bool) -> Result<()> {
    let metadata = metadata_of(role, path)?;
    if metadata.is_dir() {
        return Err(unusable(role, path, "it is a directory".to_owned()));
    }
    OpenOptions::new()
        .read(true)
        .write(write)
        .open(path)
        .map(drop)
        .map_err(|error| {
            let access = if write { "read and write" } else { "read" };
            unusable(role, path, format!("cannot open it to {access}: {error}"))
        })
}

/// Checks that `path` names an existing directory.
fn check_directory(role: &'static str, path: &Path) -> Result<()> {
    if metadata_of(role, path)?.is_dir() {
        Ok(())
    } else {
        Err(unusable(role, path, "it is not a directory".to_owned()))
    }
}

fn metadata_of(role: &'static str, path: &Path) -> Result<std::fs::Metadata> {
    std::fs::metadata(path).map_err(|error| match error.kind() {
        ErrorKind::NotFound => Error::FileNotFound {
            role,
            path: path.to_owned(),
        },
        _ => unusable(role, path, error.to_string()),
    })
}

fn unusable(role: &'static str, path: &Path, reason: String) -> Error {
    Error::FileUnusable {
        role,
        path: path.to_owned(),
        reason,
    }
}

/// Checks that a file applevz may create at `path` has an existing parent directory
/// and is not a directory itself.
fn check_creatable(role: &'static str, path: &Path) -> Result<()> {
    if path.is_dir() {
        return Err(unusable(role, path, "it is a directory".to_owned()));
    }
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        return Err(unusable(
            role,
            path,
            "its directory does not exist".to_owned(),
        ));
    }
    Ok(())
}
