//! What the command-line tests share: running `applevz`, the VM directory it makes,
//! a background `run` killed when its test ends (passing or not), and waits for
//! events with a deadline.

use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::{PATIENCE, TestDir};

pub const APPLEVZ: &str = env!("CARGO_BIN_EXE_applevz");

pub fn applevz(args: &[&str]) -> Output {
    Command::new(APPLEVZ)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run applevz")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs a client command; returns (exit status, stdout, stderr).
pub fn client(args: &[&str]) -> (i32, String, String) {
    let output = applevz(args);
    (
        output.status.code().unwrap_or(-1),
        text(&output.stdout),
        text(&output.stderr),
    )
}

/// Runs a client command once `run` has finished its boot: `status` says running a
/// moment before, and until then `run` refuses other requests as "under way". For a
/// `run` whose stderr a test cannot read (where `spawn_run` waits for its line).
pub fn client_after_boot(args: &[&str]) -> (i32, String, String) {
    let mut result = None;
    wait_until(&format!("{args:?} past the boot"), || {
        let (code, stdout, stderr) = client(args);
        let booting = code == 4 && stderr.contains("the boot is under way");
        result = Some((code, stdout, stderr));
        !booting
    });
    result.unwrap()
}

/// A child process that is killed and reaped when dropped, unless it has ended: a
/// test that panics (a failed assertion) unwinds through it, so no `applevz run` it
/// started outlives it.
pub struct KillOnDrop(Child);

impl KillOnDrop {
    pub fn spawn(command: &mut Command) -> Self {
        Self(command.spawn().expect("spawn applevz"))
    }
}

impl Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A VM directory made by `applevz init`.
pub fn init_vm(name: &str) -> (TestDir, PathBuf) {
    let dir = TestDir::new(name);
    let vm = dir.join("vm");
    let (code, _, stderr) = client(&[
        "init",
        vm.to_str().unwrap(),
        "--memory",
        "512MiB",
        "--disk-size",
        "64MiB",
    ]);
    assert_eq!(code, 0, "init: {stderr}");
    (dir, vm)
}

/// `applevz run DIR` in the background with the simulated guest scripted by `guest`.
pub fn spawn_run(vm: &Path, guest: &str, extra: &[&str]) -> KillOnDrop {
    spawn_run_until(vm, guest, extra, "running")
}

/// `applevz run DIR` in the background, once `status` reports `state`.
pub fn spawn_run_until(vm: &Path, guest: &str, extra: &[&str], state: &str) -> KillOnDrop {
    spawn_run_with(vm, guest, extra, &[], state)
}

/// `applevz run DIR` in the background with more environment (`RUST_LOG`, say), once
/// `status` reports `state`. Its stderr goes to `DIR/run.stderr` (see [`wait_for_log`]).
pub fn spawn_run_with(
    vm: &Path,
    guest: &str,
    extra: &[&str],
    env: &[(&str, &str)],
    state: &str,
) -> KillOnDrop {
    let log = vm.join("run.stderr");
    let child = KillOnDrop::spawn(
        Command::new(APPLEVZ)
            .arg("run")
            .arg(vm)
            .args(extra)
            .env("APPLEVZ_SIM_GUEST", guest)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap()),
    );
    wait_for_status(vm, state);
    if state == "running" {
        // The VM runs a moment before the boot (or restore) has finished: until then
        // another request is refused as "under way". `run` says when it has.
        wait_for_log(vm, "Ctrl-C shuts the guest down");
    }
    child
}

/// The environment under which `run` logs each control request it carries out
/// (`carrying out Stop …`), an event a test can wait for.
pub const DEBUG_LOG: &[(&str, &str)] = &[("RUST_LOG", "applevz=debug")];

/// Polls `condition` until it holds, for up to [`PATIENCE`]; panics with `what`.
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !condition() {
        assert!(Instant::now() < deadline, "{what}: not within {PATIENCE:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The stderr of the `run` started by [`spawn_run`] so far.
pub fn run_log(vm: &Path) -> String {
    std::fs::read_to_string(vm.join("run.stderr")).unwrap_or_default()
}

/// Waits until `run` has printed `needle` on its stderr.
pub fn wait_for_log(vm: &Path, needle: &str) {
    wait_until(&format!("run printing {needle:?}"), || {
        run_log(vm).contains(needle)
    });
}

/// Asks `applevz status` until it says `expected` (another process is booting).
pub fn wait_for_status(vm: &Path, expected: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (_, stdout, _) = client(&["status", vm.to_str().unwrap()]);
        if stdout.trim() == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "status never became {expected:?} (last: {stdout:?})"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for `run` to end; returns its exit status and stderr.
pub fn finish(mut child: KillOnDrop, vm: &Path) -> (i32, String) {
    let mut status = None;
    wait_until("applevz run ending", || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    (status.unwrap().code().unwrap_or(-1), run_log(vm))
}

pub fn signal(child: &Child, signal: i32) {
    let pid = libc::pid_t::try_from(child.id()).expect("a process id fits in pid_t");
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
}

/// Whether a process with this id exists (a zombie counts: it has not been reaped).
pub fn process_exists(pid: u32) -> bool {
    let pid = libc::pid_t::try_from(pid).expect("a process id fits in pid_t");
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}
