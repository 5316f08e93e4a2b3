//! Collecting a configuration: [`VmConfigBuilder`] and the values it takes. Nothing is
//! checked here; `validate.rs` checks everything when the builder builds.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::devices::{ConsolePort, DirectoryShare, Disk, Network, SerialPort};
use crate::error::{Error, Result};
use crate::ffi::host;
#[cfg(applevz_simulator)]
use crate::sim::SimulatedGuest;
use crate::state::Operation;

pub(super) const MIB: u64 = 1024 * 1024;

/// The Linux kernel boot loader.
#[derive(Debug, Clone)]
pub struct LinuxBootLoader {
    pub(super) kernel: PathBuf,
    pub(super) initrd: Option<PathBuf>,
    pub(super) command_line: String,
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
    #[must_use]
    pub fn initrd(mut self, initrd: impl Into<PathBuf>) -> Self {
        self.initrd = Some(initrd.into());
        self
    }

    /// Sets the kernel command line (for example `console=hvc0`).
    #[must_use]
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
    ///
    /// # Errors
    /// [`Error::Framework`] when the framework cannot make one (before macOS 13).
    pub fn generate() -> Result<Vec<u8>> {
        host::new_machine_identifier().map_err(Error::during(Operation::Create))
    }
}

/// What `shutdown(Powerdown)` does when the guest has not stopped within the graceful
/// timeout. Definition files spell it `fail` or `force-stop`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
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

/// How the VM boots: one boot loader or the other.
#[derive(Debug, Clone)]
pub(crate) enum BootLoader {
    Linux(LinuxBootLoader),
    Efi {
        variable_store: PathBuf,
        mode: EfiVariableStore,
    },
}

/// Collects a configuration; [`VmConfigBuilder::build`] validates it.
#[derive(Debug, Clone)]
pub struct VmConfigBuilder {
    pub(super) cpu_count: u32,
    pub(super) memory_size: u64,
    pub(super) boot_loader: Option<BootLoader>,
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
    pub(super) saved_state_path: Option<PathBuf>,
    pub(super) timeouts: Timeouts,
    pub(super) on_graceful_timeout: OnGracefulTimeout,
    #[cfg(applevz_simulator)]
    pub(super) simulated_guest: SimulatedGuest,
}

impl VmConfigBuilder {
    /// 1 CPU and 512 MiB of memory and nothing else (`VmConfig::builder`).
    pub(super) fn new() -> Self {
        Self {
            cpu_count: 1,
            memory_size: 512 * MIB,
            boot_loader: None,
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
            simulated_guest: SimulatedGuest::default(),
        }
    }

    /// Number of virtual CPUs.
    #[must_use]
    pub fn cpu_count(mut self, count: u32) -> Self {
        self.cpu_count = count;
        self
    }

    /// Memory size in bytes (a multiple of 1 MiB).
    #[must_use]
    pub fn memory_size(mut self, bytes: u64) -> Self {
        self.memory_size = bytes;
        self
    }

    /// Memory size in MiB.
    #[must_use]
    pub fn memory_mib(self, mib: u64) -> Self {
        self.memory_size(mib.saturating_mul(MIB))
    }

    /// Boots a Linux kernel directly (replaces an EFI boot loader).
    #[must_use]
    pub fn linux_boot_loader(mut self, boot_loader: LinuxBootLoader) -> Self {
        self.boot_loader = Some(BootLoader::Linux(boot_loader));
        self
    }

    /// Boots through EFI with the variable store at `path` (macOS 13; replaces a
    /// Linux boot loader).
    #[must_use]
    pub fn efi_boot_loader(
        mut self,
        variable_store: impl Into<PathBuf>,
        mode: EfiVariableStore,
    ) -> Self {
        self.boot_loader = Some(BootLoader::Efi {
            variable_store: variable_store.into(),
            mode,
        });
        self
    }

    /// Uses the generic platform with this machine identity (macOS 12; a given
    /// identifier needs macOS 13).
    #[must_use]
    pub fn generic_platform(mut self, identifier: MachineIdentifier) -> Self {
        self.platform = Some(identifier);
        self
    }

    /// Adds a disk.
    #[must_use]
    pub fn disk(mut self, disk: Disk) -> Self {
        self.disks.push(disk);
        self
    }

    /// Adds a network device.
    #[must_use]
    pub fn network(mut self, network: Network) -> Self {
        self.networks.push(network);
        self
    }

    /// Adds a NAT network device with this MAC address, or a random locally
    /// administered one for `None` (shorthand for [`VmConfigBuilder::network`]).
    #[must_use]
    pub fn nat_network(self, mac_address: Option<&str>) -> Self {
        let network = match mac_address {
            Some(mac) => Network::nat().mac_address(mac),
            None => Network::nat(),
        };
        self.network(network)
    }

    /// Adds a virtio console serial port.
    #[must_use]
    pub fn serial_port(mut self, port: SerialPort) -> Self {
        self.serial_ports.push(port);
        self
    }

    /// Adds a virtio console port (macOS 13).
    #[must_use]
    pub fn console_port(mut self, port: ConsolePort) -> Self {
        self.console_ports.push(port);
        self
    }

    /// Shares directories with the guest over virtiofs (macOS 12).
    #[must_use]
    pub fn directory_share(mut self, share: DirectoryShare) -> Self {
        self.shares.push(share);
        self
    }

    /// Shares Rosetta for Linux under `tag` (Apple silicon, macOS 13), so the guest
    /// can run `x86_64` Linux binaries.
    #[must_use]
    pub fn rosetta(mut self, tag: impl Into<String>) -> Self {
        self.rosetta_tag = Some(tag.into());
        self
    }

    /// Adds a virtio entropy device (the guest's `/dev/hwrng`).
    #[must_use]
    pub fn entropy(mut self, enabled: bool) -> Self {
        self.entropy = enabled;
        self
    }

    /// Adds a memory balloon device, so the host can reclaim guest memory at run time
    /// ([`crate::VirtualMachine::set_memory_balloon_target`]).
    #[must_use]
    pub fn memory_balloon(mut self, enabled: bool) -> Self {
        self.memory_balloon = enabled;
        self
    }

    /// Adds a virtio-vsock device ([`crate::VirtualMachine::vsock_connect`],
    /// [`crate::VirtualMachine::vsock_listen`]).
    #[must_use]
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
    #[must_use]
    pub fn saved_state_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.saved_state_path = Some(path.into());
        self
    }

    /// Per-operation timeouts.
    #[must_use]
    pub fn timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// What `shutdown(Powerdown)` does when the guest ignores the request.
    #[must_use]
    pub fn on_graceful_timeout(mut self, action: OnGracefulTimeout) -> Self {
        self.on_graceful_timeout = action;
        self
    }

    /// Scripts the simulated guest (simulator targets only).
    #[cfg(applevz_simulator)]
    #[must_use]
    pub fn simulated_guest(mut self, guest: SimulatedGuest) -> Self {
        self.simulated_guest = guest;
        self
    }
}
