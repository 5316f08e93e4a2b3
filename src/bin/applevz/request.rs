//! The control protocol's requests: what a client asks of `applevz run`, one line per
//! connection — `status`, `pause`, `resume`, `suspend`,
//! `stop <powerdown|halt|poweroff> [<timeout seconds>]` — and [`parse_request`], a
//! pure, total function from the line's bytes to a request or the reason it is not
//! one. This file depends on `std` and clap's `ValueEnum` only, so a fuzz target can
//! include it (`#[path]`) as it is.

use std::time::Duration;

use clap::ValueEnum;

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

/// The longest request line `run` reads, newline included; a longer one is refused.
pub(crate) const MAX_REQUEST_BYTES: usize = 256;

/// Parses one request line (its bytes, with or without the final newline): the
/// request, or the reason it is not one. Pure and total: any input gives one or the
/// other, never a panic, so it can be fuzzed.
pub(crate) fn parse_request(line: &[u8]) -> Result<Request, String> {
    if line.len() > MAX_REQUEST_BYTES {
        return Err(format!(
            "request too long (more than {MAX_REQUEST_BYTES} bytes)"
        ));
    }
    let line = std::str::from_utf8(line).map_err(|_| "the request is not UTF-8 text".to_owned())?;
    let unknown = || format!("unknown request {:?}", line.trim());
    let mut words = line.split_ascii_whitespace();
    let request = match words.next().ok_or_else(|| "empty request".to_owned())? {
        "status" => Request::Status,
        "pause" => Request::Pause,
        "resume" => Request::Resume,
        "suspend" => Request::Suspend,
        "stop" => {
            let policy = match words.next().ok_or_else(unknown)? {
                "powerdown" => Policy::Powerdown,
                "halt" => Policy::Halt,
                "poweroff" => Policy::Poweroff,
                _ => return Err(unknown()),
            };
            // Checked here too: the socket takes requests from any of the owner's
            // programs, not only from `applevz stop`.
            let timeout = match words.next() {
                Some(seconds) => Some(
                    seconds
                        .parse()
                        .ok()
                        .and_then(timeout_from_seconds)
                        .ok_or_else(|| {
                            format!("the timeout {seconds:?} is not a positive number of seconds")
                        })?,
                ),
                None => None,
            };
            Request::Stop { policy, timeout }
        }
        _ => return Err(unknown()),
    };
    match words.next() {
        None => Ok(request),
        Some(_) => Err(unknown()),
    }
}

/// A number of seconds as a timeout: positive, at least a nanosecond once rounded to
/// one (a shorter one would be sent as `0`, which is refused), and small enough for a
/// `Duration`. (A `Duration` too long for the clock is fine: the library treats it as
/// no limit.)
pub(crate) fn timeout_from_seconds(seconds: f64) -> Option<Duration> {
    if seconds > 0.0 {
        Duration::try_from_secs_f64(seconds)
            .ok()
            .filter(|timeout| !timeout.is_zero())
    } else {
        None
    }
}

/// Why `seconds` is not a timeout, for the message naming `option`: not positive,
/// below the one-nanosecond resolution, or too large.
pub(crate) fn timeout_refusal(option: &str, seconds: f64) -> String {
    if seconds > 0.0 && seconds < 1.0 {
        format!("{option}: {seconds} s is below the resolution of timeouts (one nanosecond)")
    } else if seconds > 0.0 {
        format!("{option}: {seconds} s is too large for a timeout")
    } else {
        format!("{option} needs a positive number of seconds, not {seconds}")
    }
}

impl Request {
    /// The request as the line a client sends (without the newline).
    pub(crate) fn to_line(self) -> String {
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

    /// What a long operation shows while it runs.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::Pause => "pausing",
            Self::Resume => "resuming",
            Self::Suspend => "suspending",
            Self::Stop { .. } => "stopping",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse() {
        assert_eq!(parse_request(b"status"), Ok(Request::Status));
        assert_eq!(parse_request(b"  pause \r"), Ok(Request::Pause));
        assert_eq!(
            parse_request(b"stop halt"),
            Ok(Request::Stop {
                policy: Policy::Halt,
                timeout: None
            })
        );
        assert_eq!(
            parse_request(b"stop powerdown 2.5"),
            Ok(Request::Stop {
                policy: Policy::Powerdown,
                timeout: Some(Duration::from_millis(2500))
            })
        );
        for request in [
            Request::Status,
            Request::Suspend,
            Request::Stop {
                policy: Policy::Poweroff,
                timeout: Some(Duration::from_secs(3)),
            },
        ] {
            assert_eq!(parse_request(request.to_line().as_bytes()), Ok(request));
        }
    }

    #[test]
    fn anything_else_is_an_error_never_a_panic() {
        for bad in [
            &b""[..],
            b"   ",
            b"reboot",
            b"status now",
            b"stop",
            b"stop gently",
            b"stop halt 0",
            // Positive, but under half a nanosecond: rounds to 0 (found by fuzzing).
            b"stop halt 1e-12",
            b"stop halt .0000000000000000000000016124519969550572730",
            b"stop halt -1",
            b"stop halt NaN",
            b"stop halt inf",
            b"stop halt 1e400",
            b"stop halt 1 2",
            b"\xff\xfe",
            b"status\0",
        ] {
            assert!(parse_request(bad).is_err(), "{bad:?}");
        }
        assert_eq!(timeout_from_seconds(1e-12), None);
        assert_eq!(timeout_from_seconds(4e-10), None);
        assert_eq!(timeout_from_seconds(5e-10), Some(Duration::from_nanos(1)));
        let long = vec![b's'; MAX_REQUEST_BYTES + 1];
        assert!(parse_request(&long).unwrap_err().contains("too long"));
    }
}
