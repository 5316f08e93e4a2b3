//! VM configuration: a builder validated in Rust before anything crosses the ABI, and
//! the translation of a validated configuration into a native one.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::native::{NativeConfig, host};
use crate::state::Operation;
use crate::sys;

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

/// How a disk image is cached by the host (`VZDiskImageCachingMode`, macOS 12).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CachingMode {
    /// The framework decides.
    Automatic,
    /// No host caching.
    Uncached,
    /// Host caching; the safe choice for writable Linux disks.
    Cached,
}

/// How guest flushes reach the disk image (`VZDiskImageSynchronizationMode`, macOS 12).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// Flush to permanent storage.
    Full,
    /// `fsync` only.
    Fsync,
    /// Never flush (scratch disks).
    None,
}

/// A virtio block disk backed by a raw disk image.
#[derive(Debug, Clone)]
pub struct Disk {
    path: PathBuf,
    read_only: bool,
    caching: CachingMode,
    sync: SyncMode,
}

impl Disk {
    /// A writable disk. Caching defaults to [`CachingMode::Cached`] with
    /// [`SyncMode::Fsync`], which avoids the file-system corruption Linux guests have
    /// shown with automatic caching.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            read_only: false,
            caching: CachingMode::Cached,
            sync: SyncMode::Fsync,
        }
    }

    /// Attaches the image read-only.
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// Overrides the caching mode.
    pub fn caching(mut self, caching: CachingMode) -> Self {
        self.caching = caching;
        self
    }

    /// Overrides the synchronization mode.
    pub fn sync(mut self, sync: SyncMode) -> Self {
        self.sync = sync;
        self
    }
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

/// A MAC address, `xx:xx:xx:xx:xx:xx`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddress([u8; 6]);

impl MacAddress {
    /// The address's six octets.
    pub fn octets(self) -> [u8; 6] {
        self.0
    }
}

impl FromStr for MacAddress {
    type Err = Error;

    fn from_str(value: &str) -> Result<Self> {
        let invalid = |reason| Error::InvalidMacAddress {
            value: value.to_owned(),
            reason,
        };
        let mut octets = [0u8; 6];
        let mut parts = value.split(':');
        for octet in &mut octets {
            let part = parts
                .next()
                .ok_or_else(|| invalid("has fewer than six octets"))?;
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(invalid(
                    "needs six two-digit hexadecimal octets separated by ':'",
                ));
            }
            *octet =
                u8::from_str_radix(part, 16).map_err(|_| invalid("has a non-hexadecimal octet"))?;
        }
        if parts.next().is_some() {
            return Err(invalid("has more than six octets"));
        }
        if octets[0] & 1 != 0 {
            return Err(invalid(
                "is a multicast address; a network device needs a unicast one",
            ));
        }
        Ok(Self(octets))
    }
}

impl std::fmt::Display for MacAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// A virtio serial console port.
#[derive(Debug, Clone)]
pub enum SerialPort {
    /// Guest output written to a file.
    File {
        /// The log file (created when missing).
        path: PathBuf,
        /// Append instead of truncating.
        append: bool,
    },
    /// Guest input read from one descriptor, output written to another (for example a
    /// terminal or a pipe). The native side duplicates them.
    Fds {
        /// Input to the guest, if any.
        read: Option<Arc<OwnedFd>>,
        /// Output from the guest, if any.
        write: Option<Arc<OwnedFd>>,
    },
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
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) enum ValidBootLoader {
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
pub(crate) enum ValidIdentifier {
    Fresh,
    Bytes(Vec<u8>),
    Persisted(PathBuf),
}

#[derive(Debug, Clone)]
pub(crate) struct ValidDisk {
    path: CPath,
    read_only: bool,
    caching: CachingMode,
    sync: SyncMode,
}

#[derive(Debug, Clone)]
pub(crate) enum ValidSerial {
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
    nat_networks: Vec<Option<CString>>,
    serial_ports: Vec<ValidSerial>,
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
    nat_networks: Vec<Option<String>>,
    serial_ports: Vec<SerialPort>,
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
            nat_networks: Vec::new(),
            serial_ports: Vec::new(),
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
        match &self.platform {
            None => {}
            Some(ValidIdentifier::Fresh) => {
                native.set_generic_platform(None).map_err(create_error)?
            }
            Some(ValidIdentifier::Bytes(bytes)) => native
                .set_generic_platform(Some(bytes))
                .map_err(create_error)?,
            Some(ValidIdentifier::Persisted(path)) => {
                let bytes = load_or_create_identifier(path)?;
                native
                    .set_generic_platform(Some(&bytes))
                    .map_err(|source| Error::InvalidMachineIdentifier {
                        path: path.clone(),
                        reason: source.description,
                    })?;
            }
        }
        for disk in &self.disks {
            native
                .add_virtio_block_device(
                    &disk.path.c,
                    disk.read_only,
                    disk.caching.raw(),
                    disk.sync.raw(),
                )
                .map_err(create_error)?;
        }
        for mac in &self.nat_networks {
            native
                .add_nat_network_device(mac.as_deref())
                .map_err(create_error)?;
        }
        for serial in &self.serial_ports {
            match serial {
                ValidSerial::File { path, append } => native.add_serial_port_file(&path.c, *append),
                ValidSerial::Fds { read, write } => {
                    let raw =
                        |fd: &Option<Arc<OwnedFd>>| fd.as_ref().map_or(-1, |fd| fd.as_raw_fd());
                    native.add_serial_port_fds(raw(read), raw(write))
                }
            }
            .map_err(create_error)?;
        }
        #[cfg(applevz_simulator)]
        native.apply_simulated_guest(&self.simulated_guest);
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
            write().map_err(|source| Error::Io {
                action: "write the machine identifier",
                path: path.to_owned(),
                source,
            })?;
            Ok(bytes)
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
    let unusable = |reason: String| Error::FileUnusable {
        role,
        path: path.to_owned(),
        reason,
    };
    let metadata = std::fs::metadata(path).map_err(|error| match error.kind() {
        ErrorKind::NotFound => Error::FileNotFound {
            role,
            path: path.to_owned(),
        },
        _ => unusable(error.to_string()),
    })?;
    if metadata.is_dir() {
        return Err(unusable("it is a directory".to_owned()));
    }
    OpenOptions::new()
        .read(true)
        .write(write)
        .open(path)
        .map(drop)
        .map_err(|error| {
            let access = if write { "read and write" } else { "read" };
            unusable(format!("cannot open it to {access}: {error}"))
        })
}

/// Checks that a file applevz may create at `path` has an existing parent directory
/// and is not a directory itself.
fn check_creatable(role: &'static str, path: &Path) -> Result<()> {
    let unusable = |reason: &str| Error::FileUnusable {
        role,
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    if path.is_dir() {
        return Err(unusable("it is a directory"));
    }
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        return Err(unusable("its directory does not exist"));
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

    /// Adds a virtio block disk.
    pub fn disk(mut self, disk: Disk) -> Self {
        self.disks.push(disk);
        self
    }

    /// Adds a NAT network device with this MAC address, or a random locally
    /// administered one for `None`.
    pub fn nat_network(mut self, mac_address: Option<&str>) -> Self {
        self.nat_networks.push(mac_address.map(str::to_owned));
        self
    }

    /// Adds a virtio console serial port.
    pub fn serial_port(mut self, port: SerialPort) -> Self {
        self.serial_ports.push(port);
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

        let disks = self
            .disks
            .into_iter()
            .map(|disk| {
                check_file("disk image", &disk.path, !disk.read_only)?;
                Ok(ValidDisk {
                    path: CPath::new("disk image path", &disk.path)?,
                    read_only: disk.read_only,
                    caching: disk.caching,
                    sync: disk.sync,
                })
            })
            .collect::<Result<Vec<_>>>()?;

        let nat_networks = self
            .nat_networks
            .into_iter()
            .map(|mac| {
                mac.map(|mac| {
                    let parsed: MacAddress = mac.parse()?;
                    c_string("MAC address", parsed.to_string().as_bytes())
                })
                .transpose()
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

        Ok(VmConfig {
            cpu_count: self.cpu_count,
            memory_size: self.memory_size,
            boot_loader,
            platform,
            disks,
            nat_networks,
            serial_ports,
            saved_state,
            timeouts: self.timeouts,
            on_graceful_timeout: self.on_graceful_timeout,
            #[cfg(applevz_simulator)]
            simulated_guest: self.simulated_guest,
        })
    }
}

/// Where a saved state's machine identity is kept when the caller chose none.
pub(crate) fn machine_identifier_next_to(saved_state: &Path) -> PathBuf {
    let mut name = saved_state.file_name().unwrap_or_default().to_owned();
    name.push(".machine-identifier");
    saved_state.with_file_name(name)
}

fn validate_identifier(identifier: MachineIdentifier) -> Result<ValidIdentifier> {
    let max = sys::AVZ_MACHINE_IDENTIFIER_MAX as usize;
    match identifier {
        MachineIdentifier::Fresh => Ok(ValidIdentifier::Fresh),
        MachineIdentifier::Bytes(bytes) if bytes.is_empty() || bytes.len() > max => {
            Err(Error::InvalidMachineIdentifier {
                path: PathBuf::new(),
                reason: format!("{} bytes is not an identifier (1..={max})", bytes.len()),
            })
        }
        MachineIdentifier::Bytes(bytes) => Ok(ValidIdentifier::Bytes(bytes)),
        MachineIdentifier::Persisted(path) if path.exists() => {
            check_file("machine identifier", &path, false)?;
            let length = File::open(&path)
                .and_then(|f| f.metadata())
                .map(|m| m.len())
                .unwrap_or(0);
            if length == 0 || length > max as u64 {
                return Err(Error::InvalidMachineIdentifier {
                    path,
                    reason: format!("{length} bytes is not an identifier (1..={max})"),
                });
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
