//! The terminal: raw mode for the guest's console (restored on every exit path) and
//! progress lines for long operations.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
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
pub(crate) struct Progress {
    inner: Arc<Inner>,
}

struct Inner {
    label: String,
    began: Instant,
    state: Mutex<String>,
    done: AtomicBool,
    in_place: bool,
}

impl Inner {
    fn render(&self) {
        let state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let elapsed = self.began.elapsed().as_secs_f64();
        let mut stderr = std::io::stderr().lock();
        if self.in_place {
            let _ = write!(stderr, "\r\x1b[K{}: {state} ({elapsed:.1} s)", self.label);
        } else {
            let _ = writeln!(stderr, "{}: {state} ({elapsed:.1} s)", self.label);
        }
        let _ = stderr.flush();
    }
}

impl Progress {
    pub(crate) fn new(label: &str) -> Self {
        let inner = Arc::new(Inner {
            label: label.to_owned(),
            began: Instant::now(),
            state: Mutex::new("…".to_owned()),
            done: AtomicBool::new(false),
            in_place: is_terminal(2),
        });
        if inner.in_place {
            let ticker = Arc::clone(&inner);
            // Redraws the elapsed time; the state itself arrives through `state`.
            std::thread::spawn(move || {
                while !ticker.done.load(Ordering::SeqCst) {
                    ticker.render();
                    std::thread::sleep(Duration::from_millis(100));
                }
            });
        }
        Self { inner }
    }

    /// A new state; rendered when it differs from the last one.
    pub(crate) fn state(&self, state: &str) {
        let mut current = self
            .inner
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *current == state {
            return;
        }
        state.clone_into(&mut current);
        drop(current);
        self.inner.render();
    }

    /// Ends with a final state line.
    pub(crate) fn finish(self, state: &str) {
        self.inner.done.store(true, Ordering::SeqCst);
        self.state(state);
        if self.inner.in_place {
            self.inner.render();
            errln!("");
        }
    }

    /// Ends without a final state (an error follows).
    pub(crate) fn abandon(self) {
        self.inner.done.store(true, Ordering::SeqCst);
        if self.inner.in_place {
            errln!("");
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.inner.done.store(true, Ordering::SeqCst);
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
