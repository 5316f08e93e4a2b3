//! `applevz`: run, stop, suspend and resume a Linux VM from the terminal, on top of
//! the public applevz API only.

// Output goes through `out` (outln!, errln!), which never panics on a closed pipe.
#![deny(clippy::print_stdout, clippy::print_stderr)]

mod check;
mod control;
mod failure;
mod init;
mod out;
#[cfg(test)]
mod pty;
mod request;
mod run;
mod socket_path;
mod terminal;
mod vmdir;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use out::errln;
use request::{Policy, Request};

#[derive(Parser)]
#[command(
    name = "applevz",
    version,
    about = "Run Linux virtual machines with Apple's Virtualization framework"
)]
#[command(
    after_help = "Exit statuses: 0 ok (run: the guest shut down when asked), 1 error, 2 usage, \
3 no VM running, 4 wrong state, 5 not a VM directory or bad vm.toml, 6 already running, \
7 VM exists, directory not empty or not a directory; run only: 10 guest powered off, 11 crashed, 12 forced off, 13 suspended."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// What this machine can do: virtualization, entitlement, limits, suspend, Rosetta.
    Check,
    /// Create a VM directory: vm.toml, a sparse disk, a machine identity.
    Init(init::InitArgs),
    /// Run the VM in the foreground (resuming it when it is suspended).
    Run(run::RunArgs),
    /// Stop the VM that `applevz run` runs in DIR.
    Stop {
        /// The VM directory.
        dir: PathBuf,
        /// How to stop it.
        #[arg(long, value_enum, default_value_t = Policy::Powerdown)]
        policy: Policy,
        /// Seconds to wait for a graceful powerdown before forcing the VM off.
        #[arg(long)]
        timeout: Option<f64>,
    },
    /// Suspend the running VM to DIR/vm.state; `applevz run DIR` resumes it.
    Suspend {
        /// The VM directory.
        dir: PathBuf,
    },
    /// Pause the running VM.
    Pause {
        /// The VM directory.
        dir: PathBuf,
    },
    /// Resume the paused VM.
    Resume {
        /// The VM directory.
        dir: PathBuf,
    },
    /// The VM's state (also when nothing runs: stopped or suspended).
    Status {
        /// The VM directory.
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Check => Ok(check::check()),
        Command::Init(args) => init::init(&args),
        Command::Run(args) => run::run(&args),
        Command::Stop {
            dir,
            policy,
            timeout,
        } => control::stop(&dir, policy, timeout),
        Command::Suspend { dir } => control::simple(&dir, Request::Suspend),
        Command::Pause { dir } => control::simple(&dir, Request::Pause),
        Command::Resume { dir } => control::simple(&dir, Request::Resume),
        Command::Status { dir } => control::status(&dir),
    };
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            errln!("applevz: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

/// Log records (warnings by default, more with `RUST_LOG`) go to stderr in the tool's
/// own form, `applevz: warning: …`, among its other lines; debug and trace records
/// also name the module they come from.
fn init_logging() {
    use std::io::Write;
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format(|out, record| {
            let level = match record.level() {
                log::Level::Error => "error",
                log::Level::Warn => "warning",
                log::Level::Info => "info",
                log::Level::Debug => "debug",
                log::Level::Trace => "trace",
            };
            if record.level() <= log::Level::Info {
                writeln!(out, "applevz: {level}: {}", record.args())
            } else {
                writeln!(
                    out,
                    "applevz: {level} ({}): {}",
                    record.target(),
                    record.args()
                )
            }
        })
        .init();
}
