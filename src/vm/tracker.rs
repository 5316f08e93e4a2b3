//! What a [`super::VirtualMachine`] knows about itself, shared with the native
//! observer: the framework's state, the saved state it tracks, the operation holding
//! the VM, forced shutdowns waiting for their turn, and the subscribers.
//!
//! One mutex guards all of it and one condition variable announces every change, so
//! every wait is event-driven and no wake-up can be missed.

use std::path::PathBuf;
use std::sync::mpsc::Sender;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::ffi::callback::NativeEvent;
use crate::state::{EventKind, Operation, StateEvent, VmState};
use crate::util::{deadline_after, lock, wait_until_deadline};

/// The operation holding the VM, and how long a forced shutdown waits for it at most.
#[derive(Debug, Clone, Copy)]
pub(super) struct Busy {
    pub(super) operation: Operation,
    pub(super) bound: Duration,
}

pub(super) struct Tracked {
    /// The framework's state as last reported by the current native VM (never
    /// `Suspended`).
    pub(super) framework_state: VmState,
    /// The file holding the guest this VM restores from: the one it found when it was
    /// created or the one it wrote. Never re-derived from the file system.
    pub(super) saved_state: Option<PathBuf>,
    /// A suspend issued its stop and has not yet put the saved state in place: the
    /// framework's `Stopped` is not the VM's (subscribers never see a bare `Stopped`).
    pub(super) suspending: bool,
    /// Forced shutdowns waiting for the operation in flight; a graceful wait in
    /// progress gives up as soon as one is waiting.
    pub(super) forced_requests: usize,
    pub(super) busy: Option<Busy>,
    /// Which native VM object the events come from: the VM restores into a fresh one,
    /// and a late event of a released object must not count.
    pub(super) generation: u64,
    /// The current native VM object has left `Stopped` at least once.
    pub(super) native_has_run: bool,
    subscribers: Vec<Sender<StateEvent>>,
}

impl Tracked {
    /// The VM's state: the framework's, except that stopped with a saved state is
    /// suspended, and stopped during a suspend is still stopping.
    pub(super) fn vm_state(&self) -> VmState {
        match self.framework_state {
            VmState::Stopped if self.suspending => VmState::Stopping,
            VmState::Stopped if self.saved_state.is_some() => VmState::Suspended,
            state => state,
        }
    }

    fn send(&mut self, kind: EventKind) {
        let event = StateEvent {
            state: self.vm_state(),
            kind,
        };
        log::debug!("VM event: {event:?}");
        self.subscribers
            .retain(|subscriber| subscriber.send(event.clone()).is_ok());
    }
}

pub(super) struct Tracker {
    tracked: Mutex<Tracked>,
    changed: Condvar,
}

impl Tracker {
    pub(super) fn new(framework_state: VmState, saved_state: Option<PathBuf>) -> Self {
        Self {
            tracked: Mutex::new(Tracked {
                framework_state,
                saved_state,
                suspending: false,
                forced_requests: 0,
                busy: None,
                generation: 0,
                native_has_run: framework_state != VmState::Stopped,
                subscribers: Vec::new(),
            }),
            changed: Condvar::new(),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Tracked> {
        lock(&self.tracked)
    }

    pub(super) fn vm_state(&self) -> VmState {
        self.lock().vm_state()
    }

    pub(super) fn framework_state(&self) -> VmState {
        self.lock().framework_state
    }

    pub(super) fn subscribe(&self, subscriber: Sender<StateEvent>) {
        self.lock().subscribers.push(subscriber);
    }

    /// An event from the native VM of `generation`, in the order the native side
    /// reported it (events are handled under the lock, so no two interleave).
    pub(super) fn on_native_event(&self, generation: u64, event: NativeEvent) {
        let mut tracked = self.lock();
        if tracked.generation != generation {
            log::debug!("ignored an event of a released native VM: {:?}", event.kind);
            return;
        }
        tracked.framework_state = event.state;
        if event.state != VmState::Stopped {
            tracked.native_has_run = true;
        }
        let hidden = tracked.suspending
            && event.state == VmState::Stopped
            && event.kind == EventKind::StateChanged;
        if !hidden {
            tracked.send(event.kind);
        }
        drop(tracked);
        self.changed.notify_all();
    }

    /// Changes what the VM knows (under the lock), then publishes `kind`, if any, with
    /// the resulting state.
    pub(super) fn update(&self, change: impl FnOnce(&mut Tracked), kind: Option<EventKind>) {
        let mut tracked = self.lock();
        change(&mut tracked);
        if let Some(kind) = kind {
            tracked.send(kind);
        }
        drop(tracked);
        self.changed.notify_all();
    }

    /// Waits, event-driven, until `done` holds or `timeout` passes. Returns the VM's
    /// state then and whether `done` held.
    pub(super) fn wait_until(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&Tracked) -> bool,
    ) -> (VmState, bool) {
        let (tracked, held) = self.wait_locked(self.lock(), timeout, &mut done);
        (tracked.vm_state(), held)
    }

    /// As [`Tracker::wait_until`], starting from and returning the held lock.
    pub(super) fn wait_locked<'a>(
        &'a self,
        mut tracked: MutexGuard<'a, Tracked>,
        timeout: Duration,
        done: &mut impl FnMut(&Tracked) -> bool,
    ) -> (MutexGuard<'a, Tracked>, bool) {
        let deadline = deadline_after(timeout);
        loop {
            if done(&tracked) {
                return (tracked, true);
            }
            match wait_until_deadline(&self.changed, tracked, deadline) {
                Some(guard) => tracked = guard,
                None => return (self.lock(), false),
            }
        }
    }

    /// Takes the VM for `busy` once no other operation holds it (operations other than
    /// a shutdown wait their turn).
    pub(super) fn acquire(&self, busy: Busy) -> Gate<'_> {
        let tracked = self.lock();
        let (tracked, _) = self.wait_locked(tracked, Duration::MAX, &mut |t| t.busy.is_none());
        self.take(tracked, busy)
    }

    /// Marks the VM as held by `busy` (the caller checked it is free).
    pub(super) fn take<'a>(&'a self, mut tracked: MutexGuard<'a, Tracked>, busy: Busy) -> Gate<'a> {
        debug_assert!(tracked.busy.is_none());
        tracked.busy = Some(busy);
        Gate { tracker: self }
    }

    pub(super) fn notify(&self) {
        self.changed.notify_all();
    }
}

/// The VM held by one operation; dropping it lets the next one in.
pub(super) struct Gate<'a> {
    tracker: &'a Tracker,
}

impl Drop for Gate<'_> {
    fn drop(&mut self) {
        self.tracker.lock().busy = None;
        self.tracker.notify();
    }
}
