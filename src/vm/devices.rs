//! Runtime devices of a [`VirtualMachine`]: the memory balloon and virtio-vsock.

use std::sync::{Arc, mpsc};

use super::VirtualMachine;
use crate::config::Limits;
use crate::error::{Error, Remedy, Result};
use crate::state::Operation;
use crate::vm::vsock::{SharedAccept, VsockListener, VsockStream};

impl VirtualMachine {
    /// The memory balloon's target: how much memory the guest is asked to keep, in
    /// bytes.
    ///
    /// # Errors
    /// [`Error::DeviceNotConfigured`] without a memory balloon; [`Error::Framework`] when the
    /// framework cannot read it.
    pub fn memory_balloon_target(&self) -> Result<u64> {
        require(
            self.has_memory_balloon,
            "memory balloon",
            "VmConfigBuilder::memory_balloon",
        )?;
        self.native
            .get()
            .balloon_target()
            .map_err(Error::during(Operation::MemoryBalloon))
    }

    /// Asks the guest to shrink to (or grow back to) `bytes` of memory, between the
    /// host's minimum memory size and the configured memory. The framework rounds it to
    /// whole MiB.
    ///
    /// # Errors
    /// [`Error::DeviceNotConfigured`] without a memory balloon; [`Error::BalloonTarget`] for a
    /// size outside the allowed range; [`Error::Framework`] when the framework refuses it.
    pub fn set_memory_balloon_target(&self, bytes: u64) -> Result<()> {
        require(
            self.has_memory_balloon,
            "memory balloon",
            "VmConfigBuilder::memory_balloon",
        )?;
        let min = Limits::host().min_memory_size.min(self.memory_size);
        if !(min..=self.memory_size).contains(&bytes) {
            return Err(Error::BalloonTarget {
                requested: bytes,
                min,
                max: self.memory_size,
            });
        }
        self.native
            .get()
            .set_balloon_target(bytes)
            .map_err(Error::during(Operation::MemoryBalloon))
    }

    /// Connects to a port the guest listens on (a running VM with a vsock device).
    ///
    /// # Errors
    /// [`Error::DeviceNotConfigured`] without a vsock device; [`Error::Framework`] when the
    /// connection is refused (nothing listens, or the VM does not run); [`Error::Timeout`]
    /// when the guest does not answer within the `vsock_connect` timeout.
    pub fn vsock_connect(&self, port: u32) -> Result<VsockStream> {
        require(self.has_vsock, "vsock device", "VmConfigBuilder::vsock")?;
        let operation = Operation::VsockConnect(port);
        let timeout = self.timeouts().vsock_connect;
        match self.native.get().vsock_connect(port, timeout) {
            Some(Ok(fd)) => Ok(VsockStream::new(fd, port)),
            Some(Err(source)) => Err(Error::during(operation)(source)),
            None => Err(self.timeout(operation, timeout, Remedy::GuestDidNotAnswer)),
        }
    }

    /// Listens on host `port` for connections the guest opens (to `VMADDR_CID_HOST`).
    /// The listener lasts until it is dropped or removed, across stops, suspends and
    /// restores.
    ///
    /// # Errors
    /// [`Error::DeviceNotConfigured`] without a vsock device; [`Error::VsockPortInUse`] when
    /// this VM listens on `port` already; [`Error::Framework`] when the framework refuses.
    pub fn vsock_listen(&self, port: u32) -> Result<VsockListener> {
        require(self.has_vsock, "vsock device", "VmConfigBuilder::vsock")?;
        let (sender, receiver) = mpsc::channel();
        let accept: SharedAccept = Arc::new(move |fd, guest_port, _host_port| {
            // A receiver that is gone closes the connection (the stream drops here).
            let _ = sender.send(VsockStream::new(fd, guest_port));
        });
        self.vsock.listen(port, accept)?;
        Ok(VsockListener::new(port, Arc::clone(&self.vsock), receiver))
    }

    /// The simulator's runtime controls for this VM (simulator targets only).
    #[cfg(applevz_simulator)]
    pub fn simulator(&self) -> crate::sim::SimulatorControl<'_> {
        crate::sim::SimulatorControl::new(self.native.get())
    }
}

/// Refuses a runtime control for a device the configuration does not have.
fn require(present: bool, device: &'static str, builder: &'static str) -> Result<()> {
    if present {
        Ok(())
    } else {
        Err(Error::DeviceNotConfigured { device, builder })
    }
}
