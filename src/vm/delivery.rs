//! Subscribers and the delivery of events to them, outside every lock of the VM.
//!
//! Events are queued in order under the tracker's mutex (each with a sequence number)
//! and handed to subscribers by one thread at a time, the *deliverer*, with the mutex
//! released: subscriber code (a `From` conversion, the sender of a C subscription) may
//! then read the VM, subscribe or unsubscribe, and a subscriber that panics is
//! contained. The deliverer is whichever thread finds events waiting and nobody
//! delivering: the framework's queue for its own events, or an operation's thread once
//! the operation has let go of the VM (never while it holds it, so a subscriber that
//! calls a lifecycle method cannot wait for its own thread).
//!
//! This file holds the bookkeeping; `tracker.rs` runs it under the tracker's lock.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::thread::{self, ThreadId};

use crate::state::StateEvent;

/// Hands one event to a subscriber; false once the subscriber is gone.
pub(super) type Subscriber = Box<dyn FnMut(StateEvent) -> bool + Send>;

pub(super) struct Entry {
    id: u64,
    /// The first event this subscriber gets: the next one at the time it subscribed.
    first_seq: u64,
    deliver: Subscriber,
}

/// The subscribers and the events not yet delivered to them (part of [`Tracked`]).
#[derive(Default)]
pub(super) struct Events {
    /// The subscribers, except while the deliverer holds them outside the lock; then
    /// only those added meanwhile.
    subscribers: Vec<Entry>,
    /// How many subscribers the deliverer holds.
    held: usize,
    pending: VecDeque<(u64, StateEvent)>,
    /// The sequence number of the next event.
    pub(super) next_seq: u64,
    /// Every event numbered below this has been delivered.
    pub(super) delivered: u64,
    pub(super) deliverer: Option<ThreadId>,
    /// Subscribers to drop that the deliverer holds, or is dropping.
    pub(super) cancelled: Vec<u64>,
    next_id: u64,
}

impl Events {
    /// True when an event would reach nobody.
    pub(super) fn nobody_listens(&self) -> bool {
        self.subscribers.is_empty() && self.held == 0
    }

    pub(super) fn push(&mut self, event: StateEvent) {
        self.pending.push_back((self.next_seq, event));
        self.next_seq += 1;
    }

    pub(super) fn delivering_here(&self) -> bool {
        self.deliverer == Some(thread::current().id())
    }

    /// True when events wait and nobody delivers them.
    pub(super) fn due(&self) -> bool {
        !self.pending.is_empty() && self.deliverer.is_none()
    }

    /// True when every event queued so far has been delivered.
    pub(super) fn all_delivered(&self) -> bool {
        self.pending.is_empty() && self.deliverer.is_none()
    }

    /// Adds a subscriber for every event from now on; returns its key.
    pub(super) fn add(&mut self, deliver: Subscriber) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.subscribers.push(Entry {
            id,
            first_seq: self.next_seq,
            deliver,
        });
        id
    }

    /// Takes subscriber `id` out when it is here; otherwise, while a deliverer holds
    /// the subscribers, asks it to drop it (`Cancelled`).
    pub(super) fn remove(&mut self, id: u64) -> Removal {
        if let Some(index) = self.subscribers.iter().position(|e| e.id == id) {
            return Removal::Here(self.subscribers.remove(index));
        }
        if self.deliverer.is_none() {
            return Removal::Gone;
        }
        self.cancelled.push(id);
        Removal::Cancelled
    }

    /// This thread becomes the deliverer; returns the subscribers it now holds.
    pub(super) fn begin(&mut self) -> Vec<Entry> {
        self.deliverer = Some(thread::current().id());
        std::mem::take(&mut self.subscribers)
    }

    /// The next round of a delivery: the cancelled subscribers to drop and the next
    /// event, to be handled outside the lock; `None` when there is nothing left, and
    /// then the subscribers are back here and nobody delivers.
    pub(super) fn next_round(&mut self, held: &mut Vec<Entry>) -> Option<Round> {
        held.append(&mut self.subscribers);
        // Only the deliverer removes from `cancelled`, so its first `cancelled` ids
        // are still these when the round ends.
        let cancelled = self.cancelled.len();
        let gone: Vec<Entry> = if cancelled == 0 {
            Vec::new()
        } else {
            let (gone, kept) = std::mem::take(held)
                .into_iter()
                .partition(|e| self.cancelled.contains(&e.id));
            *held = kept;
            gone
        };
        let next = self.pending.pop_front();
        if next.is_none() && gone.is_empty() {
            self.cancelled.clear(); // ids of subscribers no longer here
            self.subscribers = std::mem::take(held);
            self.held = 0;
            self.deliverer = None;
            return None;
        }
        self.held = held.len();
        Some(Round {
            gone,
            next,
            cancelled,
        })
    }

    /// Records a round as done (back under the lock).
    pub(super) fn end_round(&mut self, cancelled: usize, delivered: Option<u64>) {
        self.cancelled.drain(..cancelled);
        if let Some(seq) = delivered {
            self.delivered = seq + 1;
        }
    }
}

/// What [`Events::remove`] did.
pub(super) enum Removal {
    /// Taken out: drop it outside the lock.
    Here(Entry),
    /// Not a subscriber (any more).
    Gone,
    /// The deliverer holds it and will drop it.
    Cancelled,
}

/// One round of a delivery (see [`Events::next_round`]).
pub(super) struct Round {
    pub(super) gone: Vec<Entry>,
    pub(super) next: Option<(u64, StateEvent)>,
    cancelled: usize,
}

impl Round {
    /// Drops the cancelled subscribers and hands the event to the others, in the
    /// order they subscribed (outside the lock). Returns what `end_round` needs.
    pub(super) fn run(self, held: &mut Vec<Entry>) -> (usize, Option<u64>) {
        drop(self.gone);
        let seq = self.next.map(|(seq, event)| {
            held.retain_mut(|entry| seq < entry.first_seq || hand_over(entry, &event));
            seq
        });
        (self.cancelled, seq)
    }
}

/// Gives `event` to one subscriber; false when it is gone or panicked (a panic is
/// reported once, here, and the subscriber dropped).
fn hand_over(entry: &mut Entry, event: &StateEvent) -> bool {
    if let Ok(keep) = catch_unwind(AssertUnwindSafe(|| (entry.deliver)(event.clone()))) {
        keep
    } else {
        log::error!("a subscriber panicked on {event:?}: it is unsubscribed, the VM goes on");
        false
    }
}
