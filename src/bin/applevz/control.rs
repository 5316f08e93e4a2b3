//! The control channel between `applevz run` and the other commands: a Unix socket in
//! the VM directory that only its owner can use (mode 0600), one request per
//! connection.
//!
//! Request: one line — `status`, `pause`, `resume`, `suspend`,
//! `stop <powerdown|halt|poweroff> [<timeout seconds>]`.
//! Reply: any number of `progress <state>` lines while the operation runs, then
//! `ok <state>` or `error <exit status> <message>`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::ValueEnum;

use crate::failure::{Failure, exit};
use crate::out::outln;
use crate::terminal::Progress;
use crate::vmdir::VmDir;

/// `--policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Policy {
    /// Ask the guest to power off (ACPI power button).
    Powerdown,
    /// Force the VM off; cuts a graceful stop's wait short, refused while any other
    /// operation is under way; a suspended VM keeps its saved state.
    Halt,
    /// Force the VM off; cuts a graceful stop's wait short, waits for any other
    /// operation under way to settle; a VM that was already suspended has its saved
    /// state discarded.
    Poweroff,
}

/// What a client asks of the running VM.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Request {
    Status,
    Pause,
    Resume,
    Suspend,
    Stop {
        policy: Policy,
        timeout: Option<Duration>,
    },
}

/// A number of seconds as a timeout: positive and small enough for a `Duration`.
/// (A `Duration` too long for the clock is fine: the library treats it as no limit.)
pub(crate) fn timeout_from_seconds(seconds: f64) -> Option<Duration> {
    if seconds > 0.0 {
        Duration::try_from_secs_f64(seconds).ok()
    } else {
        None
    }
}

impl Request {
    fn to_line(self) -> String {
        match self {
            Self::Status => "status".into(),
            Self::Pause => "pause".into(),
            Self::Resume => "resume".into(),
            Self::Suspend => "suspend".into(),
            Self::Stop { policy, timeout } => {
                let policy = match policy {
                    Policy::Powerdown => "powerdown",
                    Policy::Halt => "halt",
                    Policy::Poweroff => "poweroff",
                };
                match timeout {
                    Some(timeout) => format!("stop {policy} {}", timeout.as_secs_f64()),
                    None => format!("stop {policy}"),
                }
            }
        }
    }

    fn parse(line: &str) -> Option<Self> {
        let mut words = line.split_whitespace();
        let request = match words.next()? {
            "status" => Self::Status,
            "pause" => Self::Pause,
            "resume" => Self::Resume,
            "suspend" => Self::Suspend,
            "stop" => {
                let policy = match words.next()? {
                    "powerdown" => Policy::Powerdown,
                    "halt" => Policy::Halt,
                    "poweroff" => Policy::Poweroff,
                    _ => return None,
                };
                // Checked here too: the socket takes requests from any of the
                // owner's programs, not only from `applevz stop`.
                let timeout = match words.next() {
                    Some(seconds) => Some(timeout_from_seconds(seconds.parse().ok()?)?),
                    None => None,
                };
                Self::Stop { policy, timeout }
            }
            _ => return None,
        };
        words.next().is_none().then_some(request)
    }

    /// The command's verb, for messages.
    pub(crate) fn verb(self) -> &'static str {
        match self {
            Self::Status => "report the status",
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Suspend => "suspend",
            Self::Stop { .. } => "stop",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::Pause => "pausing",
            Self::Resume => "resuming",
            Self::Suspend => "suspending",
            Self::Stop { .. } => "stopping",
        }
    }
}

/// Sends `request` to the VM running in `dir`, showing progress on stderr; returns the
/// final state.
fn send(dir: &VmDir, request: Request) -> Result<String, Failure> {
    let path = dir.control_socket();
    let stream = UnixStream::connect(&path).map_err(|error| match error.kind() {
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
    })?;
    writeln!(&stream, "{}", request.to_line())
        .map_err(|error| Failure::error(format!("control channel: {error}")))?;
    let progress = (request != Request::Status).then(|| Progress::new(request.label()));
    for line in BufReader::new(&stream).lines() {
        let line = line.map_err(|error| Failure::error(format!("control channel: {error}")))?;
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
    Err(Failure::error(
        "the VM process closed the control channel without an answer",
    ))
}

pub(crate) fn stop(dir: &Path, policy: Policy, timeout: Option<f64>) -> Result<u8, Failure> {
    let timeout = timeout
        .map(|seconds| {
            timeout_from_seconds(seconds).ok_or_else(|| {
                Failure::new(
                    exit::USAGE,
                    format!("--timeout needs a positive number of seconds, not {seconds}"),
                )
            })
        })
        .transpose()?;
    let state = send(&VmDir::open(dir)?, Request::Stop { policy, timeout })?;
    outln!("{state}");
    Ok(exit::OK)
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

/// The server side, owned by `applevz run`; removes its socket when dropped.
pub(crate) struct ControlServer {
    path: PathBuf,
    /// Bound, not yet served.
    listener: Option<UnixListener>,
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
        let bound = UnixListener::bind(&path);
        // SAFETY: as above.
        unsafe { libc::umask(previous) };
        let listener = bound.map_err(|error| {
            Failure::error(format!("cannot create {}: {error}", path.display()))
        })?;
        let server = Self {
            path,
            listener: Some(listener),
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

    /// Serves requests on a thread from now on (until the process ends).
    pub(crate) fn serve(&mut self, handler: Arc<Handler>, replied: Arc<Replied>) {
        let Some(listener) = self.listener.take() else {
            return;
        };
        std::thread::spawn(move || {
            for connection in listener.incoming().flatten() {
                let handler = Arc::clone(&handler);
                let replied = Arc::clone(&replied);
                std::thread::spawn(move || serve(connection, &*handler, &*replied));
            }
        });
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve(connection: UnixStream, handler: &Handler, replied: &Replied) {
    let mut line = String::new();
    if BufReader::new(&connection).read_line(&mut line).is_err() {
        return;
    }
    let mut writer = &connection;
    let Some(request) = Request::parse(&line) else {
        let _ = writeln!(
            writer,
            "error {} unknown request {:?}",
            exit::USAGE,
            line.trim()
        );
        return;
    };
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
    let _ = writeln!(writer, "{reply}");
    let _ = writer.flush();
    replied(request);
}
