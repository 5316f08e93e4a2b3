//! What a [`super::VirtualMachine`] knows about itself, shared with the native
//! observer: the framework's state, the saved state it tracks, the operation holding
//! the VM, forced shutdowns waiting for their turn, and the subscribers.
//!
//! One mutex guards all of it and one condition variable announces every change, so
//! every wait is event-driven and no wake-up can be missed. The waiters are counted
//! under that mutex, so a change nobody waits for (most events, most operations ending)
//! costs no wake-up call.

use std::path::PathBuf;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::config::Timeouts;
use crate::ffi::callback::NativeEvent;
use crate::state::{EventKind, Operation, StateEvent, VmState};
use crate::util::{deadline_after, lock};

/// The operation holding the VM, and the timeouts it runs under (which bound how long a
/// forced shutdown waits for it).
#[derive(Debug, Clone, Copy)]
pub(super) struct Busy {
    pub(super) operation: Operation,
    pub(super) timeouts: Timeouts,
}

/// Hands one event to a subscriber; false once the subscriber is gone.
pub(super) type Subscriber = Box<dyn FnMut(StateEvent) -> bool + Send>;

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
    subscribers: Vec<Subscriber>,
    /// Threads waiting on `Tracker::changed` (counted under the lock).
    waiters: usize,
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
        if self.subscribers.is_empty() && !log::log_enabled!(log::Level::Debug) {
            // Nobody to tell: build nothing.
            return;
        }
        let event = StateEvent {
            state: self.vm_state(),
            kind,
        };
        log::debug!("VM event: {event:?}");
        self.subscribers
            .retain_mut(|subscriber| subscriber(event.clone()));
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
                waiters: 0,
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

    pub(super) fn subscribe(&self, subscriber: Subscriber) {
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
        self.publish(tracked);
    }

    /// Changes what the VM knows (under the lock), then publishes `kind`, if any, with
    /// the resulting state.
    pub(super) fn update(&self, change: impl FnOnce(&mut Tracked), kind: Option<EventKind>) {
        let mut tracked = self.lock();
        change(&mut tracked);
        if let Some(kind) = kind {
            tracked.send(kind);
        }
        self.publish(tracked);
    }

    /// Releases the lock after a change and wakes the threads waiting for one, if any.
    fn publish(&self, tracked: MutexGuard<'_, Tracked>) {
        let waiting = tracked.waiters > 0;
        drop(tracked);
        if waiting {
            self.changed.notify_all();
        }
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
        if done(&tracked) {
            // The common case: no clock read.
            return (tracked, true);
        }
        let deadline = deadline_after(timeout);
        loop {
            if done(&tracked) {
                return (tracked, true);
            }
            let remaining = match deadline {
                None => None,
                Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                    Some(remaining) => Some(remaining),
                    None => return (tracked, false),
                },
            };
            tracked.waiters += 1;
            tracked = match remaining {
                None => self
                    .changed
                    .wait(tracked)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(remaining) => {
                    self.changed
                        .wait_timeout(tracked, remaining)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
            tracked.waiters -= 1;
        }
    }

    /// Takes the VM for `busy` once no other operation holds it (operations other than
    /// a shutdown wait their turn), and returns what `read` finds at that moment, under
    /// the same lock.
    pub(super) fn acquire<R>(&self, busy: Busy, read: impl FnOnce(&Tracked) -> R) -> (Gate<'_>, R) {
        let tracked = self.lock();
        let (tracked, _) = self.wait_locked(tracked, Duration::MAX, &mut |t| t.busy.is_none());
        let found = read(&tracked);
        (self.take(tracked, busy), found)
    }

    /// Marks the VM as held by `busy` (the caller checked it is free).
    pub(super) fn take<'a>(&'a self, mut tracked: MutexGuard<'a, Tracked>, busy: Busy) -> Gate<'a> {
        debug_assert!(tracked.busy.is_none());
        tracked.busy = Some(busy);
        Gate { tracker: self }
    }

    /// Wakes the threads waiting for a change made under `tracked` (still held).
    pub(super) fn notify(&self, tracked: &Tracked) {
        if tracked.waiters > 0 {
            self.changed.notify_all();
        }
    }
}

/// The VM held by one operation; dropping it lets the next one in.
pub(super) struct Gate<'a> {
    tracker: &'a Tracker,
}

impl Drop for Gate<'_> {
    fn drop(&mut self) {
        let mut tracked = self.tracker.lock();
        tracked.busy = None;
        self.tracker.publish(tracked);
    }
}
