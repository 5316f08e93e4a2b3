//! The fault matrix (README, "The tool under faults"): what the faults not tested
//! elsewhere do.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::common::TestDir;
use crate::support::{
    APPLEVZ, DEBUG_LOG, KillOnDrop, client, finish, init_vm, signal, spawn_run, spawn_run_with,
    text, wait_for_log, wait_for_status,
};

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
    let mut suspend = KillOnDrop::spawn(
        Command::new(APPLEVZ)
            .args(["suspend", path])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_for_status(&vm, "pausing");
    suspend.kill().unwrap();
    suspend.wait().unwrap();
    let (code, log) = finish(run, &vm);
    assert_eq!(code, 13, "{log}");
    assert!(vm.join("vm.state").exists());
    // A graceful stop waiting for a guest that ignores it: still forced off at its
    // timeout.
    let run = spawn_run_with(
        &vm,
        "ignores_stop_request",
        &["--console", "file"],
        DEBUG_LOG,
        "running",
    );
    let mut stop = KillOnDrop::spawn(
        Command::new(APPLEVZ)
            .args(["stop", path, "--timeout", "0.5"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_for_log(&vm, "carrying out Stop");
    stop.kill().unwrap();
    stop.wait().unwrap();
    let (code, log) = finish(run, &vm);
    assert_eq!(code, 12, "{log}");
}

/// A small tmpfs mounted for a test, unmounted on drop (Linux, as root). Mounting
/// panics with the reason where it is not allowed: the tests that use it are
/// `#[ignore]`d and run as root by scripts/test.sh.
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
