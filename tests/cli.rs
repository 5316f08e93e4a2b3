//! The `applevz` command end to end through the simulator: two processes (`run` in
//! one, `stop` / `suspend` / `status` … in another), every bad input with its message
//! and exit status, and the terminal restored after `run`.
#![cfg(applevz_simulator)]

mod common;
#[path = "../src/bin/applevz/pty.rs"]
mod pty;

use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{PATIENCE, TestDir};
use pty::pty;

const APPLEVZ: &str = env!("CARGO_BIN_EXE_applevz");

fn applevz(args: &[&str]) -> Output {
    Command::new(APPLEVZ)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run applevz")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs a client command; returns (exit status, stdout, stderr).
fn client(args: &[&str]) -> (i32, String, String) {
    let output = applevz(args);
    (
        output.status.code().unwrap_or(-1),
        text(&output.stdout),
        text(&output.stderr),
    )
}

/// A VM directory made by `applevz init`.
fn init_vm(name: &str) -> (TestDir, PathBuf) {
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
fn spawn_run(vm: &Path, guest: &str, extra: &[&str]) -> Child {
    spawn_run_until(vm, guest, extra, "running")
}

/// `applevz run DIR` in the background, once `status` reports `state`.
fn spawn_run_until(vm: &Path, guest: &str, extra: &[&str], state: &str) -> Child {
    let log = vm.join("run.stderr");
    let child = Command::new(APPLEVZ)
        .arg("run")
        .arg(vm)
        .args(extra)
        .env("APPLEVZ_SIM_GUEST", guest)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("spawn applevz run");
    wait_for_status(vm, state);
    if state == "running" {
        // The VM runs a moment before the boot (or restore) has finished: until then
        // another request is refused as "under way". `run` says when it has.
        let deadline = Instant::now() + PATIENCE;
        while !std::fs::read_to_string(vm.join("run.stderr"))
            .unwrap_or_default()
            .contains("Ctrl-C shuts the guest down")
        {
            assert!(Instant::now() < deadline, "the boot never finished");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    child
}

/// Asks `applevz status` until it says `expected` (another process is booting).
fn wait_for_status(vm: &Path, expected: &str) {
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
fn finish(mut child: Child, vm: &Path) -> (i32, String) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let stderr = std::fs::read_to_string(vm.join("run.stderr")).unwrap_or_default();
            return (status.code().unwrap_or(-1), stderr);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("applevz run did not end");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(child: &Child, signal: i32) {
    let pid = libc::pid_t::try_from(child.id()).expect("a process id fits in pid_t");
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
}

#[test]
fn check_says_it_runs_the_simulator() {
    let (code, stdout, _) = client(&["check"]);
    assert_eq!(code, 0);
    assert!(
        stdout
            .lines()
            .next()
            .unwrap()
            .contains("running the simulator"),
        "{stdout}"
    );
    for row in [
        "virtualization",
        "entitlement",
        "CPUs",
        "memory",
        "suspend (save/restore)",
        "Rosetta for Linux",
    ] {
        assert!(stdout.contains(row), "check shows {row}: {stdout}");
    }
}

#[test]
fn init_creates_a_vm_directory_and_never_overwrites_one() {
    let (_dir, vm) = init_vm("init");
    for file in ["vm.toml", "disk.img", "machine-identifier", "vmlinuz"] {
        assert!(vm.join(file).exists(), "{file}");
    }
    let disk = std::fs::metadata(vm.join("disk.img")).unwrap();
    assert_eq!(disk.len(), 64 << 20);
    assert!(disk.blocks() * 512 < disk.len(), "the disk image is sparse");
    let definition = std::fs::read(vm.join("vm.toml")).unwrap();
    let identity = std::fs::read(vm.join("machine-identifier")).unwrap();

    let (code, _, stderr) = client(&["init", vm.to_str().unwrap()]);
    assert_eq!(code, 7, "{stderr}");
    assert!(stderr.contains("already holds a VM"), "{stderr}");
    assert_eq!(
        std::fs::read(vm.join("vm.toml")).unwrap(),
        definition,
        "untouched"
    );
    assert_eq!(
        std::fs::read(vm.join("machine-identifier")).unwrap(),
        identity,
        "untouched"
    );

    // A directory with someone's disk image but no VM: refused, the image kept.
    let other = TestDir::new("init-disk");
    let image = other.file("disk.img", b"precious");
    let (code, _, stderr) = client(&["init", other.path().to_str().unwrap()]);
    assert_eq!(code, 7, "{stderr}");
    assert_eq!(std::fs::read(&image).unwrap(), b"precious");

    let (code, _, stderr) = client(&[
        "init",
        other.join("x").to_str().unwrap(),
        "--memory",
        "lots",
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--memory"), "{stderr}");
    assert!(!other.join("x").exists(), "nothing created on bad input");

    let (code, _, stderr) = client(&["init", other.join("efi").to_str().unwrap(), "--efi"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        other.join("efi/efi-vars").exists(),
        "EFI variable store created at init"
    );
}

#[test]
fn run_and_control_from_another_process() {
    let (_dir, vm) = init_vm("control");
    let path = vm.to_str().unwrap();
    let run = spawn_run(
        &vm,
        "boot_delay_ms=100,operation_delay_ms=50,stop_delay_ms=50",
        &[],
    );

    let socket = std::fs::metadata(vm.join("control.sock")).unwrap();
    assert_eq!(
        socket.permissions().mode() & 0o777,
        0o600,
        "only the owner can use the control channel"
    );

    let (code, stdout, stderr) = client(&["pause", path]);
    assert_eq!((code, stdout.as_str()), (0, "paused\n"), "{stderr}");
    assert_eq!(client(&["status", path]).1, "paused\n");
    let (code, stdout, stderr) = client(&["resume", path]);
    assert_eq!((code, stdout.as_str()), (0, "running\n"), "{stderr}");
    assert!(stderr.contains("resuming:"), "progress is shown: {stderr}");

    // A second `run` on the same directory.
    let (code, _, stderr) = client(&["run", path]);
    assert_eq!(code, 6, "{stderr}");
    assert!(stderr.contains("already running (pid "), "{stderr}");

    let (code, stdout, stderr) = client(&["suspend", path]);
    assert_eq!((code, stdout.as_str()), (0, "suspended\n"), "{stderr}");
    let (code, run_log) = finish(run, &vm);
    assert_eq!(code, 13, "run ends as suspended: {run_log}");
    assert!(vm.join("vm.state").exists());
    assert!(
        !vm.join("control.sock").exists(),
        "the control channel is gone"
    );

    // Nothing runs: status reads the directory, control commands say so.
    assert_eq!(
        client(&["status", path]).1,
        "suspended (not running; `applevz run` resumes it)\n"
    );
    let (code, _, stderr) = client(&["resume", path]);
    assert_eq!(code, 3, "{stderr}");
    assert!(
        stderr.contains("`applevz run") && stderr.contains("resumes it"),
        "{stderr}"
    );

    // run resumes the suspended VM; a graceful stop ends it with status 0.
    let run = spawn_run(&vm, "", &[]);
    assert!(
        !vm.join("vm.state").exists(),
        "the saved state was restored and removed"
    );
    let (code, stdout, stderr) = client(&["stop", path, "--policy", "powerdown", "--timeout", "5"]);
    assert_eq!((code, stdout.as_str()), (0, "stopped\n"), "{stderr}");
    let (code, run_log) = finish(run, &vm);
    assert_eq!(code, 0, "{run_log}");
    assert!(
        run_log.contains("resuming") && run_log.contains("the guest shut down"),
        "{run_log}"
    );
    assert_eq!(client(&["status", path]).1, "stopped (not running)\n");
    let (code, _, stderr) = client(&["stop", path]);
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("no VM is running"), "{stderr}");
}

#[test]
fn each_way_the_vm_ends_has_its_own_exit_status() {
    // The guest powers itself off.
    let (_dir, vm) = init_vm("ends");
    let run = spawn_run(&vm, "power_off_after_ms=300", &[]);
    let (code, log) = finish(run, &vm);
    assert_eq!(code, 10, "{log}");
    assert!(log.contains("powered itself off"), "{log}");

    // The VM crashes.
    let run = spawn_run(&vm, "crash_after_ms=300", &[]);
    let (code, log) = finish(run, &vm);
    assert_eq!(code, 11, "{log}");
    assert!(log.contains("crashed"), "{log}");

    // SIGTERM: a graceful shutdown.
    let run = spawn_run(&vm, "stop_delay_ms=50", &[]);
    signal(&run, libc::SIGTERM);
    let (code, log) = finish(run, &vm);
    assert_eq!(code, 0, "{log}");

    // Ctrl-C on a guest that ignores it, then Ctrl-C again: forced off at once.
    let run = spawn_run(&vm, "ignores_stop_request", &["--graceful-timeout", "60"]);
    signal(&run, libc::SIGINT);
    std::thread::sleep(Duration::from_millis(200));
    signal(&run, libc::SIGINT);
    let (code, log) = finish(run, &vm);
    assert_eq!(code, 12, "{log}");
    assert!(log.contains("forcing the VM off"), "{log}");

    // A graceful timeout escalates.
    let run = spawn_run(&vm, "ignores_stop_request", &["--graceful-timeout", "0.3"]);
    signal(&run, libc::SIGINT);
    let (code, log) = finish(run, &vm);
    assert_eq!(code, 12, "{log}");
}

#[test]
fn bad_inputs_have_clear_messages_and_statuses() {
    let missing = "/nonexistent/applevz-vm";
    for command in [
        vec!["run", missing],
        vec!["status", missing],
        vec!["stop", missing],
        vec!["pause", missing],
    ] {
        let (code, _, stderr) = client(&command);
        assert_eq!(code, 5, "{command:?}: {stderr}");
        assert!(stderr.contains("is not a directory"), "{stderr}");
    }
    let not_vm = TestDir::new("not-vm");
    let (code, _, stderr) = client(&["status", not_vm.path().to_str().unwrap()]);
    assert_eq!(code, 5);
    assert!(stderr.contains("not a VM directory"), "{stderr}");

    // A corrupt definition: the file, the key, the reason.
    let (_dir, vm) = init_vm("corrupt");
    let definition = vm.join("vm.toml");
    std::fs::write(
        &definition,
        "cpus = 2\nmemory = \"512MiB\"\ncolour = \"red\"\n[boot]\nkernel = \"vmlinuz\"\n",
    )
    .unwrap();
    let (code, _, stderr) = client(&["run", vm.to_str().unwrap()]);
    assert_eq!(code, 5, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}:3:1: colour: unknown field",
            definition.display()
        )),
        "{stderr}"
    );
    // A syntax error: where it is.
    std::fs::write(&definition, "cpus = 2\nmemory = \"512MiB\nkernel = 1\n").unwrap();
    let (code, _, stderr) = client(&["run", vm.to_str().unwrap()]);
    assert_eq!(code, 5, "{stderr}");
    assert!(
        stderr.contains(&format!("{}:2:", definition.display())),
        "{stderr}"
    );
    std::fs::write(
        &definition,
        "memory = \"512MiB\"\n[boot]\nkernel = \"gone\"\n",
    )
    .unwrap();
    let (code, _, stderr) = client(&["run", vm.to_str().unwrap()]);
    assert_eq!(code, 5, "{stderr}");
    assert!(
        stderr.contains("boot.kernel") && stderr.contains("does not exist"),
        "{stderr}"
    );

    // The wrong state for a command.
    let (_dir, vm) = init_vm("wrong-state");
    let path = vm.to_str().unwrap();
    let run = spawn_run(&vm, "", &[]);
    client(&["pause", path]);
    let (code, _, stderr) = client(&["suspend", path]);
    assert_eq!(code, 0, "a paused VM can be suspended: {stderr}");
    let (code, _) = finish(run, &vm);
    assert_eq!(code, 13);
    let run = spawn_run(&vm, "operation_delay_ms=2000", &[]);
    let pausing = std::thread::spawn({
        let path = path.to_owned();
        move || client(&["pause", &path])
    });
    wait_for_status(&vm, "pausing");
    let (code, _, stderr) = client(&["resume", path]);
    assert_eq!(code, 4, "{stderr}");
    assert!(
        stderr.contains("cannot resume while the VM is pausing"),
        "{stderr}"
    );
    assert_eq!(pausing.join().unwrap().0, 0);
    client(&["stop", path, "--policy", "poweroff"]);
    assert_eq!(finish(run, &vm).0, 12);

    let (code, _, stderr) = client(&["stop", path, "--timeout", "-1"]);
    assert_eq!(code, 2, "{stderr}");
}

fn local_flags(fd: &OwnedFd) -> libc::tcflag_t {
    use std::os::fd::AsRawFd;
    // SAFETY: plain data filled by tcgetattr on a valid descriptor.
    let mut settings: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let status = unsafe { libc::tcgetattr(fd.as_raw_fd(), &raw mut settings) };
    assert_eq!(status, 0);
    settings.c_lflag
}

#[test]
fn run_on_a_terminal_restores_it() {
    let (_dir, vm) = init_vm("terminal");
    let (master, slave) = pty();
    let before = local_flags(&slave);
    assert_ne!(before & libc::ICANON, 0);
    let mut run = Command::new(APPLEVZ)
        .arg("run")
        .arg(&vm)
        .arg("--console")
        .arg("terminal")
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave.try_clone().unwrap()))
        .spawn()
        .unwrap();
    wait_for_status(&vm, "running");
    assert_eq!(
        local_flags(&slave) & libc::ICANON,
        0,
        "raw while the console is attached"
    );
    let (code, _, stderr) = client(&["stop", vm.to_str().unwrap(), "--policy", "poweroff"]);
    assert_eq!(code, 0, "{stderr}");
    let status = run.wait().unwrap();
    assert_eq!(status.code(), Some(12));
    assert_eq!(local_flags(&slave), before, "the terminal is restored");

    // And after a failure while raw: a crash.
    let mut run = Command::new(APPLEVZ)
        .args(["run", vm.to_str().unwrap(), "--console", "terminal"])
        .env("APPLEVZ_SIM_GUEST", "crash_after_ms=300")
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave.try_clone().unwrap()))
        .spawn()
        .unwrap();
    assert_eq!(run.wait().unwrap().code(), Some(11));
    assert_eq!(local_flags(&slave), before, "restored after a crash too");
    drop(master);
}

// ---------------------------------------------------------------------------------
// Found in review.

#[test]
fn a_crash_is_reported_with_the_framework_reason() {
    let (_dir, vm) = init_vm("crash-reason");
    let run = spawn_run(&vm, "crash_after_ms=300", &[]);
    let (code, log) = finish(run, &vm);
    assert_eq!(code, 11, "{log}");
    // The simulator's description of the crash (the delegate's error follows the
    // state change to error).
    assert!(
        log.contains("the VM crashed: The virtual machine stopped unexpectedly."),
        "{log}"
    );
}

#[test]
fn timeouts_too_large_for_a_duration_are_usage_errors_not_panics() {
    let (_dir, vm) = init_vm("huge-timeouts");
    let path = vm.to_str().unwrap();
    let (code, _, stderr) = client(&["run", path, "--graceful-timeout", "1e30"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--graceful-timeout"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    let run = spawn_run(&vm, "", &[]);
    let (code, _, stderr) = client(&["stop", path, "--timeout", "1e30"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--timeout"), "{stderr}");
    assert_eq!(
        client(&["status", path]).1,
        "running\n",
        "the VM is untouched"
    );
    // A timeout that fits a Duration but not the clock (about 317 billion years):
    // no limit in practice, and the guest still shuts down when asked.
    let (code, stdout, stderr) = client(&["stop", path, "--timeout", "1e19"]);
    assert_eq!((code, stdout.as_str()), (0, "stopped\n"), "{stderr}");
    let (code, log) = finish(run, &vm);
    assert_eq!(code, 0, "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn init_never_overwrites_a_kernel_it_did_not_write() {
    let dir = TestDir::new("init-kernel");
    let kernel = dir.file("vmlinuz", b"someone's kernel");
    // Even when init fails afterwards (0 CPUs), the file it found stays as it was.
    for extra in [&["--cpus", "0"][..], &[][..]] {
        let mut args = vec!["init", dir.path().to_str().unwrap()];
        args.extend_from_slice(extra);
        let (code, _, stderr) = client(&args);
        assert_eq!(code, 7, "{args:?}: {stderr}");
        assert!(stderr.contains("vmlinuz"), "{stderr}");
        assert_eq!(std::fs::read(&kernel).unwrap(), b"someone's kernel");
        assert_eq!(dir.entries(), vec!["vmlinuz"], "nothing else was created");
    }
}

#[test]
fn init_with_a_path_that_is_not_utf8_is_a_usage_error() {
    use std::os::unix::ffi::OsStrExt;
    let dir = TestDir::new("init-utf8");
    let kernel = dir.path().join(std::ffi::OsStr::from_bytes(b"kernel-\xff"));
    std::fs::write(&kernel, b"kernel").unwrap();
    let vm = dir.join("vm");
    let output = Command::new(APPLEVZ)
        .arg("init")
        .arg(&vm)
        .arg("--kernel")
        .arg(&kernel)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--kernel") && stderr.contains("UTF-8"),
        "{stderr}"
    );
    assert!(!vm.exists(), "nothing was created");
}

#[test]
fn ctrl_c_twice_during_a_suspend_is_carried_out_before_run_ends() {
    // Ctrl-C twice while `applevz suspend` is under way: the forced shutdown (a
    // Poweroff, as documented) waits for the suspend to settle (the framework cancels
    // nothing), and a Poweroff that waited never discards the state just saved. `run`
    // must not end before it has, and its exit status tells the truth about vm.state.
    for round in 0..3 {
        let (_dir, vm) = init_vm("ctrl-c-suspend");
        let path = vm.to_str().unwrap().to_owned();
        let run = spawn_run(&vm, "operation_delay_ms=300", &[]);
        let suspending = std::thread::spawn(move || client(&["suspend", &path]));
        wait_for_status(&vm, "pausing");
        signal(&run, libc::SIGINT);
        std::thread::sleep(Duration::from_millis(50));
        signal(&run, libc::SIGINT);
        let (code, log) = finish(run, &vm);
        let suspend = suspending.join().unwrap();
        assert_eq!(
            suspend.0, 0,
            "round {round}: the suspend is not cancelled: {suspend:?}"
        );
        let saved = vm.join("vm.state").exists();
        assert!(
            code == 13 && saved,
            "round {round}: exit {code}, vm.state present: {saved}: {log}"
        );
        assert!(log.contains("forcing the VM off"), "{log}");
    }
}

#[test]
fn ctrl_c_twice_during_a_boot_forces_the_vm_off_once_it_has_booted() {
    // The framework cannot stop a VM that is starting, and no operation cancels
    // another: the forced shutdown waits for the boot to settle, then forces it off.
    let (_dir, vm) = init_vm("boot-poweroff");
    let run = spawn_run_until(&vm, "boot_delay_ms=1500", &[], "starting");
    signal(&run, libc::SIGINT); // held: the guest cannot hear it before it runs
    std::thread::sleep(Duration::from_millis(100));
    signal(&run, libc::SIGINT); // forced: waits for the boot
    let (code, log) = finish(run, &vm);
    assert_eq!(code, 12, "{log}");
    assert!(log.contains("forcing the VM off"), "{log}");
    assert_eq!(
        client(&["status", vm.to_str().unwrap()]).1,
        "stopped (not running)\n"
    );
}

// ---------------------------------------------------------------------------------
// Issue 11: the tool under faults and bad input.

#[test]
fn sighup_shuts_the_guest_down_like_sigterm() {
    // The terminal closed or the SSH session dropped: a graceful powerdown, and the
    // control socket removed, instead of dying at once (exit 129).
    let (_dir, vm) = init_vm("sighup");
    let run = spawn_run(&vm, "stop_delay_ms=50", &["--console", "file"]);
    signal(&run, libc::SIGHUP);
    let (code, log) = finish(run, &vm);
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("the guest shut down"), "{log}");
    assert!(!vm.join("control.sock").exists(), "control.sock is removed");
}

#[test]
fn run_keeps_the_guest_when_stdout_and_stderr_are_closed_pipes() {
    // `applevz run DIR 2>&1 | head -1`: once `head` has gone, every line `run` writes
    // meets a closed pipe. It must neither panic nor be killed by SIGPIPE.
    use std::io::BufRead;
    let (_dir, vm) = init_vm("closed-pipe");
    let path = vm.to_str().unwrap();
    let mut run = Command::new(APPLEVZ)
        .args(["run", path, "--console", "file"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(run.stderr.take().unwrap());
    let mut first = String::new();
    stderr.read_line(&mut first).unwrap();
    drop(stderr);
    drop(run.stdout.take());
    wait_for_status(&vm, "running");
    // Each state change is a line on run's stderr, into the closed pipe.
    assert_eq!(client(&["pause", path]).0, 0);
    assert_eq!(client(&["resume", path]).0, 0);
    assert_eq!(
        client(&["status", path]).1,
        "running\n",
        "the guest keeps running"
    );
    assert!(run.try_wait().unwrap().is_none(), "run is still there");
    let (code, stdout, stderr) = client(&["stop", path, "--timeout", "5"]);
    assert_eq!((code, stdout.as_str()), (0, "stopped\n"), "{stderr}");
    assert_eq!(run.wait().unwrap().code(), Some(0));
}

#[test]
fn a_client_whose_stdout_is_closed_does_not_panic() {
    let (_dir, vm) = init_vm("client-closed-pipe");
    let mut child = Command::new(APPLEVZ)
        .args(["status", vm.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = text(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(output.status.code(), Some(0), "{stderr}");
}

#[test]
fn a_forced_stop_cuts_a_waiting_graceful_stop_short() {
    let (_dir, vm) = init_vm("forced-during-graceful");
    let path = vm.to_str().unwrap().to_owned();
    let run = spawn_run(&vm, "ignores_stop_request", &["--console", "file"]);
    let began = Instant::now();
    let graceful = std::thread::spawn({
        let path = path.clone();
        move || client(&["stop", &path, "--timeout", "30"])
    });
    // The graceful stop is waiting for a guest that ignores it.
    std::thread::sleep(Duration::from_millis(500));
    let (code, stdout, stderr) = client(&["stop", &path, "--policy", "poweroff"]);
    assert_eq!((code, stdout.as_str()), (0, "stopped\n"), "{stderr}");
    let (code, stdout, stderr) = graceful.join().unwrap();
    assert_eq!((code, stdout.as_str()), (0, "stopped\n"), "{stderr}");
    assert!(
        began.elapsed() < Duration::from_secs(15),
        "the graceful wait was cut short"
    );
    let (code, log) = finish(run, &vm);
    assert_eq!(code, 12, "forced off: {log}");

    // Halt too; a second powerdown is refused while the first waits.
    let run = spawn_run(&vm, "ignores_stop_request", &["--console", "file"]);
    let graceful = std::thread::spawn({
        let path = path.clone();
        move || client(&["stop", &path, "--timeout", "30"])
    });
    std::thread::sleep(Duration::from_millis(500));
    let (code, _, stderr) = client(&["stop", &path, "--timeout", "30"]);
    assert_eq!(code, 4, "{stderr}");
    let (code, stdout, stderr) = client(&["stop", &path, "--policy", "halt"]);
    assert_eq!((code, stdout.as_str()), (0, "stopped\n"), "{stderr}");
    assert_eq!(graceful.join().unwrap().0, 0);
    assert_eq!(finish(run, &vm).0, 12);
}

#[test]
fn init_flag_errors_name_the_flag_and_exit_2() {
    let dir = TestDir::new("init-flags");
    let vm = dir.join("vm");
    let missing = dir.join("no-kernel");
    for flags in [
        &["--cpus", "0"][..],
        &["--cpus", "100000"],
        &["--memory", "1MiB"],
        &["--memory", "1000000GiB"],
        &["--memory", "0.3MiB"],
        &["--disk-size", "0GiB"],
        &["--disk-size", "lots"],
        &["--kernel", missing.to_str().unwrap()],
    ] {
        let mut args = vec!["init", vm.to_str().unwrap()];
        args.extend_from_slice(flags);
        let (code, _, stderr) = client(&args);
        assert_eq!(code, 2, "{flags:?}: {stderr}");
        assert!(
            stderr.contains(flags[0]),
            "{flags:?} names the flag: {stderr}"
        );
        assert!(
            !stderr.contains("vm.toml"),
            "{flags:?} blames the flag: {stderr}"
        );
        assert!(!vm.exists(), "{flags:?}: nothing was created");
    }
    // A fraction that comes to a whole number of MiB is a size like any other.
    let (code, stdout, stderr) = client(&[
        "init",
        vm.to_str().unwrap(),
        "--memory",
        "1.5GiB",
        "--disk-size",
        "0.5GiB",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("1536MiB"), "{stdout}");
    let definition = std::fs::read_to_string(vm.join("vm.toml")).unwrap();
    assert!(definition.contains("memory = \"1536MiB\""), "{definition}");
    assert_eq!(
        std::fs::metadata(vm.join("disk.img")).unwrap().len(),
        512 << 20
    );
}

#[test]
fn init_refuses_a_directory_that_is_not_empty_and_touches_nothing() {
    let dir = TestDir::new("init-not-empty");
    dir.file("notes.txt", b"mine");
    let (code, _, stderr) = client(&["init", dir.path().to_str().unwrap()]);
    assert_eq!(code, 7, "{stderr}");
    assert!(
        stderr.contains("not empty") && stderr.contains("notes.txt"),
        "{stderr}"
    );
    assert_eq!(dir.entries(), vec!["notes.txt"], "nothing was created");
    assert_eq!(std::fs::read(dir.join("notes.txt")).unwrap(), b"mine");

    // An empty directory is filled.
    let empty = TestDir::new("init-empty");
    let (code, _, stderr) = client(&["init", empty.path().to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(empty.join("vm.toml").exists());
}

#[test]
fn files_holding_the_guest_are_owner_only_whatever_the_umask() {
    use std::os::unix::process::CommandExt;
    let with_umask = |args: &[&str]| {
        let mut command = Command::new(APPLEVZ);
        command.args(args).stdin(Stdio::null());
        // SAFETY: umask is async-signal-safe and only changes the child's mask.
        unsafe {
            command.pre_exec(|| {
                libc::umask(0o022);
                Ok(())
            });
        }
        command
    };
    let dir = TestDir::new("owner-only");
    let vm = dir.join("vm");
    let path = vm.to_str().unwrap();
    let output = with_umask(&["init", path, "--memory", "512MiB", "--disk-size", "64MiB"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let run = with_umask(&["run", path, "--console", "file"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_status(&vm, "running");
    let (code, _, stderr) = client(&["suspend", path]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(finish(run, &vm).0, 13);
    let efi = dir.join("efi");
    let output = with_umask(&["init", efi.to_str().unwrap(), "--efi"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    for file in [
        vm.join("disk.img"),
        vm.join("machine-identifier"),
        vm.join("console.log"),
        vm.join("vm.state"),
        efi.join("efi-vars"),
    ] {
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(format!("{mode:o}"), "600", "{}", file.display());
    }
}

/// A line of `/proc/<pid>/status` (Linux), e.g. `Threads` or `VmRSS`, as a number.
#[cfg(target_os = "linux")]
fn proc_status(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .and_then(|value| value.split_whitespace().next())
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {status}"))
}

/// Sends raw bytes on the control socket and returns the reply (everything `run`
/// writes before it closes the connection).
fn raw_request(vm: &Path, bytes: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(vm.join("control.sock")).unwrap();
    let _ = stream.write_all(bytes);
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    reply
}

#[cfg(target_os = "linux")]
#[test]
fn the_control_socket_bounds_what_a_client_can_make_run_hold() {
    use std::io::{Read, Write};
    let (_dir, vm) = init_vm("control-bounds");
    let path = vm.to_str().unwrap();
    let run = spawn_run(&vm, "", &["--console", "file"]);
    let pid = run.id();

    // Malformed requests get an error line, not a silent close.
    let reply = raw_request(&vm, b"\xff\xfe status\n");
    assert!(reply.starts_with("error 2 "), "not UTF-8: {reply:?}");
    let reply = raw_request(&vm, b"reboot\n");
    assert!(reply.starts_with("error 2 "), "unknown: {reply:?}");

    // A huge line without a newline: refused once it is too long for a request,
    // without `run` holding it in memory.
    let rss_before = proc_status(pid, "VmRSS");
    let mut stream = std::os::unix::net::UnixStream::connect(vm.join("control.sock")).unwrap();
    let chunk = vec![b'x'; 1 << 20];
    let mut sent = 0usize;
    while sent < 300 << 20 {
        match stream.write(&chunk) {
            Ok(n) => sent += n,
            Err(_) => break, // `run` answered and closed the connection
        }
    }
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    assert!(
        reply.starts_with("error 2 ") && reply.contains("too long"),
        "{reply:?} after {sent} bytes"
    );
    let rss_after = proc_status(pid, "VmRSS");
    assert!(
        rss_after < rss_before + 16 * 1024,
        "run grew from {rss_before} kB to {rss_after} kB"
    );

    // Many idle connections: a bounded number of threads; the rest are refused at
    // once with a reply; and once the idle ones time out, requests work again.
    let threads_before = proc_status(pid, "Threads");
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(std::os::unix::net::UnixStream::connect(vm.join("control.sock")).unwrap());
    }
    std::thread::sleep(Duration::from_millis(500));
    let threads = proc_status(pid, "Threads");
    assert!(
        threads < threads_before + 40,
        "{threads} threads for 300 idle connections (was {threads_before})"
    );
    let mut refused = String::new();
    let mut last = idle.pop().unwrap();
    last.set_read_timeout(Some(PATIENCE)).unwrap();
    let _ = last.read_to_string(&mut refused);
    assert!(refused.starts_with("error "), "{refused:?}");
    // The idle ones are closed by `run` after its timeout, each with a reply.
    let mut first = idle.remove(0);
    first.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut timed_out = String::new();
    let _ = first.read_to_string(&mut timed_out);
    assert!(timed_out.starts_with("error 2 "), "{timed_out:?}");
    drop(idle);
    wait_for_status(&vm, "running");
    assert!(proc_status(pid, "Threads") <= threads_before + 4);

    let (code, stdout, stderr) = client(&["stop", path, "--policy", "poweroff"]);
    assert_eq!((code, stdout.as_str()), (0, "stopped\n"), "{stderr}");
    assert_eq!(finish(run, &vm).0, 12);
}

#[test]
fn a_vm_directory_deeper_than_a_socket_address_works() {
    // sockaddr_un.sun_path holds 108 bytes on Linux (104 on macOS): every directory
    // `init` accepts must work for run, status, pause and stop all the same.
    let dir = TestDir::new("deep");
    let vm = dir
        .path()
        .join("d".repeat(50))
        .join("e".repeat(50))
        .join("vm");
    assert!(vm.join("control.sock").as_os_str().len() > 108);
    let path = vm.to_str().unwrap();
    let (code, _, stderr) = client(&["init", path, "--memory", "512MiB", "--disk-size", "8MiB"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(client(&["status", path]).1, "stopped (not running)\n");
    let run = spawn_run(&vm, "", &["--console", "file"]);
    let socket = std::fs::metadata(vm.join("control.sock")).unwrap();
    assert_eq!(socket.permissions().mode() & 0o777, 0o600);
    let (code, stdout, stderr) = client(&["pause", path]);
    assert_eq!((code, stdout.as_str()), (0, "paused\n"), "{stderr}");
    let (code, stdout, stderr) = client(&["stop", path, "--policy", "poweroff"]);
    assert_eq!((code, stdout.as_str()), (0, "stopped\n"), "{stderr}");
    assert_eq!(finish(run, &vm).0, 12);
    assert!(!vm.join("control.sock").exists());
}

/// Suspends the VM `run` runs in `vm` (with the given guest script) and waits for
/// `run` to end.
fn suspend_vm(vm: &Path) {
    let run = spawn_run(vm, "", &["--console", "file"]);
    let (code, _, stderr) = client(&["suspend", vm.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(finish(run, vm).0, 13);
    assert!(vm.join("vm.state").exists());
}

#[test]
fn a_saved_state_that_cannot_be_restored_has_a_way_out_in_the_tool() {
    let (_dir, vm) = init_vm("unrestorable");
    let path = vm.to_str().unwrap();
    let saved = vm.join("vm.state");
    for damage in ["garbage", "definition edited"] {
        suspend_vm(&vm);
        let definition = std::fs::read_to_string(vm.join("vm.toml")).unwrap();
        match damage {
            "garbage" => std::fs::write(&saved, b"garbage").unwrap(),
            _ => std::fs::write(
                vm.join("vm.toml"),
                definition.replace("cpus = 2", "cpus = 1"),
            )
            .unwrap(),
        }
        let (code, _, stderr) = client(&["run", path, "--console", "file"]);
        assert_eq!(code, 1, "{damage}: {stderr}");
        assert!(
            stderr.contains(&format!("`applevz stop {path} --policy poweroff`")),
            "{damage}: the way out is a command of the tool: {stderr}"
        );
        assert!(
            !stderr.contains("shutdown(") && !stderr.contains("start()"),
            "{damage}: no library call in the message: {stderr}"
        );
        assert!(saved.exists(), "{damage}: the saved state is kept");

        // Not running, suspended: a powerdown cannot reach a guest that does not run.
        let (code, _, stderr) = client(&["stop", path]);
        assert_eq!(code, 4, "{damage}: {stderr}");
        assert!(stderr.contains("--policy poweroff"), "{stderr}");
        assert!(saved.exists());

        // The way out: the saved state is discarded, after saying what goes.
        let size = std::fs::metadata(&saved).unwrap().len();
        let (code, stdout, stderr) = client(&["stop", path, "--policy", "poweroff"]);
        assert_eq!(
            (code, stdout.as_str()),
            (0, "stopped\n"),
            "{damage}: {stderr}"
        );
        assert!(
            stderr.contains(&saved.display().to_string())
                && stderr.contains(&format!("{size} bytes")),
            "{damage}: says what it deletes: {stderr}"
        );
        assert!(!saved.exists(), "{damage}: discarded");
        assert_eq!(client(&["status", path]).1, "stopped (not running)\n");

        // And the VM boots afresh.
        let run = spawn_run(&vm, "", &["--console", "file"]);
        client(&["stop", path, "--policy", "poweroff"]);
        assert_eq!(finish(run, &vm).0, 12);
        std::fs::write(vm.join("vm.toml"), definition).unwrap();
    }
    // Nothing to discard: no VM runs, as before.
    let (code, _, stderr) = client(&["stop", path, "--policy", "poweroff"]);
    assert_eq!(code, 3, "{stderr}");
}

#[test]
fn a_suspend_cut_short_by_kill_9_is_reported_not_ignored() {
    // `run` killed while it saves the guest: the partial saved state it leaves may be
    // the only copy of the guest (on a Mac, the size of its memory). The next `status`
    // and `run` must say where it is, how big and how old, and what to do; `run` must
    // not boot afresh over it (that would change the disk under it).
    let (_dir, vm) = init_vm("kill-during-suspend");
    let path = vm.to_str().unwrap().to_owned();
    let run = spawn_run(&vm, "operation_delay_ms=3000", &["--console", "file"]);
    let suspending = std::thread::spawn({
        let path = path.clone();
        move || client(&["suspend", &path])
    });
    wait_for_status(&vm, "saving");
    signal(&run, libc::SIGKILL);
    let (code, _) = finish(run, &vm);
    assert_eq!(code, -1, "killed");
    let _ = suspending.join();
    let leftover = std::fs::read_dir(&vm)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| path.to_string_lossy().contains(".partial-"))
        .expect("the interrupted suspend left its file");

    let (code, stdout, stderr) = client(&["status", &path]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("stopped"), "{stdout}");
    let leftover_name = leftover.file_name().unwrap().to_string_lossy().into_owned();
    for needle in [leftover_name.as_str(), "bytes", "written", "interrupted"] {
        assert!(stderr.contains(needle), "status reports {needle}: {stderr}");
    }

    let (code, _, stderr) = client(&["run", &path, "--console", "file"]);
    assert_eq!(code, 4, "run refuses to boot over it: {stderr}");
    for needle in [leftover_name.as_str(), "bytes", "written", "mv ", "rm -r "] {
        assert!(stderr.contains(needle), "run says {needle}: {stderr}");
    }
    assert!(leftover.exists(), "never deleted");

    // Choosing to boot afresh: the leftover goes, run boots.
    std::fs::remove_dir_all(&leftover).unwrap();
    let run = spawn_run(&vm, "", &["--console", "file"]);
    client(&["stop", &path, "--policy", "poweroff"]);
    assert_eq!(finish(run, &vm).0, 12);
}

#[test]
fn check_on_the_simulator_claims_no_host_feature() {
    // On Linux the rows describe what the simulator emulates, not this host: no
    // "Rosetta installed" or "suspend available" as if it were a Mac.
    let (code, stdout, _) = client(&["check"]);
    assert_eq!(code, 0);
    for row in [
        "virtualization",
        "suspend (save/restore)",
        "Rosetta for Linux",
    ] {
        let line = stdout
            .lines()
            .find(|line| line.starts_with(row))
            .unwrap_or_else(|| panic!("no {row} row: {stdout}"));
        assert!(line.contains("simulat"), "{line}");
    }
}

#[test]
fn rust_log_debug_shows_the_definition_the_lock_the_socket_and_requests() {
    let (_dir, vm) = init_vm("logging");
    let path = vm.to_str().unwrap();
    let log = vm.join("run.stderr");
    let mut run = Command::new(APPLEVZ)
        .args(["run", path, "--console", "file"])
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_for_status(&vm, "running");
    let status = Command::new(APPLEVZ)
        .args(["status", path])
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    let client_log = text(&status.stderr);
    for needle in ["control.sock", "status", "ok running"] {
        assert!(
            client_log.contains(needle),
            "client logs {needle}: {client_log}"
        );
    }
    let (code, _, stderr) = client(&["stop", path, "--policy", "poweroff"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(run.wait().unwrap().code(), Some(12));
    let run_log = std::fs::read_to_string(&log).unwrap();
    for needle in ["vm.toml", "run.lock", "control.sock", "request", "reply"] {
        assert!(run_log.contains(needle), "run logs {needle}: {run_log}");
    }
}

// ---------------------------------------------------------------------------------
// The fault matrix (README, "The tool under faults"): what the faults not tested
// above do.

#[test]
fn kill_9_of_run_while_the_guest_runs_leaves_a_directory_the_next_run_takes() {
    let (_dir, vm) = init_vm("kill-9-running");
    let path = vm.to_str().unwrap();
    let run = spawn_run(&vm, "", &["--console", "file"]);
    signal(&run, libc::SIGKILL);
    assert_eq!(finish(run, &vm).0, -1);
    assert!(vm.join("control.sock").exists(), "stale: nobody removed it");
    // The stale socket refuses connections: nothing runs.
    let (code, stdout, stderr) = client(&["status", path]);
    assert_eq!(
        (code, stdout.as_str()),
        (0, "stopped (not running)\n"),
        "{stderr}"
    );
    let (code, _, stderr) = client(&["pause", path]);
    assert_eq!(code, 3, "{stderr}");
    // The lock died with the process: the next run takes the directory.
    let run = spawn_run(&vm, "", &["--console", "file"]);
    client(&["stop", path, "--policy", "poweroff"]);
    assert_eq!(finish(run, &vm).0, 12);
}

#[test]
fn a_client_killed_mid_request_does_not_stop_the_operation() {
    let (_dir, vm) = init_vm("client-killed");
    let path = vm.to_str().unwrap();
    // A suspend: carried out all the same, its answer written into nothing.
    let run = spawn_run(&vm, "operation_delay_ms=400", &["--console", "file"]);
    let mut suspend = Command::new(APPLEVZ)
        .args(["suspend", path])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_status(&vm, "pausing");
    suspend.kill().unwrap();
    suspend.wait().unwrap();
    let (code, log) = finish(run, &vm);
    assert_eq!(code, 13, "{log}");
    assert!(vm.join("vm.state").exists());
    // A graceful stop waiting for a guest that ignores it: still forced off at its
    // timeout.
    let run = spawn_run(&vm, "ignores_stop_request", &["--console", "file"]);
    let mut stop = Command::new(APPLEVZ)
        .args(["stop", path, "--timeout", "0.5"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    stop.kill().unwrap();
    stop.wait().unwrap();
    let (code, log) = finish(run, &vm);
    assert_eq!(code, 12, "{log}");
}

/// A small tmpfs mounted for a test, unmounted on drop (Linux, as root); `None`
/// (with the reason printed) where mounting is not allowed.
#[cfg(target_os = "linux")]
struct Tmpfs(PathBuf);

#[cfg(target_os = "linux")]
impl Tmpfs {
    /// Mounts a tmpfs at `at`; panics with the reason when it cannot (the tests that
    /// use it are ignored by default and run as root by scripts/test.sh).
    fn mount(at: &Path, size: &str) -> Self {
        std::fs::create_dir_all(at).unwrap();
        let output = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .output();
        match output {
            Ok(output) if output.status.success() => Self(at.to_owned()),
            Ok(output) => panic!(
                "cannot mount a tmpfs here (needs root): {}",
                text(&output.stderr)
            ),
            Err(error) => panic!("no mount command: {error}"),
        }
    }

    /// Makes `dir` (in this file system) read-only from now on, through a read-only
    /// bind mount of it onto itself (files already open for writing stay so, as when
    /// a directory's permissions change under a running process); unmounted when the
    /// tmpfs is.
    #[expect(
        clippy::unused_self,
        reason = "only for a mounted tmpfs, which it stays tied to"
    )]
    fn read_only(&self, dir: &Path) {
        for args in [&["--bind"][..], &["-o", "remount,bind,ro"]] {
            let status = Command::new("mount")
                .args(args)
                .arg(dir)
                .arg(dir)
                .status()
                .unwrap();
            assert!(status.success(), "mount {args:?}");
        }
    }

    /// Fills the file system until a write fails.
    fn fill(&self) {
        use std::io::Write;
        let mut filler = std::fs::File::create(self.0.join("filler")).unwrap();
        let block = vec![0xa5u8; 64 << 10];
        while filler.write_all(&block).is_ok() {}
        let mut small = std::fs::File::create(self.0.join("filler-2")).unwrap();
        while small
            .write_all(&[0xa5])
            .and_then(|()| small.sync_all())
            .is_ok()
        {}
    }
}

#[cfg(target_os = "linux")]
impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Read-only bind mounts inside first, then the tmpfs.
        let _ = Command::new("umount")
            .arg("-R")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[cfg(target_os = "linux")]
#[test]
#[ignore = "mounts a tmpfs: needs root; scripts/test.sh runs it as root (cargo test --test cli -- --ignored)"]
fn a_full_disk_fails_a_suspend_cleanly_and_the_guest_keeps_running() {
    let dir = TestDir::new("full-disk");
    let tmpfs = Tmpfs::mount(&dir.join("mnt"), "2m");
    let vm = tmpfs.0.join("vm");
    let path = vm.to_str().unwrap();
    let (code, _, stderr) = client(&["init", path, "--memory", "512MiB", "--disk-size", "1MiB"]);
    assert_eq!(code, 0, "{stderr}");
    let run = spawn_run(&vm, "", &["--console", "file"]);
    tmpfs.fill();

    let (code, _, stderr) = client(&["suspend", path]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("No space left on device"), "{stderr}");
    assert_eq!(
        client(&["status", path]).1,
        "running\n",
        "the guest keeps running"
    );
    let names: Vec<String> = std::fs::read_dir(&vm)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names.iter().any(|name| name.contains(".partial-")),
        "{names:?}"
    );
    assert!(!vm.join("vm.state").exists());
    let (code, stdout, stderr) = client(&["stop", path, "--policy", "poweroff"]);
    assert_eq!((code, stdout.as_str()), (0, "stopped\n"), "{stderr}");
    assert_eq!(finish(run, &vm).0, 12);

    // init on the full disk fails and leaves nothing behind.
    let other = tmpfs.0.join("other");
    let (code, _, stderr) = client(&["init", other.to_str().unwrap()]);
    assert_eq!(code, 1, "{stderr}");
    assert!(!other.exists(), "init removed what it created");
}

#[cfg(target_os = "linux")]
#[test]
#[ignore = "mounts a tmpfs: needs root; scripts/test.sh runs it as root (cargo test --test cli -- --ignored)"]
fn a_read_only_directory_fails_what_must_write_and_the_guest_keeps_running() {
    let dir = TestDir::new("read-only");
    let tmpfs = Tmpfs::mount(&dir.join("mnt"), "4m");
    let vm = tmpfs.0.join("vm");
    let path = vm.to_str().unwrap();
    let (code, _, stderr) = client(&["init", path, "--memory", "512MiB", "--disk-size", "1MiB"]);
    assert_eq!(code, 0, "{stderr}");
    let run = spawn_run(&vm, "", &["--console", "file"]);
    tmpfs.read_only(&vm);

    let (code, _, stderr) = client(&["suspend", path]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("Read-only file system"), "{stderr}");
    assert_eq!(
        client(&["status", path]).1,
        "running\n",
        "the guest keeps running"
    );
    let (code, stdout, stderr) = client(&["stop", path, "--policy", "poweroff"]);
    assert_eq!((code, stdout.as_str()), (0, "stopped\n"), "{stderr}");
    assert_eq!(finish(run, &vm).0, 12);

    // run cannot take its lock there: it says so and touches nothing.
    let (code, _, stderr) = client(&["run", path, "--console", "file"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("run.lock") && stderr.contains("Read-only file system"),
        "{stderr}"
    );
}
