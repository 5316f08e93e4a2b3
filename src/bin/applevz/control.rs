//! The control channel between `applevz run` and the other commands: a Unix socket in
//! the VM directory that only its owner can use (mode 0600), one request per
//! connection.
//!
//! Request: one line — `status`, `pause`, `resume`, `suspend`,
//! `stop <powerdown|halt|poweroff> [<timeout seconds>]` — of at most
//! [`MAX_REQUEST_BYTES`](crate::request::MAX_REQUEST_BYTES), sent within [`REQUEST_TIMEOUT`] of connecting.
//! Reply: any number of `progress <state>` lines while the operation runs, then
//! `ok <state>` or `error <exit status> <message>`. Every connection gets a reply,
//! also a malformed, oversized or late request (`error 2 …`) and one beyond the
//! [`MAX_CONNECTIONS`] served at once (`error 1 …`).
//!
//! The socket is the owner's only, but any of the owner's programs may misbehave on
//! it: `run` never holds more than one request's bytes per connection, nor more than
//! [`MAX_CONNECTIONS`] threads for them. The requests and their parser are in
//! `request.rs`.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use applevz::{ShutdownPolicy, VirtualMachine, VmDefinition, VmState};

use crate::failure::{self, Failure, exit};
use crate::out::{errln, outln};
use crate::request::{
    MAX_REQUEST_BYTES, Policy, Request, parse_request, timeout_from_seconds, timeout_refusal,
};
use crate::socket_path::with_short_path;
use crate::terminal::Progress;
use crate::vmdir::{VmDir, describe_file};

/// How long `run` waits for a connection's request line before refusing it.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// [`REQUEST_TIMEOUT`], or the milliseconds in `APPLEVZ_CONTROL_REQUEST_TIMEOUT_MS`: a
/// test that fills every slot with idle clients sets it long, so that on a loaded
/// machine no slot frees up by itself before the test's own client comes.
fn request_timeout() -> Duration {
    static TIMEOUT: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *TIMEOUT.get_or_init(|| {
        std::env::var("APPLEVZ_CONTROL_REQUEST_TIMEOUT_MS")
            .ok()
            .and_then(|ms| ms.parse().ok())
            .map_or(REQUEST_TIMEOUT, Duration::from_millis)
    })
}
/// How many connections `run` serves at once (one thread each); more are refused.
pub(crate) const MAX_CONNECTIONS: usize = 32;
/// How long `run` waits to write a line to a client that does not read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends `request` to the VM running in `dir`, showing progress on stderr; returns the
/// final state.
fn send(dir: &VmDir, request: Request) -> Result<String, Failure> {
    let path = dir.control_socket();
    log::debug!("connecting to {}", path.display());
    let stream = with_short_path(&path, |path| UnixStream::connect(path)).map_err(|error| {
        match error.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                Failure::not_running(format!(
                    "no VM is running in {} (start it with `applevz run {}`)",
                    dir.path.display(),
                    dir.path.display()
                ))
            }
            std::io::ErrorKind::PermissionDenied => Failure::error(format!(
                "{} belongs to another user: only the VM's owner can control it",
                path.display()
            )),
            _ => Failure::error(format!("cannot reach {}: {error}", path.display())),
        }
    })?;
    log::debug!("request: {}", request.to_line());
    // `run` may have answered and closed before reading the request (too many
    // connections at once): the write then fails, but its answer is there to read.
    let unsent = writeln!(&stream, "{}", request.to_line()).err();
    if let Some(error) = &unsent {
        log::debug!("request not sent ({error}); reading what run answered");
    }
    let channel_failure = |error: std::io::Error| {
        Failure::error(format!(
            "control channel: {}",
            unsent.as_ref().unwrap_or(&error)
        ))
    };
    let progress = (request != Request::Status).then(|| Progress::new(request.label()));
    // Returns once `run` has let go of the connection: it frees the connection's slot
    // before it closes it, so a command that returned holds no slot any more (a
    // script that fills the socket right after one gets exactly the slots it expects).
    let _closed = ClosedOnReturn(&stream);
    for line in BufReader::new(&stream).lines() {
        let line = line.map_err(channel_failure)?;
        log::debug!("reply: {line}");
        let (kind, rest) = line.split_once(' ').unwrap_or((line.as_str(), ""));
        match kind {
            "progress" => {
                if let Some(progress) = &progress {
                    progress.state(rest);
                }
            }
            "ok" => {
                if let Some(progress) = progress {
                    progress.finish(rest);
                }
                return Ok(rest.to_owned());
            }
            "error" => {
                if let Some(progress) = progress {
                    progress.abandon();
                }
                let (code, message) = rest.split_once(' ').unwrap_or(("1", rest));
                return Err(Failure::new(code.parse().unwrap_or(exit::ERROR), message));
            }
            _ => {
                return Err(Failure::error(format!(
                    "unexpected reply from the VM: {line:?}"
                )));
            }
        }
    }
    Err(match unsent {
        Some(error) => Failure::error(format!("control channel: {error}")),
        None => Failure::error("the VM process closed the control channel without an answer"),
    })
}

/// Waits, when dropped, until the other end closes the stream (at most
/// [`WRITE_TIMEOUT`]); what is still to read is discarded.
struct ClosedOnReturn<'a>(&'a UnixStream);

impl Drop for ClosedOnReturn<'_> {
    fn drop(&mut self) {
        if self.0.set_read_timeout(Some(WRITE_TIMEOUT)).is_err() {
            return;
        }
        let mut rest = [0u8; 256];
        while matches!(self.0.read(&mut rest), Ok(n) if n > 0) {}
    }
}

pub(crate) fn stop(dir: &Path, policy: Policy, timeout: Option<f64>) -> Result<u8, Failure> {
    let timeout = timeout
        .map(|seconds| {
            timeout_from_seconds(seconds)
                .ok_or_else(|| Failure::new(exit::USAGE, timeout_refusal("--timeout", seconds)))
        })
        .transpose()?;
    let dir = VmDir::open(dir)?;
    match send(&dir, Request::Stop { policy, timeout }) {
        Ok(state) => {
            outln!("{state}");
            Ok(exit::OK)
        }
        Err(failure) if failure.code == exit::NOT_RUNNING => {
            stop_not_running(&dir, policy, failure)
        }
        Err(failure) => Err(failure),
    }
}

/// `stop` when no `run` serves `dir`. A stopped VM has nothing to stop. A suspended
/// one has no guest running either, but a saved state: a powerdown cannot reach it, a
/// halt keeps it, a poweroff discards it (the library's `shutdown(Poweroff)` of a
/// suspended VM), after saying what it deletes. This is the way out of a saved state
/// that cannot be restored.
fn stop_not_running(dir: &VmDir, policy: Policy, not_running: Failure) -> Result<u8, Failure> {
    // Held until the end: no `run` can start on the directory meanwhile.
    let _lock = dir.lock()?;
    let config = VmDefinition::load_config(&dir.definition())?;
    let vm = VirtualMachine::new(&config).map_err(|error| failure::in_dir(error, &dir.path))?;
    let Some(saved) = vm
        .saved_state_file()
        .filter(|_| vm.state() == VmState::Suspended)
    else {
        return Err(not_running);
    };
    let d = dir.path.display();
    match policy {
        Policy::Powerdown => Err(Failure::new(
            exit::WRONG_STATE,
            format!(
                "the VM in {d} is suspended, not running: a powerdown cannot reach its guest. \
                 `applevz run {d}` resumes it; `applevz stop {d} --policy poweroff` discards \
                 its saved state"
            ),
        )),
        Policy::Halt => Err(Failure::not_running(format!(
            "the VM in {d} is suspended, not running, and a halt keeps its saved state: \
             nothing to do (`applevz stop {d} --policy poweroff` discards it)"
        ))),
        Policy::Poweroff => {
            log::debug!("discarding the saved state {}", saved.display());
            errln!(
                "applevz: discarding the saved state of the suspended VM, {}: the suspended guest is lost",
                describe_file(&saved)
            );
            vm.shutdown(ShutdownPolicy::Poweroff)
                .map_err(|error| failure::in_dir(error, &dir.path))?;
            outln!("{}", vm.state());
            Ok(exit::OK)
        }
    }
}

pub(crate) fn simple(dir: &Path, request: Request) -> Result<u8, Failure> {
    let dir = VmDir::open(dir)?;
    match send(&dir, request) {
        Ok(state) => {
            outln!("{state}");
            Ok(exit::OK)
        }
        Err(failure) if failure.code == exit::NOT_RUNNING && dir.saved_state().exists() => {
            let hint = match request {
                Request::Resume => format!("`applevz run {}` resumes it", dir.path.display()),
                _ => "nothing to do".into(),
            };
            Err(Failure::not_running(format!(
                "the VM in {} is suspended, not running: {hint}",
                dir.path.display()
            )))
        }
        Err(failure) => Err(failure),
    }
}

/// Prints the running VM's state, or what the directory says when nothing runs.
pub(crate) fn status(dir: &Path) -> Result<u8, Failure> {
    let dir = VmDir::open(dir)?;
    match send(&dir, Request::Status) {
        Ok(state) => outln!("{state}"),
        Err(failure) if failure.code == exit::NOT_RUNNING => {
            log::debug!(
                "no VM runs in {}: reading the directory",
                dir.path.display()
            );
            if let Some(message) = dir.interrupted_suspends(false) {
                errln!("applevz: {message}");
            }
            if dir.saved_state().exists() {
                outln!("suspended (not running; `applevz run` resumes it)");
            } else {
                outln!("stopped (not running)");
            }
        }
        Err(failure) => return Err(failure),
    }
    Ok(exit::OK)
}

/// Carries out one request on the running VM; `progress` receives state names.
pub(crate) type Handler =
    dyn Fn(Request, &mut dyn FnMut(&str)) -> Result<String, Failure> + Send + Sync;

/// Called after each reply has been written (so `run` never exits between carrying
/// out a request and answering it).
pub(crate) type Replied = dyn Fn(Request) + Send + Sync;

/// The server side, owned by `applevz run`. When dropped (`run` is ending) it removes
/// its socket, answers the connections still queued (`error 3`: the VM no longer
/// runs), and gives the requests being served a moment to finish their answers, so
/// no request that reached `run` goes unanswered.
pub(crate) struct ControlServer {
    path: PathBuf,
    /// Bound, not yet served.
    listener: Option<UnixListener>,
    /// A second handle on the listening socket, to answer what is queued at the end.
    queued: Option<UnixListener>,
    /// Connections being served (each on its thread), at most [`MAX_CONNECTIONS`].
    active: Arc<AtomicUsize>,
    /// Set when `run` ends: from then on every connection gets the "ended" answer.
    ending: Arc<AtomicBool>,
}

impl ControlServer {
    /// Binds the socket (the caller holds the run lock, so an existing socket is a
    /// stale one) with mode 0600 from the start; requests wait until `serve`.
    pub(crate) fn bind(dir: &VmDir) -> Result<Self, Failure> {
        let path = dir.control_socket();
        let _ = std::fs::remove_file(&path);
        // SAFETY: umask only changes this process's file-creation mask, set back right
        // after the bind, so the socket never exists with looser permissions. `run`
        // binds before it starts any thread, so no other file is created meanwhile.
        let previous = unsafe { libc::umask(0o077) };
        let bound = with_short_path(&path, |path| UnixListener::bind(path));
        // SAFETY: as above.
        unsafe { libc::umask(previous) };
        let listener = bound.map_err(|error| {
            Failure::error(format!("cannot create {}: {error}", path.display()))
        })?;
        log::debug!("control socket bound at {}", path.display());
        let server = Self {
            path,
            queued: listener.try_clone().ok(),
            listener: Some(listener),
            active: Arc::new(AtomicUsize::new(0)),
            ending: Arc::new(AtomicBool::new(false)),
        };
        std::fs::set_permissions(&server.path, std::fs::Permissions::from_mode(0o600)).map_err(
            |error| {
                Failure::error(format!(
                    "cannot restrict {}: {error}",
                    server.path.display()
                ))
            },
        )?;
        Ok(server)
    }

    /// Serves requests on a thread from now on (until the process ends): each
    /// connection on a thread of its own, up to [`MAX_CONNECTIONS`] at once; beyond
    /// that a connection is answered with an error at once and closed.
    pub(crate) fn serve(&mut self, handler: Arc<Handler>, replied: Arc<Replied>) {
        let Some(listener) = self.listener.take() else {
            return;
        };
        let active = Arc::clone(&self.active);
        let ending = Arc::clone(&self.ending);
        let path = self.path.clone();
        std::thread::spawn(move || {
            for connection in listener.incoming() {
                let connection = match connection {
                    Ok(connection) => connection,
                    Err(_) if ending.load(Ordering::SeqCst) => break,
                    Err(error) => {
                        // Out of descriptors, say: not a reason to spin.
                        log::warn!("control socket: accept: {error}");
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                };
                let _ = connection.set_write_timeout(Some(WRITE_TIMEOUT));
                let slot = Slot::take(&active);
                log::trace!("control socket: a connection ({} served)", slot.count());
                if ending.load(Ordering::SeqCst) {
                    answer_ended(&connection, &path);
                    continue;
                }
                if slot.count() > MAX_CONNECTIONS {
                    log::debug!(
                        "control socket: refused a connection: {MAX_CONNECTIONS} served already"
                    );
                    refuse(
                        &connection,
                        &format!("too many connections at once ({MAX_CONNECTIONS}); try again"),
                    );
                    continue;
                }
                let handler = Arc::clone(&handler);
                let replied = Arc::clone(&replied);
                let spawned = std::thread::Builder::new()
                    .name("applevz-control".into())
                    .spawn(move || {
                        let _slot = slot;
                        serve(&connection, &*handler, &*replied);
                    });
                if let Err(error) = spawned {
                    log::warn!("control socket: no thread for a connection: {error}");
                }
            }
        });
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        // No new connection can reach `run` from here on.
        let _ = std::fs::remove_file(&self.path);
        self.ending.store(true, Ordering::SeqCst);
        // Those already queued are answered, not dropped unanswered at exit.
        if let Some(queued) = &self.queued {
            if queued.set_nonblocking(true).is_ok() {
                while let Ok((connection, _)) = queued.accept() {
                    let _ = connection.set_nonblocking(false);
                    let _ = connection.set_write_timeout(Some(WRITE_TIMEOUT));
                    answer_ended(&connection, &self.path);
                }
            }
        }
        // Requests being served finish their answers (a moment, bounded; at least a
        // few milliseconds, for a connection the serving thread has just accepted).
        let began = Instant::now();
        while (self.active.load(Ordering::SeqCst) > 0 || began.elapsed() < ENDING_GRACE_MIN)
            && began.elapsed() < ENDING_GRACE_MAX
        {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// How long an ending `run` waits at least, and at most, for answers being written.
const ENDING_GRACE_MIN: Duration = Duration::from_millis(20);
const ENDING_GRACE_MAX: Duration = Duration::from_secs(2);

/// Answers a connection that reached `run` as it ends.
fn answer_ended(mut connection: &UnixStream, socket: &Path) {
    let dir = socket.parent().unwrap_or(socket).display();
    let _ = writeln!(
        connection,
        "error {} the VM in {dir} is no longer running: `applevz run` has ended",
        exit::NOT_RUNNING
    );
}

/// A connection being served, counted until it is dropped.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(active: &Arc<AtomicUsize>) -> Self {
        active.fetch_add(1, Ordering::SeqCst);
        Self(Arc::clone(active))
    }

    /// Connections being served, this one included.
    fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Answers a connection that is not served with an error line.
fn refuse(mut connection: &UnixStream, message: &str) {
    let _ = writeln!(connection, "error {} {message}", exit::ERROR);
}

/// Reads one request line: at most [`MAX_REQUEST_BYTES`], within [`REQUEST_TIMEOUT`]
/// of connecting (however slowly it trickles in). Bytes after the newline are
/// ignored; a line cut short by the client closing its end counts as sent.
fn read_request(mut connection: &UnixStream) -> Result<Vec<u8>, String> {
    let timeout = request_timeout();
    let deadline = Instant::now() + timeout;
    let mut line = Vec::new();
    let mut buffer = [0u8; MAX_REQUEST_BYTES + 1];
    loop {
        let remaining = deadline
            .checked_duration_since(Instant::now())
            .filter(|remaining| !remaining.is_zero())
            .ok_or_else(|| format!("no request within {} s", timeout.as_secs()))?;
        connection
            .set_read_timeout(Some(remaining))
            .map_err(|error| error.to_string())?;
        let room = MAX_REQUEST_BYTES + 1 - line.len();
        match connection.read(&mut buffer[..room]) {
            Ok(0) => return Ok(line),
            Ok(read) => {
                let read = &buffer[..read];
                if let Some(end) = read.iter().position(|&byte| byte == b'\n') {
                    line.extend_from_slice(&read[..end]);
                    return Ok(line);
                }
                line.extend_from_slice(read);
                if line.len() > MAX_REQUEST_BYTES {
                    return Err(format!(
                        "request too long (more than {MAX_REQUEST_BYTES} bytes)"
                    ));
                }
            }
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(format!("no request within {} s", timeout.as_secs()));
            }
            Err(error) => return Err(error.to_string()),
        }
    }
}

fn serve(connection: &UnixStream, handler: &Handler, replied: &Replied) {
    let mut writer = connection;
    let request = match read_request(connection).and_then(|line| parse_request(&line)) {
        Ok(request) => request,
        Err(reason) => {
            log::debug!("control socket: refused a request: {reason}");
            let _ = writeln!(writer, "error {} {reason}", exit::USAGE);
            return;
        }
    };
    log::debug!("control socket: request {request:?}");
    let mut progress = |state: &str| {
        let _ = writeln!(writer, "progress {state}");
    };
    let reply = match handler(request, &mut progress) {
        Ok(state) => format!("ok {state}"),
        Err(failure) => format!(
            "error {} {}",
            failure.code,
            failure.message.replace('\n', " ")
        ),
    };
    log::debug!("control socket: reply {reply:?}");
    let _ = writeln!(writer, "{reply}");
    let _ = writer.flush();
    replied(request);
}
