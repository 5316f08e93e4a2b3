//! Unix socket paths of any length.
//!
//! `bind` and `connect` take the socket's path in `sockaddr_un.sun_path`: 108 bytes on
//! Linux, 104 on macOS, the final NUL included. A VM directory can be deeper than
//! that, and every directory `applevz init` accepts must work, so a longer path is
//! reached through a short alias of its directory, without changing the process's
//! working directory (which other threads share):
//!
//! - on Linux, `/proc/self/fd/<descriptor of the directory>/control.sock`;
//! - elsewhere, a symbolic link to the directory in a new private directory (mode
//!   0700, from `mkdtemp`) under `/tmp`, removed again right after.
//!
//! Either way the socket itself lives in the VM directory, under its real name.

use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The longest path `sun_path` holds (its size, less the NUL).
fn longest() -> usize {
    // SAFETY: sockaddr_un is plain data; a zeroed one is valid.
    let address: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    address.sun_path.len() - 1
}

/// Runs `f` with a path to the socket `path` short enough for `bind` and `connect`:
/// `path` itself when it fits, otherwise an alias of its directory (see the module
/// documentation), valid for the duration of `f`.
pub(crate) fn with_short_path<T>(
    path: &Path,
    f: impl FnOnce(&Path) -> std::io::Result<T>,
) -> std::io::Result<T> {
    if path.as_os_str().len() <= longest() {
        return f(path);
    }
    let (Some(directory), Some(name)) = (path.parent(), path.file_name()) else {
        return f(path);
    };
    #[cfg(target_os = "linux")]
    let alias = descriptor_alias(directory)?;
    #[cfg(not(target_os = "linux"))]
    let alias = link_alias(directory)?;
    let short = alias.path.join(name);
    log::debug!(
        "{} is too long for a socket address ({} bytes at most): using {}",
        path.display(),
        longest(),
        short.display()
    );
    f(&short)
}

/// A short path standing for a directory, while it lives.
struct Alias {
    path: PathBuf,
    /// Held for its drop only (closes the descriptor or removes the link), outside tests.
    #[cfg_attr(not(test), expect(dead_code, reason = "held for its drop"))]
    keep: Keep,
}

/// What keeps an alias valid.
enum Keep {
    /// The open directory that `/proc/self/fd/N` names.
    #[cfg(target_os = "linux")]
    Descriptor { _directory: std::fs::File },
    /// A symbolic link in a private directory, both removed on drop.
    Link { link: PathBuf, private: PathBuf },
}

impl Drop for Keep {
    fn drop(&mut self) {
        match self {
            #[cfg(target_os = "linux")]
            Self::Descriptor { .. } => {}
            Self::Link { link, private } => {
                let _ = std::fs::remove_file(link);
                let _ = std::fs::remove_dir(private);
            }
        }
    }
}

/// Linux: `/proc/self/fd/N`, N an open descriptor of `directory`.
#[cfg(target_os = "linux")]
fn descriptor_alias(directory: &Path) -> std::io::Result<Alias> {
    use std::os::fd::AsRawFd;
    let directory = std::fs::File::open(directory)?;
    Ok(Alias {
        path: PathBuf::from(format!("/proc/self/fd/{}", directory.as_raw_fd())),
        keep: Keep::Descriptor {
            _directory: directory,
        },
    })
}

/// A symbolic link to `directory` in a new private directory under `/tmp` (mode
/// 0700, made by `mkdtemp`, so nobody else can swap the link). Used where there is
/// no `/proc/self/fd`; on Linux only by the tests.
#[cfg_attr(all(target_os = "linux", not(test)), allow(dead_code))]
fn link_alias(directory: &Path) -> std::io::Result<Alias> {
    let target = std::path::absolute(directory)?;
    let mut template = CString::from(c"/tmp/applevz-XXXXXX").into_bytes_with_nul();
    // SAFETY: a writable NUL-terminated template, as mkdtemp requires; it creates
    // the directory with mode 0700 and writes its name into the template.
    let made = unsafe { libc::mkdtemp(template.as_mut_ptr().cast()) };
    if made.is_null() {
        return Err(std::io::Error::last_os_error());
    }
    template.pop(); // the NUL
    let private = PathBuf::from(OsStr::from_bytes(&template));
    let link = private.join("d");
    if let Err(error) = std::os::unix::fs::symlink(&target, &link) {
        let _ = std::fs::remove_dir(&private);
        return Err(error);
    }
    Ok(Alias {
        path: link.clone(),
        keep: Keep::Link { link, private },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::{UnixListener, UnixStream};

    /// A directory deeper than any socket address, removed on drop.
    struct Deep(PathBuf);

    impl Deep {
        fn new(name: &str) -> Self {
            let top =
                std::env::temp_dir().join(format!("applevz-socket-{name}-{}", std::process::id()));
            let deep = top
                .join("d".repeat(60))
                .join("e".repeat(60))
                .join("f".repeat(60));
            std::fs::create_dir_all(&deep).unwrap();
            assert!(deep.as_os_str().len() > longest());
            Self(deep)
        }
    }

    impl Drop for Deep {
        fn drop(&mut self) {
            let top = self.0.ancestors().nth(3).unwrap();
            let _ = std::fs::remove_dir_all(top);
        }
    }

    fn round_trip(
        socket: &Path,
        bind: impl Fn(&Path) -> std::io::Result<UnixListener>,
        connect: impl Fn(&Path) -> std::io::Result<UnixStream>,
    ) {
        let listener = bind(socket).unwrap();
        assert!(
            socket.exists(),
            "the socket is in the directory, under its name"
        );
        let mut client = connect(socket).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        client.write_all(b"ping").unwrap();
        drop(client);
        let mut received = String::new();
        server.read_to_string(&mut received).unwrap();
        assert_eq!(received, "ping");
    }

    #[test]
    fn a_socket_deeper_than_sun_path_binds_and_connects() {
        let deep = Deep::new("alias");
        let socket = deep.0.join("control.sock");
        assert!(
            UnixListener::bind(&socket).is_err(),
            "too long for a plain bind"
        );
        round_trip(
            &socket,
            |path| with_short_path(path, |p| UnixListener::bind(p)),
            |path| with_short_path(path, |p| UnixStream::connect(p)),
        );
    }

    #[test]
    fn the_symbolic_link_alias_works_and_is_removed() {
        let deep = Deep::new("link");
        let socket = deep.0.join("control.sock");
        let through_link = |path: &Path| -> std::io::Result<(Alias, PathBuf)> {
            let alias = link_alias(path.parent().unwrap())?;
            let short = alias.path.join(path.file_name().unwrap());
            assert!(short.as_os_str().len() <= longest());
            Ok((alias, short))
        };
        let private = std::cell::RefCell::new(Vec::new());
        round_trip(
            &socket,
            |path| {
                let (alias, short) = through_link(path)?;
                // A match, not `if let`: on macOS `Link` is the only variant.
                match &alias.keep {
                    Keep::Link { private: dir, .. } => private.borrow_mut().push(dir.clone()),
                    #[cfg(target_os = "linux")]
                    Keep::Descriptor { .. } => panic!("link_alias made a descriptor alias"),
                }
                UnixListener::bind(short)
            },
            |path| {
                let (_alias, short) = through_link(path)?;
                UnixStream::connect(short)
            },
        );
        for dir in private.into_inner() {
            assert!(!dir.exists(), "{} is removed", dir.display());
        }
    }
}
