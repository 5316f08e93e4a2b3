//! The terminal: raw mode for the guest's console (restored on every exit path) and
//! progress lines for long operations.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::out::errln;

pub(crate) fn is_terminal(fd: i32) -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(fd) == 1 }
}

/// Puts a terminal in raw mode for the guest's console and restores the exact
/// previous settings when dropped (normal return, error, or unwinding). Signals stay
/// enabled, so Ctrl-C still reaches `applevz run` (graceful shutdown) instead of the
/// guest; output processing stays on so host messages keep their line breaks.
pub(crate) struct RawMode {
    fd: i32,
    saved: libc::termios,
}

impl RawMode {
    pub(crate) fn enter(fd: i32) -> std::io::Result<Self> {
        // SAFETY: termios is plain data; tcgetattr fills it for a valid descriptor.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `saved` is a valid termios to write to.
        if unsafe { libc::tcgetattr(fd, &raw mut saved) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw only edits the struct it is given.
        unsafe { libc::cfmakeraw(&raw mut raw) };
        raw.c_lflag |= libc::ISIG;
        raw.c_oflag |= libc::OPOST;
        // SAFETY: a valid descriptor and a fully initialized termios.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw const raw) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self { fd, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: the descriptor and the settings read from it in `enter`.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &raw const self.saved) };
    }
}

/// A long operation's progress on stderr: on a terminal one line updated in place
/// with the state and the elapsed time; otherwise a plain line per state change.
///
/// The state is drawn when it changes (`state`, called on each event). On a terminal a
/// clock thread also redraws the elapsed time every 100 ms; it sleeps on a condition
/// variable, so the end of the operation stops it at once, and it never draws after the
/// final line.
pub(crate) struct Progress {
    inner: Arc<Inner>,
}

struct Inner {
    label: String,
    began: Instant,
    shown: Mutex<Shown>,
    ended: Condvar,
    in_place: bool,
}

struct Shown {
    state: String,
    done: bool,
}

/// How often the elapsed time on a progress line is redrawn.
const CLOCK_TICK: Duration = Duration::from_millis(100);

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Shown> {
        self.shown.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Draws the line (the caller holds the lock, so draws never interleave).
    fn render(&self, shown: &Shown) {
        let elapsed = self.began.elapsed().as_secs_f64();
        let mut stderr = std::io::stderr().lock();
        if self.in_place {
            let _ = write!(
                stderr,
                "\r\x1b[K{}: {} ({elapsed:.1} s)",
                self.label, shown.state
            );
        } else {
            let _ = writeln!(stderr, "{}: {} ({elapsed:.1} s)", self.label, shown.state);
        }
        let _ = stderr.flush();
    }

    /// Ends the progress: no draw after this one (if any).
    fn end(&self, last: Option<&str>) {
        let mut shown = self.lock();
        if shown.done {
            return;
        }
        shown.done = true;
        if let Some(state) = last {
            // On a terminal the final line shows the final time; elsewhere a state
            // already printed is not printed twice.
            if self.in_place || shown.state != state {
                state.clone_into(&mut shown.state);
                self.render(&shown);
            }
        }
        if self.in_place {
            errln!("");
        }
        drop(shown);
        self.ended.notify_all();
    }
}

impl Progress {
    pub(crate) fn new(label: &str) -> Self {
        let inner = Arc::new(Inner {
            label: label.to_owned(),
            began: Instant::now(),
            shown: Mutex::new(Shown {
                state: "…".to_owned(),
                done: false,
            }),
            ended: Condvar::new(),
            in_place: is_terminal(2),
        });
        if inner.in_place {
            let clock = Arc::clone(&inner);
            std::thread::spawn(move || {
                let mut shown = clock.lock();
                while !shown.done {
                    clock.render(&shown);
                    shown = clock
                        .ended
                        .wait_timeout(shown, CLOCK_TICK)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
            });
        }
        Self { inner }
    }

    /// A new state; drawn when it differs from the last one.
    pub(crate) fn state(&self, state: &str) {
        let mut shown = self.inner.lock();
        if shown.done || shown.state == state {
            return;
        }
        state.clone_into(&mut shown.state);
        self.inner.render(&shown);
    }

    /// Ends with a final state line.
    pub(crate) fn finish(self, state: &str) {
        self.inner.end(Some(state));
    }

    /// Ends without a final state (an error follows).
    pub(crate) fn abandon(self) {
        self.inner.end(None);
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.inner.end(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pty::pty;
    use std::os::fd::AsRawFd;

    fn settings(fd: i32) -> libc::termios {
        // SAFETY: plain data filled by tcgetattr on a valid descriptor.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        assert_eq!(unsafe { libc::tcgetattr(fd, &raw mut t) }, 0);
        t
    }

    fn same(a: &libc::termios, b: &libc::termios) -> bool {
        a.c_iflag == b.c_iflag
            && a.c_oflag == b.c_oflag
            && a.c_lflag == b.c_lflag
            && a.c_cflag == b.c_cflag
    }

    #[test]
    fn raw_mode_is_restored_on_drop_and_on_panic() {
        // Both ends stay open until the test ends, and are closed then.
        let (_master, terminal) = pty();
        let slave = terminal.as_raw_fd();
        let before = settings(slave);
        {
            let _raw = RawMode::enter(slave).unwrap();
            let during = settings(slave);
            assert_eq!(during.c_lflag & libc::ICANON, 0, "canonical mode is off");
            assert_eq!(during.c_lflag & libc::ECHO, 0, "echo is off");
            assert_ne!(during.c_lflag & libc::ISIG, 0, "Ctrl-C still signals");
        }
        assert!(
            same(&settings(slave), &before),
            "restored after a normal drop"
        );

        let unwound = std::panic::catch_unwind(|| {
            let _raw = RawMode::enter(slave).unwrap();
            panic!("an error while the console is raw");
        });
        assert!(unwound.is_err());
        assert!(same(&settings(slave), &before), "restored while unwinding");
    }

    #[test]
    fn raw_mode_on_a_non_terminal_is_an_error() {
        use std::os::fd::AsRawFd;
        let file = std::fs::File::open("/dev/null").unwrap();
        assert!(RawMode::enter(file.as_raw_fd()).is_err());
    }
}
