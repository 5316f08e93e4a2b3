//! Every line the tool writes to stdout or stderr goes through here.
//!
//! `println!` and `eprintln!` panic when the write fails: a closed pipe
//! (`applevz run DIR 2>&1 | head -1`), a terminal that hung up. For `run` that panic
//! would take the guest down with it, so these helpers drop what cannot be written
//! and carry on. (SIGPIPE cannot kill the process either: Rust programs start with it
//! ignored, so a write to a closed pipe fails with EPIPE instead.) `main.rs` denies
//! `clippy::print_stdout` and `clippy::print_stderr`, so nothing bypasses them.

use std::io::Write;

/// Writes one line to stdout, ignoring any failure.
pub(crate) fn stdout_line(line: std::fmt::Arguments<'_>) {
    write_line(&mut std::io::stdout().lock(), line);
}

/// Writes one line to stderr, ignoring any failure.
pub(crate) fn stderr_line(line: std::fmt::Arguments<'_>) {
    write_line(&mut std::io::stderr().lock(), line);
}

fn write_line(out: &mut dyn Write, line: std::fmt::Arguments<'_>) {
    let _ = out
        .write_fmt(line)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
}

/// `println!` that never panics: see the module documentation.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::out::stdout_line(format_args!($($arg)*))
    };
}

/// `eprintln!` that never panics: see the module documentation.
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::out::stderr_line(format_args!($($arg)*))
    };
}

pub(crate) use {errln, outln};

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that fails like a closed pipe.
    struct ClosedPipe;

    impl Write for ClosedPipe {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
    }

    #[test]
    fn a_broken_pipe_is_ignored() {
        write_line(&mut ClosedPipe, format_args!("lost {}", 1));
    }

    #[test]
    fn a_line_ends_with_a_newline() {
        let mut buffer = Vec::new();
        write_line(&mut buffer, format_args!("state {}", "running"));
        assert_eq!(buffer, b"state running\n");
    }
}
