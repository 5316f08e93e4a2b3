//! virtio-vsock at run time: connections from the host to guest ports, and listeners
//! for connections the guest opens.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::ffi::native_vm::{NativeSlot, NativeVm};
use crate::framework_error::FrameworkError;
use crate::state::Operation;
use crate::util::lock;

/// A connected vsock stream. It owns its descriptor and closes it exactly once, when
/// dropped; it can be moved to and used from any thread.
#[derive(Debug)]
pub struct VsockStream {
    // Every vsock descriptor the framework hands out is a connected stream socket; the
    // std type gives the usual reads, writes, timeouts and shutdown on it.
    socket: UnixStream,
    guest_port: u32,
}

impl VsockStream {
    pub(crate) fn new(fd: OwnedFd, guest_port: u32) -> Self {
        Self {
            socket: UnixStream::from(fd),
            guest_port,
        }
    }

    /// The guest's port of this connection.
    #[must_use]
    pub fn guest_port(&self) -> u32 {
        self.guest_port
    }

    /// Sets a read timeout (`None`: block).
    ///
    /// # Errors
    /// As [`UnixStream::set_read_timeout`] (a zero timeout is refused).
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.socket.set_read_timeout(timeout)
    }

    /// Sets a write timeout (`None`: block).
    ///
    /// # Errors
    /// As [`UnixStream::set_write_timeout`] (a zero timeout is refused).
    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.socket.set_write_timeout(timeout)
    }

    /// Shuts down reading, writing or both.
    ///
    /// # Errors
    /// As [`UnixStream::shutdown`].
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.socket.shutdown(how)
    }

    /// A second handle on the same connection (a duplicated descriptor).
    ///
    /// # Errors
    /// When the descriptor cannot be duplicated.
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self {
            socket: self.socket.try_clone()?,
            guest_port: self.guest_port,
        })
    }
}

impl Read for VsockStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.socket.read(buf)
    }
}

impl Write for VsockStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.socket.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.socket.flush()
    }
}

/// Reads and writes through a shared reference, as `&UnixStream` does, so one thread
/// can read while another writes.
impl Read for &VsockStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.socket).read(buf)
    }
}

impl Write for &VsockStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&self.socket).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        (&self.socket).flush()
    }
}

impl AsFd for VsockStream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

impl AsRawFd for VsockStream {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

impl From<VsockStream> for OwnedFd {
    fn from(stream: VsockStream) -> Self {
        stream.socket.into()
    }
}

/// Accepts the connections the guest opens to one host port. Dropping it (or
/// [`VsockListener::remove`]) stops listening. While it exists it keeps the native VM
/// object alive, so drop it before expecting the VM's resources back.
pub struct VsockListener {
    port: u32,
    listeners: Arc<VsockListeners>,
    connections: Mutex<Receiver<VsockStream>>,
    removed: bool,
}

/// The host's vsock listeners of one VM, by port. They outlive the native VM object:
/// when the VM restores into a fresh one, each is installed there again.
pub(crate) struct VsockListeners {
    vm: NativeSlot,
    accepts: Mutex<HashMap<u32, SharedAccept>>,
}

/// One listener's accept callback, shared by every native VM object it is installed
/// on.
pub(crate) type SharedAccept = Arc<dyn Fn(OwnedFd, u32, u32) + Send + Sync>;

impl VsockListeners {
    pub(crate) fn new(vm: NativeSlot) -> Self {
        Self {
            vm,
            accepts: Mutex::new(HashMap::new()),
        }
    }

    /// Installs `accept` on `port` of the current native VM. A port that has a
    /// listener already is refused (the framework would silently replace it).
    pub(crate) fn listen(self: &Arc<Self>, port: u32, accept: SharedAccept) -> Result<()> {
        let mut accepts = lock(&self.accepts);
        if accepts.contains_key(&port) {
            return Err(Error::VsockPortInUse { port });
        }
        install(&self.vm.get(), port, &accept)
            .map_err(Error::during(Operation::VsockListen(port)))?;
        accepts.insert(port, accept);
        Ok(())
    }

    /// Makes `fresh`, a native VM object that has not run, the current one, with every
    /// listener installed on it; returns the one it replaces. The listeners stay
    /// locked throughout, so a listener added meanwhile lands on one object or the
    /// other, never on the old one alone.
    pub(crate) fn move_to(&self, fresh: NativeVm) -> NativeVm {
        let accepts = lock(&self.accepts);
        for (port, accept) in accepts.iter() {
            if let Err(error) = install(&fresh, *port, accept) {
                log::error!("could not listen on vsock port {port} again: {error}");
            }
        }
        self.vm.replace(fresh)
    }

    fn remove(&self, port: u32) -> Result<()> {
        let mut accepts = lock(&self.accepts);
        let accept = accepts.remove(&port);
        let result = self
            .vm
            .get()
            .vsock_remove_listener(port)
            .map_err(Error::during(Operation::VsockListen(port)));
        drop(accepts);
        // The last reference to the callback (and so its sender) goes with the
        // native listener; this one goes now.
        drop(accept);
        result
    }
}

fn install(
    vm: &NativeVm,
    port: u32,
    accept: &SharedAccept,
) -> std::result::Result<(), FrameworkError> {
    let accept = Arc::clone(accept);
    vm.vsock_listen(port, move |fd, guest_port, host_port| {
        accept(fd, guest_port, host_port);
    })
}

impl VsockListener {
    pub(crate) fn new(
        port: u32,
        listeners: Arc<VsockListeners>,
        connections: Receiver<VsockStream>,
    ) -> Self {
        Self {
            port,
            listeners,
            connections: Mutex::new(connections),
            removed: false,
        }
    }

    /// The host port.
    pub fn port(&self) -> u32 {
        self.port
    }

    /// Waits for the next connection.
    ///
    /// # Errors
    /// [`Error::VsockListenerClosed`] once the listener is removed or its VM destroyed.
    pub fn accept(&self) -> Result<VsockStream> {
        lock(&self.connections)
            .recv()
            .map_err(|_| Error::VsockListenerClosed { port: self.port })
    }

    /// Waits up to `timeout` for the next connection; `Ok(None)` when none came.
    ///
    /// # Errors
    /// As [`VsockListener::accept`].
    pub fn accept_timeout(&self, timeout: Duration) -> Result<Option<VsockStream>> {
        match lock(&self.connections).recv_timeout(timeout) {
            Ok(stream) => Ok(Some(stream)),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => {
                Err(Error::VsockListenerClosed { port: self.port })
            }
        }
    }

    /// Stops listening; connections not yet accepted are closed.
    ///
    /// # Errors
    /// [`Error::Framework`] when the framework refuses to remove the listener.
    pub fn remove(mut self) -> Result<()> {
        self.removed = true;
        self.listeners.remove(self.port)
    }
}

impl Drop for VsockListener {
    fn drop(&mut self) {
        if !self.removed {
            if let Err(error) = self.listeners.remove(self.port) {
                log::warn!(
                    "could not stop listening on vsock port {}: {}",
                    self.port,
                    error.full_message()
                );
            }
        }
    }
}

impl std::fmt::Debug for VsockListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VsockListener")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}
