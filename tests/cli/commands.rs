//! The commands' ordinary use: check, init, run controlled from another process,
//! each way `run` ends, bad inputs, the terminal.

use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::{Command, Stdio};

use crate::common::TestDir;
use crate::pty::pty;
use crate::support::{
    APPLEVZ, KillOnDrop, client, finish, init_vm, signal, spawn_run, wait_for_log, wait_for_status,
};

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
    // Two SIGINTs pending at once are one: the second is sent once `run` heard the first.
    wait_for_log(&vm, "asking the guest to power off");
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
        stderr.contains("cannot resume yet: another operation (pausing) is under way"),
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
    let mut run = KillOnDrop::spawn(
        Command::new(APPLEVZ)
            .arg("run")
            .arg(&vm)
            .arg("--console")
            .arg("terminal")
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave.try_clone().unwrap())),
    );
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
    let mut run = KillOnDrop::spawn(
        Command::new(APPLEVZ)
            .args(["run", vm.to_str().unwrap(), "--console", "terminal"])
            .env("APPLEVZ_SIM_GUEST", "crash_after_ms=300")
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave.try_clone().unwrap())),
    );
    assert_eq!(run.wait().unwrap().code(), Some(11));
    assert_eq!(local_flags(&slave), before, "restored after a crash too");
    drop(master);
}
