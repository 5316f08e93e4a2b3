//! Issue 11: the tool under faults and bad input.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::TestDir;
use crate::support::{
    APPLEVZ, DEBUG_LOG, KillOnDrop, client, client_after_boot, finish, init_vm, signal, spawn_run,
    spawn_run_with, text, wait_for_log, wait_for_status,
};

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
    let mut run = KillOnDrop::spawn(
        Command::new(APPLEVZ)
            .args(["run", path, "--console", "file"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let mut stderr = std::io::BufReader::new(run.stderr.take().unwrap());
    let mut first = String::new();
    stderr.read_line(&mut first).unwrap();
    drop(stderr);
    drop(run.stdout.take());
    wait_for_status(&vm, "running");
    // Each state change is a line on run's stderr, into the closed pipe.
    assert_eq!(client_after_boot(&["pause", path]).0, 0);
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
    // A `status` client: it ends by itself, no guard needed.
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
    let run = spawn_run_with(
        &vm,
        "ignores_stop_request",
        &["--console", "file"],
        DEBUG_LOG,
        "running",
    );
    let began = Instant::now();
    let graceful = std::thread::spawn({
        let path = path.clone();
        move || client(&["stop", &path, "--timeout", "30"])
    });
    // The graceful stop is under way, for a guest that ignores it.
    wait_for_log(&vm, "carrying out Stop");
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
    let run = spawn_run_with(
        &vm,
        "ignores_stop_request",
        &["--console", "file"],
        DEBUG_LOG,
        "running",
    );
    let graceful = std::thread::spawn({
        let path = path.clone();
        move || client(&["stop", &path, "--timeout", "30"])
    });
    wait_for_log(&vm, "carrying out Stop");
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
    // Under umask 000 every file would be world-writable and the directory open to
    // all: the VM directory holds the guest's disk and memory, so it is the owner's.
    use std::os::unix::process::CommandExt;
    let with_umask = |args: &[&str]| {
        let mut command = Command::new(APPLEVZ);
        command.args(args).stdin(Stdio::null());
        // SAFETY: umask is async-signal-safe and only changes the child's mask.
        unsafe {
            command.pre_exec(|| {
                libc::umask(0);
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
    let run = KillOnDrop::spawn(
        with_umask(&["run", path, "--console", "file"])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_for_status(&vm, "running");
    let (code, _, stderr) = client_after_boot(&["suspend", path]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(finish(run, &vm).0, 13);
    let efi = dir.join("efi");
    let output = with_umask(&["init", efi.to_str().unwrap(), "--efi"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let mode = |path: &Path| {
        let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        format!("{mode:o}")
    };
    for directory in [&vm, &efi] {
        assert_eq!(mode(directory), "700", "{}", directory.display());
    }
    for file in [
        vm.join("disk.img"),
        vm.join("machine-identifier"),
        vm.join("console.log"),
        vm.join("vm.state"),
        vm.join("vm.toml"),
        vm.join("vmlinuz"),
        vm.join("run.lock"),
        efi.join("efi-vars"),
        efi.join("vm.toml"),
    ] {
        assert_eq!(mode(&file), "600", "{}", file.display());
    }
    // An existing directory init fills is made the owner's too.
    let empty = dir.join("empty");
    std::fs::create_dir(&empty).unwrap();
    std::fs::set_permissions(&empty, std::fs::Permissions::from_mode(0o777)).unwrap();
    let output = with_umask(&["init", empty.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert_eq!(mode(&empty), "700");
}
