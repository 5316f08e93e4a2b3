//! `applevz`: run, stop, suspend and resume a Linux VM from the terminal, on top of
//! the public applevz API only.

mod check;
mod control;
mod init;
mod run;
mod terminal;
mod vmdir;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Exit statuses. `run` ends with one per way the VM can end; every command uses the
/// error statuses.
pub(crate) mod exit {
    /// Success; for `run`: the guest shut down when asked.
    pub(crate) const OK: u8 = 0;
    /// An operation failed (the message says why).
    pub(crate) const ERROR: u8 = 1;
    /// Bad command-line usage (clap's own status).
    pub(crate) const USAGE: u8 = 2;
    /// No VM is running in that directory.
    pub(crate) const NOT_RUNNING: u8 = 3;
    /// The VM is in the wrong state for the command.
    pub(crate) const WRONG_STATE: u8 = 4;
    /// Not a VM directory, or its definition is invalid.
    pub(crate) const BAD_DIRECTORY: u8 = 5;
    /// `run`: the VM in that directory already runs.
    pub(crate) const ALREADY_RUNNING: u8 = 6;
    /// `init`: the directory already holds a VM.
    pub(crate) const EXISTS: u8 = 7;
    /// `run`: the guest powered itself off.
    pub(crate) const GUEST_POWERED_OFF: u8 = 10;
    /// `run`: the VM crashed (stopped with an error).
    pub(crate) const CRASHED: u8 = 11;
    /// `run`: the VM was forced off (Poweroff, Halt, or a graceful timeout).
    pub(crate) const FORCED_OFF: u8 = 12;
    /// `run`: the VM was suspended to its directory.
    pub(crate) const SUSPENDED: u8 = 13;
}

/// A command's failure: a message for stderr and an exit status.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) code: u8,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
    pub(crate) fn error(message: impl Into<String>) -> Self {
        Self::new(exit::ERROR, message)
    }
    pub(crate) fn bad_directory(message: impl Into<String>) -> Self {
        Self::new(exit::BAD_DIRECTORY, message)
    }
    pub(crate) fn already_running(message: impl Into<String>) -> Self {
        Self::new(exit::ALREADY_RUNNING, message)
    }
    pub(crate) fn not_running(message: impl Into<String>) -> Self {
        Self::new(exit::NOT_RUNNING, message)
    }
}

/// Library errors map to statuses by kind: a refused state is WRONG_STATE, a bad
/// definition BAD_DIRECTORY, the rest ERROR.
impl From<applevz::Error> for Failure {
    fn from(error: applevz::Error) -> Self {
        let code = match &error {
            applevz::Error::InvalidState { .. } => exit::WRONG_STATE,
            applevz::Error::Definition { .. } => exit::BAD_DIRECTORY,
            _ => exit::ERROR,
        };
        Self::new(code, error.to_string())
    }
}

#[derive(Parser)]
#[command(
    name = "applevz",
    version,
    about = "Run Linux virtual machines with Apple's Virtualization framework"
)]
#[command(
    after_help = "Exit statuses: 0 ok (run: the guest shut down when asked), 1 error, 2 usage, \
3 no VM running, 4 wrong state, 5 not a VM directory or bad vm.toml, 6 already running, \
7 VM exists; run only: 10 guest powered off, 11 crashed, 12 forced off, 13 suspended."
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

/// `--policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Policy {
    /// Ask the guest to power off (ACPI power button).
    Powerdown,
    /// Force the VM off; refused while another operation is under way; a suspended
    /// VM keeps its saved state.
    Halt,
    /// Force the VM off, after waiting for an operation under way to settle; a VM that
    /// was already suspended has its saved state discarded.
    Poweroff,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Check => check::check(),
        Command::Init(args) => init::init(&args),
        Command::Run(args) => run::run(&args),
        Command::Stop {
            dir,
            policy,
            timeout,
        } => control::stop(&dir, policy, timeout),
        Command::Suspend { dir } => control::simple(&dir, control::Request::Suspend),
        Command::Pause { dir } => control::simple(&dir, control::Request::Pause),
        Command::Resume { dir } => control::simple(&dir, control::Request::Resume),
        Command::Status { dir } => control::status(&dir),
    };
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            eprintln!("applevz: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}
