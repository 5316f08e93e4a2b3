//! Deadlines for waits that nearly always end long before them: an operation's wait
//! for its completion.
//!
//! A wait with a timeout (`Condvar::wait_timeout`) arms a kernel timer every time it
//! sleeps and cancels it when woken; on a virtual machine host that costs about as much
//! as the rest of a lifecycle operation (benches/lifecycle.rs: the wrapper took 1.3× the
//! raw ABI's time with timed waits, under 1.1× with untimed ones). So those waits sleep
//! without a timeout, and one keeper thread per process wakes a waiter whose deadline
//! passes. The keeper sleeps until the earliest deadline it knows of; a new deadline
//! wakes it only when it is earlier than that, and one that is disarmed does not wake it
//! at all, so a steady stream of operations does not wake the keeper (it wakes about
//! once per timeout period, finds nothing due, and sleeps again).

use std::sync::{Condvar, Mutex, OnceLock, PoisonError, Weak};
use std::time::Instant;

use crate::util::lock;

/// What a keeper calls when a deadline passes.
pub(crate) trait Expire: Send + Sync {
    /// The deadline passed: wake the waiter (called at most once per armed deadline,
    /// never with the keeper's lock held).
    fn expire(&self);
}

struct Entry {
    deadline: Instant,
    fired: bool,
    target: Weak<dyn Expire>,
}

#[derive(Clone, Copy)]
enum Sleep {
    /// Scanning the entries (it sees any entry added meanwhile).
    Awake,
    Until(Instant),
    Forever,
}

struct State {
    /// Armed deadlines; a slot is freed only by its [`Alarm`]'s drop, so an index is
    /// never reused while its alarm exists.
    entries: Vec<Option<Entry>>,
    free: Vec<usize>,
    sleep: Sleep,
}

struct Keeper {
    state: Mutex<State>,
    wake: Condvar,
}

/// The process's keeper, started on first use; `None` when its thread could not be
/// started (waits then use timed waits instead).
fn keeper() -> Option<&'static Keeper> {
    static KEEPER: OnceLock<Option<&'static Keeper>> = OnceLock::new();
    *KEEPER.get_or_init(|| {
        let keeper: &'static Keeper = Box::leak(Box::new(Keeper {
            state: Mutex::new(State {
                entries: Vec::new(),
                free: Vec::new(),
                sleep: Sleep::Awake,
            }),
            wake: Condvar::new(),
        }));
        spawn_without_signals(move || run(keeper)).then_some(keeper)
    })
}

/// Spawns the keeper thread with every signal blocked (like the native side's queue
/// threads): it never runs a signal handler meant for the application.
fn spawn_without_signals(body: impl FnOnce() + Send + 'static) -> bool {
    // SAFETY: sigset_t is plain data, filled by sigfillset; pthread_sigmask only changes
    // the calling thread's mask, and the previous mask is restored right after the
    // spawn (the new thread inherits the full one).
    let previous = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut previous: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&raw mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &raw const all, &raw mut previous);
        previous
    };
    let spawned = std::thread::Builder::new()
        .name("applevz-deadlines".into())
        .spawn(body)
        .is_ok();
    // SAFETY: restores the mask saved above, for this thread only.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &raw const previous, std::ptr::null_mut()) };
    spawned
}

fn run(keeper: &'static Keeper) {
    let mut state = lock(&keeper.state);
    loop {
        let now = Instant::now();
        let mut due = Vec::new();
        let mut earliest: Option<Instant> = None;
        for entry in state.entries.iter_mut().flatten() {
            if entry.fired {
                continue;
            }
            if entry.deadline <= now {
                entry.fired = true;
                due.push(entry.target.clone());
            } else {
                earliest = Some(earliest.map_or(entry.deadline, |e| e.min(entry.deadline)));
            }
        }
        if !due.is_empty() {
            drop(state);
            for target in due {
                if let Some(target) = target.upgrade() {
                    target.expire();
                }
            }
            state = lock(&keeper.state);
            continue;
        }
        state = match earliest {
            None => {
                state.sleep = Sleep::Forever;
                keeper
                    .wake
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner)
            }
            Some(at) => {
                state.sleep = Sleep::Until(at);
                keeper
                    .wake
                    .wait_timeout(state, at.saturating_duration_since(now))
                    .unwrap_or_else(PoisonError::into_inner)
                    .0
            }
        };
        state.sleep = Sleep::Awake;
    }
}

/// An armed deadline: the keeper calls `expire` on its target once the deadline
/// passes, unless the alarm was dropped first.
pub(crate) struct Alarm {
    keeper: &'static Keeper,
    index: usize,
}

impl Alarm {
    /// Arms `deadline` for `target`; `None` when there is no keeper thread (the caller
    /// then waits with a timeout of its own).
    pub(crate) fn arm(deadline: Instant, target: Weak<dyn Expire>) -> Option<Self> {
        let keeper = keeper()?;
        let mut state = lock(&keeper.state);
        let entry = Entry {
            deadline,
            fired: false,
            target,
        };
        let index = if let Some(index) = state.free.pop() {
            state.entries[index] = Some(entry);
            index
        } else {
            state.entries.push(Some(entry));
            state.entries.len() - 1
        };
        let wake = match state.sleep {
            Sleep::Awake => false,
            Sleep::Forever => true,
            Sleep::Until(at) => deadline < at,
        };
        if wake {
            // It rescans once awake; later alarms need not wake it again.
            state.sleep = Sleep::Awake;
        }
        drop(state);
        if wake {
            keeper.wake.notify_one();
        }
        Some(Self { keeper, index })
    }
}

impl Drop for Alarm {
    fn drop(&mut self) {
        let mut state = lock(&self.keeper.state);
        state.entries[self.index] = None;
        state.free.push(self.index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    struct Counter(AtomicUsize, Mutex<()>, Condvar);

    impl Expire for Counter {
        fn expire(&self) {
            let _guard = lock(&self.1);
            self.0.fetch_add(1, Ordering::SeqCst);
            self.2.notify_all();
        }
    }

    #[test]
    fn a_deadline_fires_once_and_a_disarmed_one_never() {
        let fired = Arc::new(Counter(AtomicUsize::new(0), Mutex::new(()), Condvar::new()));
        let target: Weak<dyn Expire> = Arc::downgrade(&fired) as Weak<dyn Expire>;
        let early = Alarm::arm(Instant::now() + Duration::from_millis(20), target.clone());
        let disarmed = Alarm::arm(Instant::now() + Duration::from_millis(10), target);
        drop(disarmed);
        let guard = lock(&fired.1);
        let (guard, _) = fired
            .2
            .wait_timeout_while(guard, Duration::from_secs(20), |()| {
                fired.0.load(Ordering::SeqCst) == 0
            })
            .unwrap();
        drop(guard);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(fired.0.load(Ordering::SeqCst), 1, "fired exactly once");
        drop(early);
    }
}
