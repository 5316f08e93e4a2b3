//! VM states, lifecycle operations and state-change events.

use std::fmt;

use crate::framework_error::FrameworkError;

/// The state of a [`crate::VirtualMachine`]: the framework's ten states plus
/// [`VmState::Suspended`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VmState {
    /// Not running; no saved state on disk.
    Stopped,
    /// The guest runs.
    Running,
    /// The guest is frozen in memory.
    Paused,
    /// The VM stopped because of an error; only a forced stop leaves this state.
    Error,
    /// Booting.
    Starting,
    /// Going from running to paused.
    Pausing,
    /// Going from paused to running.
    Resuming,
    /// Going from running or paused to stopped.
    Stopping,
    /// Writing the VM's state to a file.
    Saving,
    /// Reading the VM's state from a file.
    Restoring,
    /// Stopped, with a saved-state file that `start()` restores.
    Suspended,
}

impl VmState {
    /// True for the states that only last while an operation is under way.
    #[must_use]
    pub fn is_transitional(self) -> bool {
        matches!(
            self,
            Self::Starting
                | Self::Pausing
                | Self::Resuming
                | Self::Stopping
                | Self::Saving
                | Self::Restoring
        )
    }

    /// True when the VM holds no running or paused guest (stopped or suspended).
    #[must_use]
    pub fn is_stopped(self) -> bool {
        matches!(self, Self::Stopped | Self::Suspended)
    }
}

impl fmt::Display for VmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Stopped => "stopped",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Error => "in the error state",
            Self::Starting => "starting",
            Self::Pausing => "pausing",
            Self::Resuming => "resuming",
            Self::Stopping => "stopping",
            Self::Saving => "saving",
            Self::Restoring => "restoring",
            Self::Suspended => "suspended",
        })
    }
}

/// How [`crate::VirtualMachine::shutdown`] stops the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ShutdownPolicy {
    /// Ask the guest to power off (ACPI power button) and wait for it, up to the
    /// graceful timeout.
    Powerdown,
    /// Stop at once; a suspended VM keeps its saved state.
    Halt,
    /// Stop at once from any state; a suspended VM's saved state is discarded.
    Poweroff,
}

impl fmt::Display for ShutdownPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Powerdown => "Powerdown",
            Self::Halt => "Halt",
            Self::Poweroff => "Poweroff",
        })
    }
}

/// The lifecycle operation an error or a timeout refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// Building the configuration and creating the VM.
    Create,
    /// `start()`.
    Start,
    /// `shutdown(policy)`.
    Shutdown(ShutdownPolicy),
    /// `pause()`.
    Pause,
    /// `resume()`.
    Resume,
    /// `suspend()`.
    Suspend,
    /// Restoring a saved state (part of `start()` on a suspended VM).
    Restore,
    /// `wait_for_state(state)`.
    WaitForState(VmState),
    /// A vsock connection to this guest port.
    VsockConnect(u32),
    /// Listening for guest vsock connections on this host port.
    VsockListen(u32),
    /// Reading or setting the memory balloon's target.
    MemoryBalloon,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Create => f.write_str("create"),
            Self::Start => f.write_str("start"),
            Self::Shutdown(policy) => write!(f, "shutdown({policy})"),
            Self::Pause => f.write_str("pause"),
            Self::Resume => f.write_str("resume"),
            Self::Suspend => f.write_str("suspend"),
            Self::Restore => f.write_str("restore"),
            Self::WaitForState(state) => write!(f, "wait until {state}"),
            Self::VsockConnect(port) => write!(f, "connect to guest vsock port {port}"),
            Self::VsockListen(port) => write!(f, "listen on vsock port {port}"),
            Self::MemoryBalloon => f.write_str("control the memory balloon"),
        }
    }
}

/// What caused a [`StateEvent`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// The framework's `state` property changed.
    StateChanged,
    /// The guest powered itself off (delegate `guestDidStopVirtualMachine:`).
    GuestStopped,
    /// The VM stopped because of an error (delegate `virtualMachine:didStopWithError:`).
    StoppedWithError(FrameworkError),
    /// A network device's attachment was disconnected (delegate
    /// `virtualMachine:networkDevice:attachmentWasDisconnectedWithError:`), for example
    /// the peer of a file-handle network socket went away. The VM's state does not
    /// change; the description names the device ("network device N: ...", N counting
    /// from 0 in the order the configuration added network devices).
    NetworkDisconnected(FrameworkError),
    /// `suspend()` stored the VM's state: the VM is now [`VmState::Suspended`].
    Suspended,
    /// A saved state was restored and deleted, or discarded by `shutdown(Poweroff)`.
    SavedStateRemoved,
}

/// One state change, as delivered to every subscriber in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateEvent {
    /// The VM's state after the event.
    pub state: VmState,
    /// What happened.
    pub kind: EventKind,
}
