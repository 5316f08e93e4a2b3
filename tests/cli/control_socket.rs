//! The control socket: its bounds, deep directories, saved states with a way out.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::common::{PATIENCE, TestDir};
use crate::support::{client, finish, init_vm, signal, spawn_run, wait_for_status, wait_until};

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
    // `run` accepts connections in order: once the last one is refused, every one
    // before it has been accepted and given its thread (or refused).
    let mut refused = String::new();
    let mut last = idle.pop().unwrap();
    last.set_read_timeout(Some(PATIENCE)).unwrap();
    let _ = last.read_to_string(&mut refused);
    assert!(refused.starts_with("error "), "{refused:?}");
    let threads = proc_status(pid, "Threads");
    assert!(
        threads < threads_before + 40,
        "{threads} threads for 300 idle connections (was {threads_before})"
    );
    // The idle ones are closed by `run` after its timeout, each with a reply.
    let mut first = idle.remove(0);
    first.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut timed_out = String::new();
    let _ = first.read_to_string(&mut timed_out);
    assert!(timed_out.starts_with("error 2 "), "{timed_out:?}");
    drop(idle);
    wait_for_status(&vm, "running");
    // Their threads end once they have answered: soon, but not at once.
    wait_until("the idle connections' threads ending", || {
        proc_status(pid, "Threads") <= threads_before + 4
    });

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
