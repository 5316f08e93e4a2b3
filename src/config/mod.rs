//! VM configuration: a builder validated in Rust before anything crosses the ABI, and
//! the translation of a validated configuration into a native one.

use std::collections::HashSet;
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub mod definition;
pub(crate) mod devices;

use crate::config::devices::{
    CachingMode, ConsolePort, DirectoryShare, Disk, MacAddress, MacChoice, Network, NetworkKind,
    RosettaAvailability, SerialPort, StorageInterface, SyncMode, check_block_device_identifier,
    check_datagram_socket, check_share_name, check_share_tag, rosetta_availability,
};
use crate::error::{Error, Result};
use crate::ffi::host;
use crate::ffi::native_config::NativeConfig;
use crate::ffi::sys;
use crate::state::Operation;

const MIB: u64 = 1024 * 1024;

/// The host's configuration limits (`VZVirtualMachineConfiguration`'s class
/// properties).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Fewest virtual CPUs.
    pub min_cpu_count: u32,
    /// Most virtual CPUs.
    pub max_cpu_count: u32,
    /// Smallest memory size in bytes.
    pub min_memory_size: u64,
    /// Largest memory size in bytes.
    pub max_memory_size: u64,
}

impl Limits {
    /// The limits of this host.
    pub fn host() -> Self {
        let raw = host::limits();
        Self {
            min_cpu_count: raw.min_cpu_count,
            max_cpu_count: raw.max_cpu_count,
            min_memory_size: raw.min_memory_size,
            max_memory_size: raw.max_memory_size,
        }
    }
}

/// Whether this host supports virtualization at all (`VZVirtualMachine.isSupported`).
pub fn is_supported() -> bool {
    host::is_supported()
}

/// Whether this host can save and restore VM state (Apple silicon with macOS 14+).
pub fn save_restore_supported() -> bool {
    host::save_restore_supported()
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

fn c_string(what: &'static str, bytes: &[u8]) -> Result<CString> {
    CString::new(bytes).map_err(|_| Error::InteriorNul {
        what,
        value: String::from_utf8_lossy(bytes).into_owned(),
    })
}

/// The Linux kernel boot loader.
#[derive(Debug, Clone)]
pub struct LinuxBootLoader {
    kernel: PathBuf,
    initrd: Option<PathBuf>,
    command_line: String,
}

impl LinuxBootLoader {
    /// Boots `kernel` (an uncompressed ARM64 `Image` on Apple silicon, a `bzImage` on
    /// Intel) with an empty command line.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        Self {
            kernel: kernel.into(),
            initrd: None,
            command_line: String::new(),
        }
    }

    /// Adds an initial RAM disk.
    pub fn initrd(mut self, initrd: impl Into<PathBuf>) -> Self {
        self.initrd = Some(initrd.into());
        self
    }

    /// Sets the kernel command line (for example `console=hvc0`).
    pub fn command_line(mut self, command_line: impl Into<String>) -> Self {
        self.command_line = command_line.into();
        self
    }
}

/// How the EFI variable store is obtained (macOS 13).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EfiVariableStore {
    /// Open an existing store; it must exist.
    Open,
    /// Create a new store, replacing any file at the path.
    Create,
    /// Open the store if it exists, create it otherwise: the way to keep boot entries
    /// across runs.
    OpenOrCreate,
}

/// The machine identity of the generic platform.
#[derive(Debug, Clone)]
pub enum MachineIdentifier {
    /// A new identity for every VM instance.
    Fresh,
    /// A data representation from [`MachineIdentifier::generate`].
    Bytes(Vec<u8>),
    /// Read from this file, or generated and written to it when it does not exist:
    /// the same identity on every run.
    Persisted(PathBuf),
}

impl MachineIdentifier {
    /// A new identifier's data representation (macOS 13), to persist as you like.
    pub fn generate() -> Result<Vec<u8>> {
        host::new_machine_identifier().map_err(Error::during(Operation::Create))
    }
}

/// What `shutdown(Powerdown)` does when the guest has not stopped within the graceful
/// timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnGracefulTimeout {
    /// Return [`Error::Timeout`]; the guest keeps running.
    #[default]
    Fail,
    /// Force the VM off (like `Poweroff`).
    ForceStop,
}

/// Per-operation timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Boot until the framework reports the VM running.
    pub start: Duration,
    /// A forced stop.
    pub stop: Duration,
    /// Pausing.
    pub pause: Duration,
    /// Resuming.
    pub resume: Duration,
    /// Saving the VM's state (grows with memory size).
    pub save: Duration,
    /// Restoring the VM's state.
    pub restore: Duration,
    /// How long `shutdown(Powerdown)` waits for the guest to power off.
    pub graceful_shutdown: Duration,
    /// A vsock connection to a guest port.
    pub vsock_connect: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            start: Duration::from_secs(60),
            stop: Duration::from_secs(30),
            pause: Duration::from_secs(30),
            resume: Duration::from_secs(30),
            save: Duration::from_secs(300),
            restore: Duration::from_secs(300),
            graceful_shutdown: Duration::from_secs(30),
            vsock_connect: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone)]
enum ValidBootLoader {
    Linux {
        kernel: CPath,
        initrd: Option<CPath>,
        command_line: CString,
    },
    Efi {
        variable_store: CPath,
        mode: EfiVariableStore,
    },
}

#[derive(Debug, Clone)]
enum ValidIdentifier {
    Fresh,
    Bytes(Vec<u8>),
    Persisted(PathBuf),
}

#[derive(Debug, Clone)]
struct ValidDisk {
    path: CPath,
    read_only: bool,
    caching: CachingMode,
    sync: SyncMode,
    interface: StorageInterface,
    identifier: Option<CString>,
}

#[derive(Debug, Clone)]
enum ValidMac {
    Random,
    Fixed(CString),
    /// Derived from the machine identity and this device index.
    Stable(u32),
}

#[derive(Debug, Clone)]
struct ValidNetwork {
    kind: NetworkKind,
    mac: ValidMac,
}

#[derive(Debug, Clone)]
struct ValidShare {
    tag: CString,
    /// `None` for a single-directory share.
    names: Option<Vec<CString>>,
    paths: Vec<CPath>,
    read_only: Vec<bool>,
}

#[derive(Debug, Clone)]
struct ValidConsolePort {
    name: CString,
    is_console: bool,
    input: Option<Arc<OwnedFd>>,
    output: Option<Arc<OwnedFd>>,
}

#[derive(Debug, Clone)]
enum ValidSerial {
    File {
        path: CPath,
        append: bool,
    },
    Fds {
        read: Option<Arc<OwnedFd>>,
        write: Option<Arc<OwnedFd>>,
    },
}

/// A validated VM configuration; make one with [`VmConfig::builder`].
#[derive(Debug, Clone)]
pub struct VmConfig {
    cpu_count: u32,
    memory_size: u64,
    boot_loader: ValidBootLoader,
    platform: Option<ValidIdentifier>,
    disks: Vec<ValidDisk>,
    networks: Vec<ValidNetwork>,
    serial_ports: Vec<ValidSerial>,
    console_ports: Vec<ValidConsolePort>,
    shares: Vec<ValidShare>,
    rosetta_tag: Option<CString>,
    entropy: bool,
    memory_balloon: bool,
    vsock: bool,
    pub(crate) saved_state: Option<CPath>,
    pub(crate) timeouts: Timeouts,
    pub(crate) on_graceful_timeout: OnGracefulTimeout,
    #[cfg(applevz_simulator)]
    simulated_guest: crate::sim::SimulatedGuest,
}

/// Collects a configuration; [`VmConfigBuilder::build`] validates it.
#[derive(Debug, Clone)]
pub struct VmConfigBuilder {
    cpu_count: u32,
    memory_size: u64,
    linux_boot_loader: Option<LinuxBootLoader>,
    efi_boot_loader: Option<(PathBuf, EfiVariableStore)>,
    platform: Option<MachineIdentifier>,
    disks: Vec<Disk>,
    networks: Vec<Network>,
    serial_ports: Vec<SerialPort>,
    console_ports: Vec<ConsolePort>,
    shares: Vec<DirectoryShare>,
    rosetta_tag: Option<String>,
    entropy: bool,
    memory_balloon: bool,
    vsock: bool,
    saved_state_path: Option<PathBuf>,
    timeouts: Timeouts,
    on_graceful_timeout: OnGracefulTimeout,
    #[cfg(applevz_simulator)]
    simulated_guest: crate::sim::SimulatedGuest,
}

impl VmConfig {
    /// A builder with 1 CPU and 512 MiB of memory and nothing else.
    pub fn builder() -> VmConfigBuilder {
        VmConfigBuilder {
            cpu_count: 1,
            memory_size: 512 * MIB,
            linux_boot_loader: None,
            efi_boot_loader: None,
            platform: None,
            disks: Vec::new(),
            networks: Vec::new(),
            serial_ports: Vec::new(),
            console_ports: Vec::new(),
            shares: Vec::new(),
            rosetta_tag: None,
            entropy: false,
            memory_balloon: false,
            vsock: false,
            saved_state_path: None,
            timeouts: Timeouts::default(),
            on_graceful_timeout: OnGracefulTimeout::default(),
            #[cfg(applevz_simulator)]
            simulated_guest: crate::sim::SimulatedGuest::default(),
        }
    }

    /// The saved-state file, if the configuration has one.
    pub fn saved_state_path(&self) -> Option<&Path> {
        self.saved_state.as_ref().map(|p| p.path.as_path())
    }

    /// The per-operation timeouts.
    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// The memory size in bytes.
    pub fn memory_size(&self) -> u64 {
        self.memory_size
    }

    /// Whether the VM has a memory balloon device.
    pub fn has_memory_balloon(&self) -> bool {
        self.memory_balloon
    }

    /// Whether the VM has a virtio-vsock device.
    pub fn has_vsock(&self) -> bool {
        self.vsock
    }

    /// Builds the native configuration. Files are checked again by the native side;
    /// a persisted machine identifier is created here on first use.
    pub(crate) fn to_native(&self) -> Result<NativeConfig> {
        let create_error = Error::during(Operation::Create);
        let mut native = NativeConfig::new();
        native.set_cpu_count(self.cpu_count);
        native.set_memory_size(self.memory_size);
        match &self.boot_loader {
            ValidBootLoader::Linux {
                kernel,
                initrd,
                command_line,
            } => native
                .set_linux_boot_loader(
                    &kernel.c,
                    initrd.as_ref().map(|i| i.c.as_c_str()),
                    command_line,
                )
                .map_err(create_error)?,
            ValidBootLoader::Efi {
                variable_store,
                mode,
            } => {
                let create = match mode {
                    EfiVariableStore::Open => false,
                    EfiVariableStore::Create => true,
                    EfiVariableStore::OpenOrCreate => !variable_store.path.exists(),
                };
                native
                    .set_efi_boot_loader(&variable_store.c, create)
                    .map_err(create_error)?;
            }
        }
        let identity: Option<Vec<u8>> = match &self.platform {
            None => None,
            Some(ValidIdentifier::Fresh) => {
                native.set_generic_platform(None).map_err(create_error)?;
                None
            }
            Some(ValidIdentifier::Bytes(bytes)) => {
                native
                    .set_generic_platform(Some(bytes))
                    .map_err(create_error)?;
                Some(bytes.clone())
            }
            Some(ValidIdentifier::Persisted(path)) => {
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
            native
                .add_storage_device(
                    disk.interface.raw(),
                    &disk.path.c,
                    disk.read_only,
                    disk.caching.raw(),
                    disk.sync.raw(),
                    disk.identifier.as_deref(),
                )
                .map_err(create_error)?;
        }
        for network in &self.networks {
            let stable;
            let mac = match &network.mac {
                ValidMac::Random => None,
                ValidMac::Fixed(mac) => Some(mac.as_c_str()),
                ValidMac::Stable(index) => {
                    let seed = identity
                        .as_deref()
                        .expect("build() requires an identity for a stable MAC");
                    stable = c_string(
                        "MAC address",
                        MacAddress::stable(seed, *index).to_string().as_bytes(),
                    )?;
                    Some(stable.as_c_str())
                }
            };
            match &network.kind {
                NetworkKind::Nat => native.add_nat_network_device(mac),
                NetworkKind::FileHandle { socket, mtu } => {
                    native.add_file_handle_network_device(socket.as_raw_fd(), mac, mtu.unwrap_or(0))
                }
            }
            .map_err(create_error)?;
        }
        let raw_fd = |fd: &Option<Arc<OwnedFd>>| fd.as_ref().map_or(-1, |fd| fd.as_raw_fd());
        for serial in &self.serial_ports {
            match serial {
                ValidSerial::File { path, append } => native.add_serial_port_file(&path.c, *append),
                ValidSerial::Fds { read, write } => {
                    native.add_serial_port_fds(raw_fd(read), raw_fd(write))
                }
            }
            .map_err(create_error)?;
        }
        for port in &self.console_ports {
            native
                .add_console_port(
                    &port.name,
                    port.is_console,
                    raw_fd(&port.input),
                    raw_fd(&port.output),
                )
                .map_err(create_error)?;
        }
        for share in &self.shares {
            let names: Option<Vec<&std::ffi::CStr>> = share
                .names
                .as_ref()
                .map(|names| names.iter().map(CString::as_c_str).collect());
            let paths: Vec<&std::ffi::CStr> = share.paths.iter().map(|p| p.c.as_c_str()).collect();
            native
                .add_directory_share(&share.tag, names.as_deref(), &paths, &share.read_only)
                .map_err(create_error)?;
        }
        if let Some(tag) = &self.rosetta_tag {
            native.add_rosetta_share(tag).map_err(create_error)?;
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
                let mut file = OpenOptions::new().write(true).create_new(true).open(path)?;
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

impl VmConfigBuilder {
    /// Number of virtual CPUs.
    pub fn cpu_count(mut self, count: u32) -> Self {
        self.cpu_count = count;
        self
    }

    /// Memory size in bytes (a multiple of 1 MiB).
    pub fn memory_size(mut self, bytes: u64) -> Self {
        self.memory_size = bytes;
        self
    }

    /// Memory size in MiB.
    pub fn memory_mib(self, mib: u64) -> Self {
        self.memory_size(mib.saturating_mul(MIB))
    }

    /// Boots a Linux kernel directly (replaces an EFI boot loader).
    pub fn linux_boot_loader(mut self, boot_loader: LinuxBootLoader) -> Self {
        self.linux_boot_loader = Some(boot_loader);
        self.efi_boot_loader = None;
        self
    }

    /// Boots through EFI with the variable store at `path` (macOS 13; replaces a
    /// Linux boot loader).
    pub fn efi_boot_loader(
        mut self,
        variable_store: impl Into<PathBuf>,
        mode: EfiVariableStore,
    ) -> Self {
        self.efi_boot_loader = Some((variable_store.into(), mode));
        self.linux_boot_loader = None;
        self
    }

    /// Uses the generic platform with this machine identity (macOS 12; a given
    /// identifier needs macOS 13).
    pub fn generic_platform(mut self, identifier: MachineIdentifier) -> Self {
        self.platform = Some(identifier);
        self
    }

    /// Adds a disk.
    pub fn disk(mut self, disk: Disk) -> Self {
        self.disks.push(disk);
        self
    }

    /// Adds a network device.
    pub fn network(mut self, network: Network) -> Self {
        self.networks.push(network);
        self
    }

    /// Adds a NAT network device with this MAC address, or a random locally
    /// administered one for `None` (shorthand for [`VmConfigBuilder::network`]).
    pub fn nat_network(self, mac_address: Option<&str>) -> Self {
        let network = match mac_address {
            Some(mac) => Network::nat().mac_address(mac),
            None => Network::nat(),
        };
        self.network(network)
    }

    /// Adds a virtio console serial port.
    pub fn serial_port(mut self, port: SerialPort) -> Self {
        self.serial_ports.push(port);
        self
    }

    /// Adds a virtio console port (macOS 13).
    pub fn console_port(mut self, port: ConsolePort) -> Self {
        self.console_ports.push(port);
        self
    }

    /// Shares directories with the guest over virtiofs (macOS 12).
    pub fn directory_share(mut self, share: DirectoryShare) -> Self {
        self.shares.push(share);
        self
    }

    /// Shares Rosetta for Linux under `tag` (Apple silicon, macOS 13), so the guest
    /// can run x86_64 Linux binaries.
    pub fn rosetta(mut self, tag: impl Into<String>) -> Self {
        self.rosetta_tag = Some(tag.into());
        self
    }

    /// Adds a virtio entropy device (the guest's `/dev/hwrng`).
    pub fn entropy(mut self, enabled: bool) -> Self {
        self.entropy = enabled;
        self
    }

    /// Adds a memory balloon device, so the host can reclaim guest memory at run time
    /// ([`crate::VirtualMachine::set_memory_balloon_target`]).
    pub fn memory_balloon(mut self, enabled: bool) -> Self {
        self.memory_balloon = enabled;
        self
    }

    /// Adds a virtio-vsock device ([`crate::VirtualMachine::vsock_connect`],
    /// [`crate::VirtualMachine::vsock_listen`]).
    pub fn vsock(mut self, enabled: bool) -> Self {
        self.vsock = enabled;
        self
    }

    /// Where `suspend()` stores the VM's state. A VM created while this file exists
    /// starts out suspended.
    ///
    /// A saved state can only be restored under the machine identity that saved it.
    /// Unless [`VmConfigBuilder::generic_platform`] chooses one, on hosts that can save
    /// and restore the identity is persisted next to the file, as
    /// `<file name>.machine-identifier` (created on first use, kept afterwards).
    pub fn saved_state_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.saved_state_path = Some(path.into());
        self
    }

    /// Per-operation timeouts.
    pub fn timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// What `shutdown(Powerdown)` does when the guest ignores the request.
    pub fn on_graceful_timeout(mut self, action: OnGracefulTimeout) -> Self {
        self.on_graceful_timeout = action;
        self
    }

    /// Scripts the simulated guest (simulator targets only).
    #[cfg(applevz_simulator)]
    pub fn simulated_guest(mut self, guest: crate::sim::SimulatedGuest) -> Self {
        self.simulated_guest = guest;
        self
    }

    /// Validates everything that can be checked before the framework sees it, each
    /// failure with its own error.
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

        let boot_loader = match (self.linux_boot_loader, self.efi_boot_loader) {
            (Some(linux), _) => {
                check_file("kernel", &linux.kernel, false)?;
                if let Some(initrd) = &linux.initrd {
                    check_file("initrd", initrd, false)?;
                }
                ValidBootLoader::Linux {
                    kernel: CPath::new("kernel path", &linux.kernel)?,
                    initrd: linux
                        .initrd
                        .as_deref()
                        .map(|p| CPath::new("initrd path", p))
                        .transpose()?,
                    command_line: c_string("kernel command line", linux.command_line.as_bytes())?,
                }
            }
            (None, Some((path, mode))) => {
                match mode {
                    EfiVariableStore::Open => check_file("EFI variable store", &path, true)?,
                    EfiVariableStore::Create => check_creatable("EFI variable store", &path)?,
                    EfiVariableStore::OpenOrCreate if path.exists() => {
                        check_file("EFI variable store", &path, true)?
                    }
                    EfiVariableStore::OpenOrCreate => check_creatable("EFI variable store", &path)?,
                }
                ValidBootLoader::Efi {
                    variable_store: CPath::new("EFI variable store path", &path)?,
                    mode,
                }
            }
            (None, None) => return Err(Error::MissingBootLoader),
        };

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
        let platform = platform.map(validate_identifier).transpose()?;

        let disks = self
            .disks
            .into_iter()
            .map(|disk| {
                check_file("disk image", &disk.path, !disk.read_only)?;
                if disk.interface == StorageInterface::Nvme && platform.is_none() {
                    return Err(Error::NvmeNeedsGenericPlatform { path: disk.path });
                }
                if let Some(identifier) = &disk.identifier {
                    check_block_device_identifier(identifier)?;
                }
                Ok(ValidDisk {
                    path: CPath::new("disk image path", &disk.path)?,
                    read_only: disk.read_only,
                    caching: disk.caching,
                    sync: disk.sync,
                    interface: disk.interface,
                    identifier: disk
                        .identifier
                        .map(|id| c_string("block device identifier", id.as_bytes()))
                        .transpose()?,
                })
            })
            .collect::<Result<Vec<_>>>()?;

        let has_identity = matches!(
            platform,
            Some(ValidIdentifier::Bytes(_) | ValidIdentifier::Persisted(_))
        );
        let networks = self
            .networks
            .into_iter()
            .enumerate()
            .map(|(index, network)| {
                let mac = match network.mac {
                    MacChoice::Random => ValidMac::Random,
                    MacChoice::Fixed(mac) => {
                        let parsed: MacAddress = mac.parse()?;
                        ValidMac::Fixed(c_string("MAC address", parsed.to_string().as_bytes())?)
                    }
                    MacChoice::Stable if has_identity => {
                        ValidMac::Stable(u32::try_from(index).unwrap_or(u32::MAX))
                    }
                    MacChoice::Stable => return Err(Error::StableMacNeedsIdentity),
                };
                if let NetworkKind::FileHandle { socket, mtu } = &network.kind {
                    check_datagram_socket(socket)?;
                    if let Some(mtu) = *mtu {
                        if !(1500..=65535).contains(&mtu) {
                            return Err(Error::InvalidMtu { mtu });
                        }
                    }
                }
                Ok(ValidNetwork {
                    kind: network.kind,
                    mac,
                })
            })
            .collect::<Result<Vec<_>>>()?;

        let serial_ports = self
            .serial_ports
            .into_iter()
            .map(|port| match port {
                SerialPort::File { path, append } => {
                    if path.exists() {
                        check_file("serial log", &path, true)?;
                    } else {
                        check_creatable("serial log", &path)?;
                    }
                    Ok(ValidSerial::File {
                        path: CPath::new("serial log path", &path)?,
                        append,
                    })
                }
                SerialPort::Fds { read, write } => Ok(ValidSerial::Fds { read, write }),
            })
            .collect::<Result<Vec<_>>>()?;

        let console_ports = self
            .console_ports
            .into_iter()
            .map(|port| {
                if port.name.is_empty() {
                    return Err(Error::InvalidConsolePortName {
                        name: port.name,
                        reason: "is empty",
                    });
                }
                Ok(ValidConsolePort {
                    name: c_string("console port name", port.name.as_bytes())?,
                    is_console: port.is_console,
                    input: port.input,
                    output: port.output,
                })
            })
            .collect::<Result<Vec<_>>>()?;

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
        let mut shares = Vec::with_capacity(self.shares.len());
        for share in self.shares {
            claim_tag(&share.tag)?;
            shares.push(validate_share(share)?);
        }
        let rosetta_tag = match self.rosetta_tag {
            None => None,
            Some(tag) => {
                match rosetta_availability() {
                    RosettaAvailability::Installed => {}
                    RosettaAvailability::NotInstalled => return Err(Error::RosettaNotInstalled),
                    RosettaAvailability::NotSupported => return Err(Error::RosettaNotSupported),
                }
                claim_tag(&tag)?;
                Some(c_string("Rosetta tag", tag.as_bytes())?)
            }
        };

        Ok(VmConfig {
            cpu_count: self.cpu_count,
            memory_size: self.memory_size,
            boot_loader,
            platform,
            disks,
            networks,
            serial_ports,
            console_ports,
            shares,
            rosetta_tag,
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

fn validate_share(share: DirectoryShare) -> Result<ValidShare> {
    if share.directories.is_empty() {
        return Err(Error::InvalidShareTag {
            tag: share.tag,
            reason: "shares no directory".into(),
        });
    }
    let mut names = Vec::new();
    let mut seen = HashSet::new();
    let mut paths = Vec::new();
    let mut read_only = Vec::new();
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
            names.push(c_string("shared directory name", name.as_bytes())?);
        }
        check_directory("shared directory", &directory.path)?;
        paths.push(CPath::new("shared directory path", &directory.path)?);
        read_only.push(directory.read_only);
    }
    Ok(ValidShare {
        tag: c_string("share tag", share.tag.as_bytes())?,
        names: (!share.single).then_some(names),
        paths,
        read_only,
    })
}

/// Where a saved state's machine identity is kept when the caller chose none.
pub(crate) fn machine_identifier_next_to(saved_state: &Path) -> PathBuf {
    let mut name = saved_state.file_name().unwrap_or_default().to_owned();
    name.push(".machine-identifier");
    saved_state.with_file_name(name)
}

fn validate_identifier(identifier: MachineIdentifier) -> Result<ValidIdentifier> {
    let max = sys::AVZ_MACHINE_IDENTIFIER_MAX as usize;
    let size_error = |origin: String, length: u64| Error::InvalidMachineIdentifier {
        origin,
        reason: format!("{length} bytes is not an identifier (1..={max})"),
    };
    match identifier {
        MachineIdentifier::Fresh => Ok(ValidIdentifier::Fresh),
        MachineIdentifier::Bytes(bytes) if bytes.is_empty() || bytes.len() > max => {
            Err(size_error("given bytes".into(), bytes.len() as u64))
        }
        MachineIdentifier::Bytes(bytes) => Ok(ValidIdentifier::Bytes(bytes)),
        MachineIdentifier::Persisted(path) if path.exists() => {
            check_file("machine identifier", &path, false)?;
            let length = File::open(&path)
                .and_then(|f| f.metadata())
                .map(|m| m.len())
                .unwrap_or(0);
            if length == 0 || length > max as u64 {
                return Err(size_error(path.display().to_string(), length));
            }
            Ok(ValidIdentifier::Persisted(path))
        }
        MachineIdentifier::Persisted(path) => {
            check_creatable("machine identifier", &path)?;
            CPath::new("machine identifier path", &path)?;
            Ok(ValidIdentifier::Persisted(path))
        }
    }
}
