//! Issue 19: the rough edges a newcomer found, each through the binary.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use crate::common::{PATIENCE, TestDir};
use crate::support::{client, finish, init_vm, signal, spawn_run, spawn_run_until, wait_for_log};

#[test]
fn init_takes_a_command_line_for_the_placeholder_kernel() {
    let dir = TestDir::new("init-cmdline");
    let vm = dir.join("vm");
    let (code, _, stderr) = client(&[
        "init",
        vm.to_str().unwrap(),
        "--cmdline",
        "console=hvc0 quiet",
    ]);
    assert_eq!(
        code, 0,
        "the help says a placeholder kernel is written: {stderr}"
    );
    let definition = std::fs::read_to_string(vm.join("vm.toml")).unwrap();
    assert!(
        definition.contains("command_line = \"console=hvc0 quiet\""),
        "{definition}"
    );
    // A kernel's flags with --efi: refused, and the usage line does not claim that
    // every flag is required.
    let (code, _, stderr) = client(&[
        "init",
        dir.join("efi").to_str().unwrap(),
        "--efi",
        "--cmdline",
        "quiet",
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("cannot be used with"), "{stderr}");
    let usage = stderr
        .lines()
        .find(|line| line.starts_with("Usage:"))
        .unwrap_or_else(|| panic!("no usage line: {stderr}"));
    assert!(!usage.contains("--kernel"), "{usage}");
}

#[test]
fn init_on_a_file_says_it_is_not_a_directory() {
    let dir = TestDir::new("init-file");
    let file = dir.file("notes", b"mine");
    let (code, _, stderr) = client(&["init", file.to_str().unwrap()]);
    assert_eq!(code, 7, "{stderr}");
    assert!(
        stderr.contains("is not a directory") && !stderr.contains("os error"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"mine");
}

#[test]
fn a_timeout_below_a_nanosecond_is_called_that_not_non_positive() {
    let (_dir, vm) = init_vm("tiny-timeout");
    let path = vm.to_str().unwrap();
    for args in [
        &["stop", path, "--timeout", "1e-12"][..],
        &["run", path, "--graceful-timeout", "1e-12"],
    ] {
        let (code, _, stderr) = client(args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(
            stderr.contains("below the resolution") && !stderr.contains("positive"),
            "{args:?}: {stderr}"
        );
    }
    let (code, _, stderr) = client(&["stop", path, "--timeout", "0"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("positive number of seconds"), "{stderr}");
    let (code, _, stderr) = client(&["run", path, "--graceful-timeout", "1e30"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("too large"), "{stderr}");
}

#[test]
fn console_terminal_without_a_terminal_names_the_way_out() {
    let (_dir, vm) = init_vm("no-terminal");
    // stdin is /dev/null here.
    let (code, _, stderr) = client(&["run", vm.to_str().unwrap(), "--console", "terminal"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("not a terminal") && stderr.contains("--console file"),
        "{stderr}"
    );
    assert!(!stderr.contains("ioctl"), "{stderr}");
    assert!(
        !vm.join("run.lock").exists(),
        "refused before touching the directory"
    );
}

#[test]
fn a_request_during_the_boot_is_told_the_boot_is_under_way() {
    let (_dir, vm) = init_vm("busy-boot");
    let path = vm.to_str().unwrap();
    let run = spawn_run_until(
        &vm,
        "boot_delay_ms=3000",
        &["--console", "file"],
        "starting",
    );
    for command in ["stop", "pause", "suspend"] {
        let (code, _, stderr) = client(&[command, path]);
        assert_eq!(code, 4, "{command}: {stderr}");
        assert!(
            stderr.contains("the boot is under way") && !stderr.contains("while the VM is"),
            "{command}: {stderr}"
        );
    }
    let (code, _, stderr) = client(&["stop", path, "--policy", "poweroff"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(finish(run, &vm).0, 12);
}

#[cfg(target_os = "linux")]
#[test]
fn a_full_control_socket_is_reported_by_every_command() {
    let (_dir, vm) = init_vm("socket-full");
    let path = vm.to_str().unwrap();
    let run = spawn_run(&vm, "", &["--console", "file"]);
    // Fill every slot with an idle connection (each waits up to 5 s for its request);
    // the first one refused shows that they are all taken.
    let mut idle = Vec::new();
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let mut connection = UnixStream::connect(vm.join("control.sock")).unwrap();
        connection
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let mut first = [0u8; 1];
        if matches!(connection.read(&mut first), Ok(1)) {
            // Refused at once: the rest of the answer follows.
            connection.set_read_timeout(Some(PATIENCE)).unwrap();
            let mut reply = String::new();
            let _ = connection.read_to_string(&mut reply);
            assert!(reply.contains("too many connections"), "{reply:?}");
            break;
        }
        idle.push(connection);
        assert!(std::time::Instant::now() < deadline, "never full");
    }
    for command in ["pause", "resume", "suspend", "status", "stop"] {
        let (code, _, stderr) = client(&[command, path]);
        assert_eq!(code, 1, "{command}: {stderr}");
        assert!(
            stderr.contains("too many connections") && !stderr.contains("Broken pipe"),
            "{command}: {stderr}"
        );
    }
    drop(idle);
    let (code, _, stderr) = client(&["stop", path, "--policy", "poweroff"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(finish(run, &vm).0, 12);
}

#[test]
fn log_records_look_like_the_tools_other_lines() {
    // A graceful timeout makes the library warn; the warning is one of the tool's
    // lines, not a raw `[… WARN applevz::vm]` record.
    let (_dir, vm) = init_vm("log-format");
    let run = spawn_run(
        &vm,
        "ignores_stop_request",
        &["--console", "file", "--graceful-timeout", "0.3"],
    );
    signal(&run, libc::SIGINT);
    let (code, log) = finish(run, &vm);
    assert_eq!(code, 12, "{log}");
    assert!(log.contains("applevz: warning: "), "{log}");
    for line in log.lines() {
        assert!(
            line.starts_with("applevz: ") || line.starts_with("booting: "),
            "{line:?} in {log}"
        );
    }
}

#[test]
fn signals_during_a_suspend_say_what_they_do() {
    // The suspend is not cancelled and the VM ends suspended: neither signal may
    // claim to force the VM off, nor suggest a poweroff that would discard the state.
    let (_dir, vm) = init_vm("signal-suspend");
    let path = vm.to_str().unwrap().to_owned();
    let run = spawn_run(&vm, "operation_delay_ms=500", &["--console", "file"]);
    let suspending = std::thread::spawn(move || client(&["suspend", &path]));
    crate::support::wait_for_status(&vm, "pausing");
    signal(&run, libc::SIGTERM);
    wait_for_log(&vm, "a suspend is under way");
    signal(&run, libc::SIGTERM);
    let (code, log) = finish(run, &vm);
    assert_eq!(suspending.join().unwrap().0, 0);
    assert_eq!(code, 13, "{log}");
    assert_eq!(log.matches("a suspend is under way").count(), 2, "{log}");
    assert!(
        !log.contains("forcing the VM off") && !log.contains("--policy poweroff"),
        "{log}"
    );
    assert!(vm.join("vm.state").exists());
}
