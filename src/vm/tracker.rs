//! What a [`super::VirtualMachine`] knows about itself, shared with the native
//! observer: the framework's state, the saved state it tracks, the operation holding
//! the VM and the line of those waiting for it, and the subscribers (`delivery.rs`).
//!
//! One mutex guards all of it and one condition variable announces every change, so
//! every wait is event-driven and no wake-up can be missed. The waiters are counted
//! under that mutex, so a change nobody waits for (most events, most operations ending)
//! costs no wake-up call. No code of a subscriber runs under that mutex.
//!
//! Operations take the VM in arrival order: each draws a ticket and waits until it is
//! first in line and the VM is free. So a forced shutdown goes before everything that
//! came after it, and nothing that came after it can take the VM from under it.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::config::Timeouts;
use crate::ffi::callback::NativeEvent;
use crate::state::{EventKind, Operation, StateEvent, VmState};
use crate::util::{deadline_after, lock};

use super::delivery::{Entry, Events, Removal, Subscriber};

/// The operation holding the VM, and the timeouts it runs under (which bound how long a
/// forced shutdown waits for it).
#[derive(Debug, Clone, Copy)]
pub(super) struct Busy {
    pub(super) operation: Operation,
    pub(super) timeouts: Timeouts,
}

pub(super) struct Tracked {
    /// The framework's state as last reported by the current native VM (never
    /// `Suspended`).
    pub(super) framework_state: VmState,
    /// The file holding the guest this VM restores from: the one it found when it was
    /// created or the one it wrote. Never re-derived from the file system.
    pub(super) saved_state: Option<PathBuf>,
    /// The guest ran since `saved_state` was written or restored from: the file is
    /// stale and about to be deleted, so the VM is not suspended any more, even if
    /// the guest stops before the deletion.
    pub(super) saved_state_spent: bool,
    /// A suspend issued its stop and has not yet put the saved state in place: the
    /// framework's `Stopped` is not the VM's (subscribers never see a bare `Stopped`).
    pub(super) suspending: bool,
    /// Forced shutdowns waiting for the operation in flight; a graceful wait in
    /// progress gives up as soon as one is waiting.
    pub(super) forced_requests: usize,
    /// The operation holding the VM.
    pub(super) busy: Option<Busy>,
    /// The operations waiting for the VM, in arrival order, by ticket.
    line: VecDeque<(u64, Busy)>,
    /// The ticket of the operation holding the VM.
    holder: u64,
    next_ticket: u64,
    /// Which native VM object the events come from: the VM restores into a fresh one,
    /// and a late event of a released object must not count.
    pub(super) generation: u64,
    /// The current native VM object has left `Stopped` at least once.
    pub(super) native_has_run: bool,
    pub(super) events: Events,
    /// Threads waiting on `Tracker::changed` (counted under the lock).
    waiters: usize,
}

impl Tracked {
    /// The VM's state: the framework's, except that stopped with a saved state is
    /// suspended, and stopped during a suspend is still stopping.
    pub(super) fn vm_state(&self) -> VmState {
        match self.framework_state {
            VmState::Stopped if self.suspending => VmState::Stopping,
            VmState::Stopped if self.holds_saved_state() => VmState::Suspended,
            state => state,
        }
    }

    /// True when the VM holds a saved state that restores its guest.
    pub(super) fn holds_saved_state(&self) -> bool {
        self.saved_state.is_some() && !self.saved_state_spent
    }

    /// Queues an event for the subscribers (delivered once the lock is released).
    fn send(&mut self, kind: EventKind) {
        let nobody = self.events.nobody_listens();
        if nobody && !log::log_enabled!(log::Level::Debug) {
            // Nobody to tell: build nothing.
            return;
        }
        let event = StateEvent {
            state: self.vm_state(),
            kind,
        };
        log::debug!("VM event: {event:?}");
        if !nobody {
            self.events.push(event);
        }
    }

    /// True when the VM is free and `ticket` is first in line.
    fn is_turn(&self, ticket: u64) -> bool {
        self.busy.is_none() && self.line.front().is_some_and(|(first, _)| *first == ticket)
    }

    /// The operation `ticket` waits for now: the one holding the VM, or else the one
    /// first in line (about to take it). `None` once it is `ticket`'s turn.
    fn ahead_of(&self, ticket: u64) -> Option<(u64, Busy)> {
        match (self.busy, self.line.front()) {
            (Some(busy), _) => Some((self.holder, busy)),
            (None, Some(&(first, busy))) if first != ticket => Some((first, busy)),
            _ => None,
        }
    }

    /// The operation holding the VM and those waiting, in arrival order.
    pub(super) fn operations(&self) -> (Option<Operation>, Vec<Operation>) {
        let waiting = self.line.iter().map(|(_, busy)| busy.operation).collect();
        (self.busy.map(|busy| busy.operation), waiting)
    }

    /// True when no operation holds the VM or waits for it.
    pub(super) fn idle(&self) -> bool {
        self.busy.is_none() && self.line.is_empty()
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
                saved_state_spent: false,
                suspending: false,
                forced_requests: 0,
                busy: None,
                line: VecDeque::new(),
                holder: 0,
                next_ticket: 0,
                generation: 0,
                native_has_run: framework_state != VmState::Stopped,
                events: Events::default(),
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
        if event.state == VmState::Running && tracked.saved_state.is_some() {
            // The guest runs: its saved state is spent from this moment.
            tracked.saved_state_spent = true;
        }
        let hidden = tracked.suspending
            && event.state == VmState::Stopped
            && event.kind == EventKind::StateChanged;
        if !hidden {
            tracked.send(event.kind);
        }
        // The framework's queue delivers its own events (nothing of ours is held).
        self.publish_and_deliver(tracked, false);
    }

    /// Changes what the VM knows (under the lock), then publishes `kind`, if any, with
    /// the resulting state. While an operation holds the VM its subscribers hear of
    /// it when the operation lets go (see `Gate`).
    pub(super) fn update(&self, change: impl FnOnce(&mut Tracked), kind: Option<EventKind>) {
        let mut tracked = self.lock();
        change(&mut tracked);
        if let Some(kind) = kind {
            tracked.send(kind);
        }
        let defer = tracked.busy.is_some();
        self.publish_and_deliver(tracked, defer);
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

    /// Takes the VM for `busy` in its turn (after every operation that came before),
    /// and returns what `read` finds at that moment, under the same lock.
    pub(super) fn acquire<R>(&self, busy: Busy, read: impl FnOnce(&Tracked) -> R) -> (Gate<'_>, R) {
        let mut tracked = self.lock();
        let ticket = tracked.join_line(busy);
        let (tracked, _) = self.wait_locked(tracked, Duration::MAX, &mut |t| t.is_turn(ticket));
        let found = read(&tracked);
        (self.take(tracked, ticket), found)
    }

    /// Takes the VM for `busy` in its turn, as [`Tracker::acquire`], but waits for
    /// each operation ahead of it no longer than that operation's own bound: when one
    /// outlives it, gives up its place and returns that operation and the state then.
    /// A `forced` request is counted while it waits, so a graceful shutdown waiting for
    /// the guest gives up and lets it through. `read` sees the VM before the wait.
    pub(super) fn acquire_bounded<R>(
        &self,
        busy: Busy,
        forced: bool,
        read: impl FnOnce(&Tracked) -> R,
    ) -> (Result<Gate<'_>, (Busy, VmState)>, R) {
        let mut tracked = self.lock();
        let found = read(&tracked);
        let ticket = tracked.join_line(busy);
        if forced {
            tracked.forced_requests += 1;
            self.notify(&tracked);
        }
        while let Some((ahead, ahead_busy)) = tracked.ahead_of(ticket) {
            log::info!(
                "{}: waiting for {} to settle",
                busy.operation,
                ahead_busy.operation
            );
            let (guard, moved_on) = self.wait_locked(tracked, ahead_busy.bound(), &mut |t| {
                t.ahead_of(ticket).map(|(id, _)| id) != Some(ahead)
            });
            tracked = guard;
            if !moved_on {
                tracked.line.retain(|(id, _)| *id != ticket);
                if forced {
                    tracked.forced_requests -= 1;
                }
                let state = tracked.vm_state();
                // Whoever is behind may be first now.
                self.notify(&tracked);
                return (Err((ahead_busy, state)), found);
            }
        }
        if forced {
            tracked.forced_requests -= 1;
        }
        (Ok(self.take(tracked, ticket)), found)
    }

    /// Marks the VM as held by `ticket`, first in line (the caller checked its turn).
    fn take<'a>(&'a self, mut tracked: MutexGuard<'a, Tracked>, ticket: u64) -> Gate<'a> {
        debug_assert!(tracked.is_turn(ticket));
        let (holder, busy) = tracked.line.pop_front().expect("checked: first in line");
        tracked.busy = Some(busy);
        tracked.holder = holder;
        Gate { tracker: self }
    }

    /// Adds a subscriber for every event from now on; returns its key.
    pub(super) fn subscribe(&self, deliver: Subscriber) -> u64 {
        self.lock().events.add(deliver)
    }

    /// Removes subscriber `id`. When this returns it receives nothing more and has
    /// been dropped, except when called from inside a delivery: then it is dropped as
    /// soon as the subscriber that called returns.
    pub(super) fn unsubscribe(&self, id: u64) {
        let mut tracked = self.lock();
        match tracked.events.remove(id) {
            Removal::Here(entry) => {
                drop(tracked);
                drop(entry);
            }
            Removal::Gone => {}
            Removal::Cancelled if tracked.events.delivering_here() => {}
            Removal::Cancelled => {
                let _ = self.wait_locked(tracked, Duration::MAX, &mut |t| {
                    !t.events.cancelled.contains(&id)
                });
            }
        }
    }

    /// Publishes a change made under `tracked`: wakes its waiters, then, unless
    /// `defer` or another thread is at it, delivers the events waiting.
    fn publish_and_deliver<'a>(&'a self, tracked: MutexGuard<'a, Tracked>, defer: bool) {
        self.notify(&tracked);
        if !defer && tracked.events.due() {
            self.deliver(tracked);
        }
    }

    /// Delivers, or waits until another thread has delivered, every event queued so
    /// far, so that an operation returns after its own events (unless this thread is
    /// the one delivering them, from inside a subscriber).
    fn deliver_queued<'a>(&'a self, tracked: MutexGuard<'a, Tracked>) {
        if tracked.events.due() {
            return self.deliver(tracked);
        }
        if tracked.events.all_delivered() || tracked.events.delivering_here() {
            return;
        }
        let target = tracked.events.next_seq;
        let _ = self.wait_locked(tracked, Duration::MAX, &mut |t| {
            t.events.delivered >= target || t.events.deliverer.is_none()
        });
    }

    /// Delivers the waiting events in order, with the lock released around every
    /// subscriber call; this thread is the deliverer until none are left.
    fn deliver<'a>(&'a self, mut tracked: MutexGuard<'a, Tracked>) {
        let mut held: Vec<Entry> = tracked.events.begin();
        while let Some(round) = tracked.events.next_round(&mut held) {
            drop(tracked);
            let (cancelled, delivered) = round.run(&mut held);
            tracked = self.lock();
            tracked.events.end_round(cancelled, delivered);
            self.notify(&tracked);
        }
        self.notify(&tracked);
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
    /// Lets the next operation in, then delivers (or waits for) the events queued so
    /// far, so that an operation returns after its own events reached subscribers.
    fn drop(&mut self) {
        let mut tracked = self.tracker.lock();
        tracked.busy = None;
        self.tracker.notify(&tracked);
        self.tracker.deliver_queued(tracked);
    }
}

impl Tracked {
    /// Joins the line of operations waiting for the VM; returns the ticket.
    fn join_line(&mut self, busy: Busy) -> u64 {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.line.push_back((ticket, busy));
        ticket
    }
}
