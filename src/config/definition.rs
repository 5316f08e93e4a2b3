//! VM definition files: a configuration as a TOML file people edit by hand, shared by
//! the command-line tool and any other program.
//!
//! ```toml
//! cpus = 2
//! memory = "2GiB"
//! saved_state = "vm.state"
//!
//! [boot]
//! kernel = "vmlinuz"
//! initrd = "initrd.img"
//! command_line = "console=hvc0 root=/dev/vda"
//!
//! [[disk]]
//! path = "root.img"
//!
//! [[network]]
//! mac = "stable"
//! ```
//!
//! Relative paths are relative to the file's directory. Unknown keys and invalid values
//! are rejected with the file, the key and the reason ([`crate::Error::Definition`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::builder::{
    EfiVariableStore, LinuxBootLoader, MachineIdentifier, OnGracefulTimeout, Timeouts,
    VmConfigBuilder,
};
use super::devices::{
    CachingMode, DirectoryShare, Disk, MacChoice, Network, SerialPort, StorageInterface, SyncMode,
};
use super::validate::VmConfig;
use crate::error::{Error, Result};

const MIB: u64 = 1024 * 1024;

/// A VM definition as written in a file. Build a configuration from it with
/// [`VmDefinition::to_builder`] or [`VmDefinition::load_config`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmDefinition {
    /// Virtual CPUs.
    #[serde(default = "one")]
    pub cpus: u32,
    /// Memory, with a unit: `"512MiB"`, `"2GiB"`.
    pub memory: String,
    /// How the VM boots.
    pub boot: BootDefinition,
    /// A file holding the machine identity (created on first use).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_identifier: Option<PathBuf>,
    /// Where `suspend()` saves the VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saved_state: Option<PathBuf>,
    /// Disks, in order.
    #[serde(default, rename = "disk", skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<DiskDefinition>,
    /// NAT network devices, in order.
    #[serde(default, rename = "network", skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<NetworkDefinition>,
    /// Shared directories.
    #[serde(default, rename = "share", skip_serializing_if = "Vec::is_empty")]
    pub shares: Vec<ShareDefinition>,
    /// Share Rosetta for Linux under this tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rosetta: Option<String>,
    /// A virtio entropy device.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub entropy: bool,
    /// A memory balloon device.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub memory_balloon: bool,
    /// A virtio-vsock device.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub vsock: bool,
    /// The serial console's log file (a program may attach a terminal instead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_log: Option<PathBuf>,
    /// Timeouts in seconds; unset ones keep their defaults.
    #[serde(default, skip_serializing_if = "TimeoutsDefinition::is_empty")]
    pub timeouts: TimeoutsDefinition,
    /// What a graceful shutdown does when the guest ignores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_graceful_timeout: Option<OnGracefulTimeout>,
}

fn one() -> u32 {
    1
}

/// `[boot]`: a Linux kernel, or EFI.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootDefinition {
    /// The Linux kernel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<PathBuf>,
    /// Its initial RAM disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<PathBuf>,
    /// Its command line.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub command_line: String,
    /// Boot through EFI with this variable store (created on first use).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub efi_variable_store: Option<PathBuf>,
}

/// `[[disk]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskDefinition {
    /// The raw disk image or ISO.
    pub path: PathBuf,
    /// Attach read-only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
    /// `virtio` (default) or `nvme`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<StorageInterface>,
    /// `cached` (default), `uncached` or `automatic`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caching: Option<CachingMode>,
    /// `fsync` (default), `full` or `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync: Option<SyncMode>,
    /// Block device identifier (virtio only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identifier: Option<String>,
}

/// `[[network]]`: a NAT device.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkDefinition {
    /// `"random"` (default), `"stable"`, or an address `"52:54:00:12:34:56"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

/// `[[share]]`: one directory (`path`) or several (`[share.directories]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShareDefinition {
    /// The tag the guest mounts.
    pub tag: String,
    /// The one shared directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Read-only (for `path`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
    /// Several named directories.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub directories: BTreeMap<String, NamedDirectory>,
}

/// A directory of a multiple-directory share.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedDirectory {
    /// The directory.
    pub path: PathBuf,
    /// Read-only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
}

/// `[timeouts]`, in seconds.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct TimeoutsDefinition {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub save: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graceful_shutdown: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_connect: Option<f64>,
}

impl TimeoutsDefinition {
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Parses `"512MiB"`, `"2GiB"`, `"1.5GiB"` (also with a space) into bytes. A fraction
/// must come to a whole number of bytes.
///
/// # Errors
/// Why `value` is not a size: not a number, a unit other than MiB or GiB, a fraction
/// that is not a whole number of bytes, or too large.
pub fn parse_memory(value: &str) -> std::result::Result<u64, String> {
    let value = value.trim();
    let split = value
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let malformed =
        || format!("{value:?} needs a number and a unit (MiB or GiB), like 512MiB or 1.5GiB");
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() || (number.contains('.') && fraction.is_empty()) || fraction.contains('.') {
        return Err(malformed());
    }
    let scale = match unit.trim() {
        "MiB" => MIB,
        "GiB" => 1024 * MIB,
        other => return Err(format!("unit {other:?} is not MiB or GiB")),
    };
    let too_large = || format!("{value:?} is too large");
    let whole: u64 = whole.parse().map_err(|_| too_large())?;
    // The fraction in bytes, exactly: digits * scale / 10^(number of digits).
    let fraction_bytes = if fraction.is_empty() {
        0
    } else {
        let digits: u128 = fraction.parse().map_err(|_| malformed())?;
        let denominator = u32::try_from(fraction.len())
            .ok()
            .and_then(|places| 10u128.checked_pow(places))
            .ok_or_else(malformed)?;
        let scaled = digits
            .checked_mul(u128::from(scale))
            .ok_or_else(malformed)?;
        if scaled % denominator != 0 {
            return Err(format!("{value:?} is not a whole number of bytes"));
        }
        u64::try_from(scaled / denominator).map_err(|_| too_large())?
    };
    whole
        .checked_mul(scale)
        .and_then(|bytes| bytes.checked_add(fraction_bytes))
        .ok_or_else(too_large)
}

/// Formats bytes as the definition file writes them.
#[must_use]
pub fn format_memory(bytes: u64) -> String {
    if bytes % (1024 * MIB) == 0 {
        format!("{}GiB", bytes / (1024 * MIB))
    } else {
        format!("{}MiB", bytes / MIB)
    }
}

impl VmDefinition {
    /// A minimal definition booting `kernel`.
    pub fn linux(kernel: impl Into<PathBuf>, memory_bytes: u64) -> Self {
        Self {
            cpus: 1,
            memory: format_memory(memory_bytes),
            boot: BootDefinition {
                kernel: Some(kernel.into()),
                ..BootDefinition::default()
            },
            machine_identifier: None,
            saved_state: None,
            disks: Vec::new(),
            networks: Vec::new(),
            shares: Vec::new(),
            rosetta: None,
            entropy: false,
            memory_balloon: false,
            vsock: false,
            serial_log: None,
            timeouts: TimeoutsDefinition::default(),
            on_graceful_timeout: None,
        }
    }

    /// Parses a definition; `file` names it in errors, with the line and column
    /// where the parser found the problem.
    ///
    /// # Errors
    /// [`Error::Definition`] naming `file`, the key and the reason: bad TOML, an unknown key, or a
    /// value of the wrong type or spelling.
    pub fn parse(text: &str, file: &Path) -> Result<Self> {
        let located = |key: &str, error: &toml::de::Error| Error::Definition {
            file: file.to_owned(),
            key: key.to_owned(),
            reason: error.message().trim_end().to_owned(),
            location: error.span().map(|span| line_and_column(text, span.start)),
        };
        let deserializer = toml::Deserializer::parse(text).map_err(|error| located("", &error))?;
        serde_path_to_error::deserialize(deserializer).map_err(|error| {
            let key = error.path().to_string();
            let key = if key == "." { String::new() } else { key };
            located(&key, error.inner())
        })
    }

    /// Reads and parses a definition file.
    ///
    /// # Errors
    /// [`Error::Io`] when the file cannot be read; otherwise as [`VmDefinition::parse`].
    pub fn load(file: &Path) -> Result<Self> {
        log::debug!("reading the VM definition {}", file.display());
        let text = std::fs::read_to_string(file).map_err(|source| Error::Io {
            action: "read the VM definition",
            path: file.to_owned(),
            source,
        })?;
        Self::parse(&text, file)
    }

    /// The definition as TOML text.
    ///
    /// # Panics
    /// When the definition cannot be written as TOML: a path that is not valid UTF-8.
    /// [`VmDefinition::try_to_toml`] reports that as an error instead.
    #[must_use]
    pub fn to_toml(&self) -> String {
        self.try_to_toml(Path::new("the definition"))
            .unwrap_or_else(|error| panic!("{error}"))
    }

    /// The definition as TOML text for `file` (which names it in the error), or why it
    /// cannot be written: a path that is not valid UTF-8 (TOML files are UTF-8 text).
    ///
    /// # Errors
    /// [`Error::Definition`] when a path is not valid UTF-8.
    pub fn try_to_toml(&self, file: &Path) -> Result<String> {
        toml::to_string_pretty(self)
            .map_err(|error| definition_error(file, "", &format!("cannot be written: {error}")))
    }

    /// A configuration builder, with relative paths resolved against `base` (the
    /// definition file's directory). Values are checked here (with the key named);
    /// files and devices when the builder builds.
    ///
    /// # Errors
    /// [`Error::Definition`] with the key for a value that is wrong on its own: the memory
    /// size, the boot section, a share's layout, a timeout.
    pub fn to_builder(&self, file: &Path) -> Result<VmConfigBuilder> {
        let base = file.parent().unwrap_or(Path::new("."));
        let resolve = |path: &Path| base.join(path);
        let bad = |key: &str, reason: String| definition_error(file, key, &reason);

        let memory = parse_memory(&self.memory).map_err(|reason| bad("memory", reason))?;
        let mut builder = VmConfig::builder().cpu_count(self.cpus).memory_size(memory);

        builder = match (&self.boot.kernel, &self.boot.efi_variable_store) {
            (Some(kernel), None) => {
                let mut loader = LinuxBootLoader::new(resolve(kernel))
                    .command_line(self.boot.command_line.clone());
                if let Some(initrd) = &self.boot.initrd {
                    loader = loader.initrd(resolve(initrd));
                }
                builder.linux_boot_loader(loader)
            }
            (None, Some(store)) => {
                if self.boot.initrd.is_some() || !self.boot.command_line.is_empty() {
                    return Err(bad(
                        "boot",
                        "initrd and command_line go with kernel, not with EFI".into(),
                    ));
                }
                builder.efi_boot_loader(resolve(store), EfiVariableStore::OpenOrCreate)
            }
            (Some(_), Some(_)) => {
                return Err(bad(
                    "boot",
                    "set kernel or efi_variable_store, not both".into(),
                ));
            }
            (None, None) => {
                return Err(bad(
                    "boot",
                    "set kernel (Linux) or efi_variable_store (EFI)".into(),
                ));
            }
        };
        if let Some(identifier) = &self.machine_identifier {
            builder = builder.generic_platform(MachineIdentifier::Persisted(resolve(identifier)));
        }
        if let Some(saved_state) = &self.saved_state {
            builder = builder.saved_state_path(resolve(saved_state));
        }
        for disk in &self.disks {
            let mut device = Disk::new(resolve(&disk.path)).read_only(disk.read_only);
            if let Some(interface) = disk.interface {
                device = device.interface(interface);
            }
            if let Some(caching) = disk.caching {
                device = device.caching(caching);
            }
            if let Some(sync) = disk.sync {
                device = device.sync(sync);
            }
            if let Some(identifier) = &disk.identifier {
                device = device.identifier(identifier.clone());
            }
            builder = builder.disk(device);
        }
        for network in &self.networks {
            let mac = match network.mac.as_deref() {
                None | Some("random") => MacChoice::Random,
                Some("stable") => MacChoice::Stable,
                Some(address) => MacChoice::Fixed(address.to_owned()),
            };
            builder = builder.network(Network::nat().mac(mac));
        }
        for (index, share) in self.shares.iter().enumerate() {
            let device = match (&share.path, share.directories.is_empty()) {
                (Some(path), true) => {
                    DirectoryShare::single(share.tag.clone(), resolve(path), share.read_only)
                }
                (None, false) => {
                    if share.read_only {
                        return Err(bad(
                            &format!("share[{index}].read_only"),
                            "goes on each directory of a multiple-directory share".into(),
                        ));
                    }
                    share.directories.iter().fold(
                        DirectoryShare::multiple(share.tag.clone()),
                        |device, (name, directory)| {
                            device.directory(
                                name.clone(),
                                resolve(&directory.path),
                                directory.read_only,
                            )
                        },
                    )
                }
                (Some(_), false) => {
                    return Err(bad(
                        &format!("share[{index}]"),
                        "set path or directories, not both".into(),
                    ));
                }
                (None, true) => {
                    return Err(bad(
                        &format!("share[{index}]"),
                        "set path (one directory) or directories".into(),
                    ));
                }
            };
            builder = builder.directory_share(device);
        }
        if let Some(tag) = &self.rosetta {
            builder = builder.rosetta(tag.clone());
        }
        builder = builder
            .entropy(self.entropy)
            .memory_balloon(self.memory_balloon)
            .vsock(self.vsock);
        if let Some(log) = &self.serial_log {
            builder = builder.serial_port(SerialPort::File {
                path: resolve(log),
                append: true,
            });
        }
        builder = builder.timeouts(
            self.timeouts
                .apply(Timeouts::default())
                .map_err(|(key, reason)| bad(&key, reason))?,
        );
        if let Some(action) = self.on_graceful_timeout {
            builder = builder.on_graceful_timeout(action);
        }
        Ok(builder)
    }

    /// Loads `file` and builds its configuration. A value the builder rejects (a
    /// missing kernel, a bad MAC address, …) is reported with the file and the key.
    ///
    /// # Errors
    /// As [`VmDefinition::load`], [`VmDefinition::to_builder`] and [`VmDefinition::finish`].
    pub fn load_config(file: &Path) -> Result<VmConfig> {
        let definition = Self::load(file)?;
        definition.finish(file, definition.to_builder(file)?)
    }

    /// Builds `builder` (made by [`VmDefinition::to_builder`], perhaps with more
    /// added by the caller), reporting what it rejects with the file and the key.
    ///
    /// # Errors
    /// [`Error::Definition`] with the key (as well as it can be told) and the builder's reason
    /// for anything [`VmConfigBuilder::build`] rejects.
    pub fn finish(&self, file: &Path, builder: VmConfigBuilder) -> Result<VmConfig> {
        builder.build().map_err(|error| {
            let key = self.key_of(&error);
            definition_error(
                file,
                &key,
                &crate::error::chain_message(
                    error.worded(&crate::error::Vocabulary::DEFINITION_FILE),
                    &error,
                ),
            )
        })
    }

    /// The file's `[timeouts]` applied over `base` (bad values name their key).
    ///
    /// # Errors
    /// [`Error::Definition`] naming the key of a timeout that is not a positive number of
    /// seconds.
    pub fn timeouts_over(&self, file: &Path, base: Timeouts) -> Result<Timeouts> {
        self.timeouts
            .apply(base)
            .map_err(|(key, reason)| definition_error(file, &key, &reason))
    }

    /// The key a builder error refers to, as well as it can be told.
    fn key_of(&self, error: &Error) -> String {
        let position = |found: Option<usize>, list: &str, field: &str| match found {
            Some(index) => format!("{list}[{index}].{field}"),
            None => list.to_owned(),
        };
        let ends_with = |candidate: &Path, path: &Path| path.ends_with(candidate);
        match error {
            Error::CpuCount { .. } => "cpus".into(),
            Error::MemorySize { .. } | Error::MemoryNotMibMultiple { .. } => "memory".into(),
            Error::MissingBootLoader => "boot".into(),
            Error::FileNotFound { role, path } | Error::FileUnusable { role, path, .. } => {
                match *role {
                    "kernel" => "boot.kernel".into(),
                    "initrd" => "boot.initrd".into(),
                    "EFI variable store" => "boot.efi_variable_store".into(),
                    "saved-state file" => "saved_state".into(),
                    "machine identifier" => "machine_identifier".into(),
                    "serial log" => "serial_log".into(),
                    "disk image" => position(
                        self.disks.iter().position(|d| ends_with(&d.path, path)),
                        "disk",
                        "path",
                    ),
                    "shared directory" => position(
                        self.shares.iter().position(|s| {
                            s.path.as_deref().is_some_and(|p| ends_with(p, path))
                                || s.directories.values().any(|d| ends_with(&d.path, path))
                        }),
                        "share",
                        "path",
                    ),
                    _ => String::new(),
                }
            }
            Error::InvalidMacAddress { value, .. } => position(
                self.networks
                    .iter()
                    .position(|n| n.mac.as_deref() == Some(value)),
                "network",
                "mac",
            ),
            Error::StableMacNeedsIdentity => "network".into(),
            Error::DuplicateDisk { index, .. } => format!("disk[{index}].path"),
            Error::DuplicateMacAddress { index, .. } => format!("network[{index}].mac"),
            Error::InvalidBlockDeviceIdentifier { value, .. } => position(
                self.disks
                    .iter()
                    .position(|d| d.identifier.as_deref() == Some(value)),
                "disk",
                "identifier",
            ),
            Error::NvmeNeedsGenericPlatform { path } => position(
                self.disks.iter().position(|d| ends_with(&d.path, path)),
                "disk",
                "interface",
            ),
            Error::InvalidShareTag { tag, .. } if self.rosetta.as_deref() == Some(tag) => {
                "rosetta".into()
            }
            Error::InvalidShareTag { tag, .. } | Error::InvalidShareName { tag, .. } => position(
                self.shares.iter().position(|s| &s.tag == tag),
                "share",
                "tag",
            ),
            Error::RosettaNotSupported | Error::RosettaNotInstalled => "rosetta".into(),
            Error::InvalidMachineIdentifier { .. } => "machine_identifier".into(),
            Error::InteriorNul { .. } => String::new(),
            _ => String::new(),
        }
    }
}

impl TimeoutsDefinition {
    /// Applies the set values to `timeouts`; a bad one gives (key, reason).
    fn apply(&self, mut timeouts: Timeouts) -> std::result::Result<Timeouts, (String, String)> {
        let fields: [(&str, Option<f64>, &mut Duration); 8] = [
            ("start", self.start, &mut timeouts.start),
            ("stop", self.stop, &mut timeouts.stop),
            ("pause", self.pause, &mut timeouts.pause),
            ("resume", self.resume, &mut timeouts.resume),
            ("save", self.save, &mut timeouts.save),
            ("restore", self.restore, &mut timeouts.restore),
            (
                "graceful_shutdown",
                self.graceful_shutdown,
                &mut timeouts.graceful_shutdown,
            ),
            (
                "vsock_connect",
                self.vsock_connect,
                &mut timeouts.vsock_connect,
            ),
        ];
        for (name, value, slot) in fields {
            if let Some(seconds) = value {
                *slot = Duration::try_from_secs_f64(seconds)
                    .ok()
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| {
                        (
                            format!("timeouts.{name}"),
                            format!("{seconds} is not a positive number of seconds"),
                        )
                    })?;
            }
        }
        Ok(timeouts)
    }
}

fn definition_error(file: &Path, key: &str, reason: &str) -> Error {
    Error::Definition {
        file: file.to_owned(),
        key: key.to_owned(),
        reason: reason.to_owned(),
        location: None,
    }
}

/// The line and column (both from 1; the column in characters) of byte `offset`.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    (
        before.matches('\n').count() + 1,
        before[line_start..].chars().count() + 1,
    )
}
