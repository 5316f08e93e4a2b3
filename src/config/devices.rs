//! The devices a configuration can hold, as the caller describes them. They are
//! checked by [`crate::VmConfigBuilder::build`].

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ffi::host;

/// How a disk image is cached by the host (`VZDiskImageCachingMode`, macOS 12).
/// Definition files spell it `automatic`, `uncached` or `cached`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CachingMode {
    /// The framework decides.
    Automatic,
    /// No host caching.
    Uncached,
    /// Host caching; the safe choice for writable Linux disks.
    Cached,
}

/// How guest flushes reach the disk image (`VZDiskImageSynchronizationMode`, macOS 12).
/// Definition files spell it `full`, `fsync` or `none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// Flush to permanent storage.
    Full,
    /// `fsync` only.
    Fsync,
    /// Never flush (scratch disks).
    None,
}

/// The device a disk image is attached through. Definition files spell it `virtio`
/// or `nvme`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageInterface {
    /// virtio block (`/dev/vdX` in the guest; macOS 11).
    #[default]
    #[serde(rename = "virtio")]
    VirtioBlock,
    /// An NVMe controller (`/dev/nvmeXn1`; macOS 14, generic platform only).
    Nvme,
}

/// A disk backed by a raw disk image (or an ISO image).
#[derive(Debug, Clone)]
pub struct Disk {
    pub(crate) path: PathBuf,
    pub(crate) read_only: bool,
    pub(crate) caching: CachingMode,
    pub(crate) sync: SyncMode,
    pub(crate) interface: StorageInterface,
    pub(crate) identifier: Option<String>,
}

impl Disk {
    /// A writable virtio block disk. Caching defaults to [`CachingMode::Cached`] with
    /// [`SyncMode::Fsync`], which avoids the file-system corruption Linux guests have
    /// shown with automatic caching.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            read_only: false,
            caching: CachingMode::Cached,
            sync: SyncMode::Fsync,
            interface: StorageInterface::VirtioBlock,
            identifier: None,
        }
    }

    /// A read-only image such as an ISO or a cloud-init seed disk.
    pub fn iso(path: impl Into<PathBuf>) -> Self {
        Self::new(path).read_only(true)
    }

    /// Attaches the image read-only.
    #[must_use]
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// Overrides the caching mode.
    #[must_use]
    pub fn caching(mut self, caching: CachingMode) -> Self {
        self.caching = caching;
        self
    }

    /// Overrides the synchronization mode.
    #[must_use]
    pub fn sync(mut self, sync: SyncMode) -> Self {
        self.sync = sync;
        self
    }

    /// Attaches the image through `interface`.
    #[must_use]
    pub fn interface(mut self, interface: StorageInterface) -> Self {
        self.interface = interface;
        self
    }

    /// Names a virtio block device to the guest (`/dev/disk/by-id/virtio-<id>`; at
    /// most 20 printable ASCII characters; macOS 12.3).
    #[must_use]
    pub fn identifier(mut self, identifier: impl Into<String>) -> Self {
        self.identifier = Some(identifier.into());
        self
    }
}

/// Checks a block device identifier: 1 to 20 printable ASCII characters (the virtio
/// block serial number).
pub(crate) fn check_block_device_identifier(value: &str) -> Result<()> {
    let invalid = |reason| Error::InvalidBlockDeviceIdentifier {
        value: value.to_owned(),
        reason,
    };
    if value.is_empty() {
        return Err(invalid("is empty"));
    }
    if value.len() > 20 {
        return Err(invalid("is longer than 20 bytes"));
    }
    if !value.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        return Err(invalid("must be printable ASCII"));
    }
    Ok(())
}

/// A MAC address, `xx:xx:xx:xx:xx:xx`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddress([u8; 6]);

impl MacAddress {
    /// The address's six octets.
    #[must_use]
    pub fn octets(self) -> [u8; 6] {
        self.0
    }

    /// A locally administered unicast address derived from `seed` (for example a
    /// machine identity) and a device `index`: the same inputs always give the same
    /// address.
    #[must_use]
    pub fn stable(seed: &[u8], index: u32) -> Self {
        // FNV-1a 64: stable across runs and platforms, and spreads similar seeds.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in seed.iter().chain(&index.to_le_bytes()) {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        let bytes = hash.to_le_bytes();
        let mut octets = [bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5]];
        octets[0] = (octets[0] & 0xfc) | 0x02; // locally administered, unicast
        Self(octets)
    }

    /// True for a locally administered address.
    #[must_use]
    pub fn is_locally_administered(self) -> bool {
        self.0[0] & 0x02 != 0
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
        for (index, octet) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str(":")?;
            }
            write!(f, "{octet:02x}")?;
        }
        Ok(())
    }
}

/// How a network device gets its MAC address.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum MacChoice {
    /// A random locally administered address, new for every VM instance.
    #[default]
    Random,
    /// This address.
    Fixed(String),
    /// An address derived from the VM's machine identity and the device's position:
    /// the same on every run (needs a persisted identity, see
    /// [`crate::MachineIdentifier`]).
    Stable,
}

#[derive(Debug, Clone)]
pub(crate) enum NetworkKind {
    Nat,
    FileHandle {
        socket: Arc<OwnedFd>,
        mtu: Option<u32>,
    },
}

/// A virtio network device.
#[derive(Debug, Clone)]
pub struct Network {
    pub(crate) kind: NetworkKind,
    pub(crate) mac: MacChoice,
}

impl Network {
    /// NAT through the host (`VZNATNetworkDeviceAttachment`).
    #[must_use]
    pub fn nat() -> Self {
        Self {
            kind: NetworkKind::Nat,
            mac: MacChoice::Random,
        }
    }

    /// Frames exchanged over a connected datagram socket the caller provides
    /// (`VZFileHandleNetworkDeviceAttachment`): the building block for vmnet-style
    /// networking. The VM keeps its own duplicate of the socket.
    #[must_use]
    pub fn file_handle(socket: OwnedFd) -> Self {
        Self {
            kind: NetworkKind::FileHandle {
                socket: Arc::new(socket),
                mtu: None,
            },
            mac: MacChoice::Random,
        }
    }

    /// Chooses the MAC address.
    #[must_use]
    pub fn mac(mut self, mac: MacChoice) -> Self {
        self.mac = mac;
        self
    }

    /// Uses this MAC address.
    #[must_use]
    pub fn mac_address(self, mac: impl Into<String>) -> Self {
        self.mac(MacChoice::Fixed(mac.into()))
    }

    /// The maximum transmission unit of a file-handle attachment (1500..=65535;
    /// macOS 13). Ignored for NAT.
    #[must_use]
    pub fn mtu(mut self, mtu: u32) -> Self {
        if let NetworkKind::FileHandle { mtu: slot, .. } = &mut self.kind {
            *slot = Some(mtu);
        }
        self
    }
}

/// Checks that `socket` is a datagram socket (what the file-handle attachment needs).
pub(crate) fn check_datagram_socket(socket: &OwnedFd) -> Result<()> {
    use std::os::fd::AsRawFd;
    let mut kind: libc::c_int = 0;
    let mut length = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>())
        .expect("the size of an int fits in socklen_t");
    // SAFETY: a valid descriptor (borrowed from the OwnedFd) and out-parameters sized
    // for an int, as SO_TYPE writes.
    let status = unsafe {
        libc::getsockopt(
            socket.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&raw mut kind).cast(),
            &raw mut length,
        )
    };
    if status != 0 {
        return Err(Error::NotADatagramSocket {
            reason: format!("not a socket: {}", std::io::Error::last_os_error()),
        });
    }
    if kind != libc::SOCK_DGRAM {
        return Err(Error::NotADatagramSocket {
            reason: "a stream socket; the attachment exchanges whole frames over SOCK_DGRAM".into(),
        });
    }
    Ok(())
}

/// A directory shared with the guest over virtiofs.
#[derive(Debug, Clone)]
pub struct SharedDirectory {
    pub(crate) name: Option<String>,
    pub(crate) path: PathBuf,
    pub(crate) read_only: bool,
}

/// A virtio file-system device: one directory, or several named directories, under a
/// tag the guest mounts (`mount -t virtiofs <tag> /mnt`; macOS 12).
#[derive(Debug, Clone)]
pub struct DirectoryShare {
    pub(crate) tag: String,
    pub(crate) directories: Vec<SharedDirectory>,
    pub(crate) single: bool,
}

impl DirectoryShare {
    /// Shares `path` as the root of `tag`.
    pub fn single(tag: impl Into<String>, path: impl Into<PathBuf>, read_only: bool) -> Self {
        Self {
            tag: tag.into(),
            directories: vec![SharedDirectory {
                name: None,
                path: path.into(),
                read_only,
            }],
            single: true,
        }
    }

    /// A share of several named directories under `tag`; add them with
    /// [`DirectoryShare::directory`].
    pub fn multiple(tag: impl Into<String>) -> Self {
        Self {
            tag: tag.into(),
            directories: Vec::new(),
            single: false,
        }
    }

    /// Adds `path` as `<mount point>/<name>` (for a [`DirectoryShare::multiple`]).
    #[must_use]
    pub fn directory(
        mut self,
        name: impl Into<String>,
        path: impl Into<PathBuf>,
        read_only: bool,
    ) -> Self {
        self.directories.push(SharedDirectory {
            name: Some(name.into()),
            path: path.into(),
            read_only,
        });
        self
    }
}

/// The longest virtiofs tag, in bytes: the framework wants fewer than 36 (the
/// virtio-fs tag field).
const MAX_TAG_BYTES: usize = 35;

/// Checks a virtiofs tag in Rust, then with the framework.
pub(crate) fn check_share_tag(tag: &str) -> Result<()> {
    let invalid = |reason: String| Error::InvalidShareTag {
        tag: tag.to_owned(),
        reason,
    };
    if tag.is_empty() {
        return Err(invalid("is empty".into()));
    }
    if tag.len() > MAX_TAG_BYTES {
        return Err(invalid(format!(
            "is longer than {MAX_TAG_BYTES} bytes (UTF-8)"
        )));
    }
    let c_tag = std::ffi::CString::new(tag).map_err(|_| invalid("contains a NUL byte".into()))?;
    host::validate_directory_share_tag(&c_tag).map_err(|error| invalid(error.description))
}

/// Checks the name of a directory in a multiple-directory share.
pub(crate) fn check_share_name(tag: &str, name: &str) -> Result<()> {
    let invalid = |reason| Error::InvalidShareName {
        tag: tag.to_owned(),
        name: name.to_owned(),
        reason,
    };
    match name {
        "" => Err(invalid("is empty")),
        "." | ".." => Err(invalid("is not a directory name")),
        _ if name.contains('/') => Err(invalid("contains '/'")),
        _ if name.contains('\0') => Err(invalid("contains a NUL byte")),
        _ => Ok(()),
    }
}

/// A virtio console port (macOS 13): a named channel the guest sees under
/// `/sys/class/virtio-ports`, optionally its console (`hvc0`).
#[derive(Debug, Clone)]
pub struct ConsolePort {
    pub(crate) name: String,
    pub(crate) is_console: bool,
    pub(crate) input: Option<Arc<OwnedFd>>,
    pub(crate) output: Option<Arc<OwnedFd>>,
}

impl ConsolePort {
    /// A port called `name`, not connected yet.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            is_console: false,
            input: None,
            output: None,
        }
    }

    /// Marks the port as the guest's console.
    #[must_use]
    pub fn console(mut self, is_console: bool) -> Self {
        self.is_console = is_console;
        self
    }

    /// Guest input comes from `fd`.
    #[must_use]
    pub fn input(mut self, fd: OwnedFd) -> Self {
        self.input = Some(Arc::new(fd));
        self
    }

    /// Guest output goes to `fd`.
    #[must_use]
    pub fn output(mut self, fd: OwnedFd) -> Self {
        self.output = Some(Arc::new(fd));
        self
    }
}

/// A virtio console serial port.
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

impl SerialPort {
    /// The caller's terminal: guest input from standard input, output to standard
    /// output (duplicates of both; putting the terminal in raw mode is the caller's).
    ///
    /// # Errors
    /// When standard input or output cannot be duplicated.
    pub fn stdio() -> std::io::Result<Self> {
        Ok(Self::Fds {
            read: Some(Arc::new(std::io::stdin().as_fd().try_clone_to_owned()?)),
            write: Some(Arc::new(std::io::stdout().as_fd().try_clone_to_owned()?)),
        })
    }
}
