//! Found in review: crashes, huge timeouts, init's care with files, Ctrl-C during
//! an operation, the simulator's check rows, logging.

use std::process::{Command, Stdio};

use crate::common::TestDir;
use crate::support::{
    APPLEVZ, KillOnDrop, client, finish, init_vm, signal, spawn_run, spawn_run_until, text,
    wait_for_log, wait_for_status,
};

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
        // Slow enough that both signals arrive while the suspend is under way.
        let run = spawn_run(&vm, "operation_delay_ms=600", &[]);
        let suspending = std::thread::spawn(move || client(&["suspend", &path]));
        wait_for_status(&vm, "pausing");
        signal(&run, libc::SIGINT);
        wait_for_log(&vm, "a suspend is under way");
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
        assert!(log.contains("the VM is forced off"), "{log}");
    }
}

#[test]
fn ctrl_c_twice_during_a_boot_forces_the_vm_off_once_it_has_booted() {
    // The framework cannot stop a VM that is starting, and no operation cancels
    // another: the forced shutdown waits for the boot to settle, then forces it off.
    let (_dir, vm) = init_vm("boot-poweroff");
    let run = spawn_run_until(&vm, "boot_delay_ms=1500", &[], "starting");
    signal(&run, libc::SIGINT); // held: the guest cannot hear it before it runs
    wait_for_log(&vm, "asking the guest to power off");
    signal(&run, libc::SIGINT); // forced: waits for the boot
    let (code, log) = finish(run, &vm);
    assert_eq!(code, 12, "{log}");
    assert!(log.contains("forcing the VM off"), "{log}");
    assert_eq!(
        client(&["status", vm.to_str().unwrap()]).1,
        "stopped (not running)\n"
    );
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
    let mut run = KillOnDrop::spawn(
        Command::new(APPLEVZ)
            .args(["run", path, "--console", "file"])
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap()),
    );
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
