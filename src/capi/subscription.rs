//! `applevz_subscription`: state events delivered to a C callback, on a dedicated
//! thread per subscription fed by [`crate::VirtualMachine::subscribe`].
//!
//! Delivery and ending a subscription meet at one mutex (the gate): the thread holds
//! it while a callback runs and checks the `stopped` flag under it; [`Shared::stop`]
//! sets the flag and then takes the gate once, so when it returns no callback starts
//! and none is still running. On the subscription's own thread (from inside its
//! callback), `stop` only sets the flag: the running callback is the caller, and the
//! last. `applevz_subscription_free` stops one subscription; `applevz_vm_free` stops
//! all of the VM's before dropping it, so no callback ever sees a freed VM (the forced
//! stop of a running VM still sends events after the VM is gone).
//!
//! The thread never holds a lock of the VM while it calls back, and the channel it
//! reads is unbounded, so a callback may call any function of the API (even a
//! blocking `applevz_vm_shutdown`); events queue meanwhile.
//!
//! Stopping also ends the thread: the VM drops the subscription's sender at once
//! (`SubscriptionKey::cancel`), so the thread's receiver disconnects, and the thread
//! is joined, except from inside its own callback, where it ends as soon as that
//! callback returns.

use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::thread::{self, JoinHandle, ThreadId};

use crate::state::StateEvent;
use crate::vm::SubscriptionKey;

use super::error::applevz_error;
use super::event::applevz_event;
use super::guard;

/// `applevz_event_callback`: called with the subscriber's `user_data` and an event.
pub type applevz_event_callback =
    Option<unsafe extern "C" fn(user_data: *mut c_void, event: *const applevz_event)>;

/// `applevz_subscription`: +1 from `applevz_vm_subscribe`, freed with
/// `applevz_subscription_free`.
pub struct applevz_subscription {
    shared: Arc<Shared>,
}

/// What a subscription's thread shares with its handle and its VM.
pub(super) struct Shared {
    stopped: AtomicBool,
    /// Held while a callback runs.
    gate: Mutex<()>,
    /// The delivering thread, set by itself before its first callback.
    thread: OnceLock<ThreadId>,
    /// Ends the VM's side of the subscription.
    key: SubscriptionKey,
    /// The delivering thread, joined once stopped.
    handle: Mutex<Option<JoinHandle<()>>>,
}

impl Shared {
    fn gate(&self) -> MutexGuard<'_, ()> {
        // Nothing is guarded but the callback itself: a poisoned gate is still a gate.
        self.gate.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Ends deliveries and the thread: when this returns, no callback runs any more
    /// and the thread has ended (except when called from inside the callback: then
    /// the running callback is the last, and the thread ends after it).
    fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        let inside = self.thread.get() == Some(&thread::current().id());
        if !inside {
            // Waits for a callback under way on the subscription's thread.
            drop(self.gate());
        }
        self.key.cancel();
        let handle = self
            .handle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let (Some(handle), false) = (handle, inside) {
            // The receiver is disconnected now: the thread ends without calling back.
            if handle.join().is_err() {
                log::error!("a subscription's thread panicked");
            }
        }
    }
}

/// The subscriptions of one VM, stopped when it is freed.
#[derive(Default)]
pub(super) struct Subscribers(Mutex<Vec<Weak<Shared>>>);

impl Subscribers {
    fn list(&self) -> MutexGuard<'_, Vec<Weak<Shared>>> {
        // Every critical section is a push, a retain or a take: poisoning changes nothing.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn add(&self, shared: &Arc<Shared>) {
        let mut list = self.list();
        list.retain(|weak| weak.strong_count() > 0);
        list.push(Arc::downgrade(shared));
    }

    /// Stops every subscription still alive.
    pub(super) fn stop_all(&self) {
        let list = std::mem::take(&mut *self.list());
        for shared in list.iter().filter_map(Weak::upgrade) {
            shared.stop();
        }
    }
}

/// The caller's `user_data`, moved to the subscription's thread.
struct UserData(*mut c_void);

// SAFETY: the header makes the caller promise that `user_data` may be used from the
// subscription's thread; this crate never dereferences it, it only passes it back.
unsafe impl Send for UserData {}

/// The subscription's thread: every event, in order, until the subscription is freed
/// or the VM is gone (the channel then disconnects).
fn deliver(
    events: Receiver<StateEvent>,
    callback: unsafe extern "C" fn(*mut c_void, *const applevz_event),
    user_data: &UserData,
    shared: &Shared,
) {
    // Before any callback, so that a callback freeing its own subscription is known.
    let _ = shared.thread.set(thread::current().id());
    for event in events {
        let _gate = shared.gate();
        if shared.stopped.load(Ordering::SeqCst) {
            return;
        }
        let c_event = applevz_event::new(&event);
        // SAFETY: the caller gave a function with this signature and promised it may
        // run on this thread with `user_data`; `c_event` outlives the call. A C
        // callback cannot unwind into Rust (the header forbids C++ exceptions escaping
        // it).
        unsafe { callback(user_data.0, &raw const c_event) };
    }
}

/// A new subscription delivering `events` (ended through `key`) to `callback` on its
/// own thread, registered with `subscribers` so that freeing the VM ends it; an error
/// when no thread could be started.
pub(super) fn subscribe(
    (events, key): (Receiver<StateEvent>, SubscriptionKey),
    subscribers: &Subscribers,
    callback: unsafe extern "C" fn(*mut c_void, *const applevz_event),
    user_data: *mut c_void,
) -> Result<*mut applevz_subscription, applevz_error> {
    let user_data = UserData(user_data);
    guard(
        move || {
            let shared = Arc::new(Shared {
                stopped: AtomicBool::new(false),
                gate: Mutex::new(()),
                thread: OnceLock::new(),
                key,
                handle: Mutex::new(None),
            });
            let for_thread = Arc::clone(&shared);
            match thread::Builder::new()
                .name("applevz-subscription".into())
                .spawn(move || deliver(events, callback, &user_data, &for_thread))
            {
                Ok(handle) => {
                    *shared.handle.lock().unwrap_or_else(PoisonError::into_inner) = Some(handle);
                    subscribers.add(&shared);
                    Ok(Box::into_raw(Box::new(applevz_subscription { shared })))
                }
                Err(error) => {
                    shared.key.cancel();
                    Err(applevz_error::io(format!(
                        "applevz_vm_subscribe: cannot start the subscription's thread: {error}"
                    )))
                }
            }
        },
        |panic| Err(applevz_error::internal("applevz_vm_subscribe", &panic)),
    )
}

/// `applevz_subscription_free(subscription)`: ends the subscription; NULL is ignored.
/// When it returns no callback of this subscription runs any more.
///
/// # Safety
/// `subscription` is NULL or a subscription from `applevz_vm_subscribe` not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn applevz_subscription_free(subscription: *mut applevz_subscription) {
    if subscription.is_null() {
        return;
    }
    // SAFETY: a pointer from `Box::into_raw` in `applevz_vm_subscribe`, freed exactly
    // once, by this function's contract.
    let subscription = unsafe { Box::from_raw(subscription) };
    guard(move || subscription.shared.stop(), |_| ());
}
