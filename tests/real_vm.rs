//! Real Linux guests on a Mac: start, pause, resume, Powerdown, Poweroff, and on Apple
//! silicon with macOS 14+ suspend and start-from-suspended.
//!
//! Every test here is marked `#[ignore]` with its reason, so a plain `cargo test` reports
//! them as ignored (never as passed): on other targets they need a Mac with
//! Virtualization.framework; on a Mac they boot a real guest and need a kernel. Run them
//! with `cargo test --test real_vm -- --include-ignored` on a Mac that supports
//! virtualization (`VZVirtualMachine.isSupported`; Apple-silicon CI runners do not),
//! with a kernel given by
//!
//! - `APPLEVZ_TEST_KERNEL`: a Linux kernel for this Mac (an uncompressed `Image` on
//!   Apple silicon, a `bzImage` on Intel);
//! - `APPLEVZ_TEST_INITRD` (optional): an initial RAM disk;
//! - `APPLEVZ_TEST_CMDLINE` (optional, default `console=hvc0`);
//! - `APPLEVZ_TEST_GUEST_HANDLES_POWER_BUTTON=1` (optional): the guest powers off on
//!   an ACPI power-button press, so Powerdown must stop it without escalation.
//!
//! Once included, a test that cannot run on this host fails with the reason (no kernel,
//! no virtualization, no save/restore for the suspend test: the Intel workflow passes
//! `--skip suspends_and_starts_from_the_saved_state`). .github/workflows/macos.yml
//! includes them only in the job that provides the kernel.
//!
//! The test binary must carry the virtualization entitlement: `.cargo/config.toml`'s
//! runner signs it. The file compiles on every target, so the simulator build keeps it
//! type-checked.

use std::path::PathBuf;
use std::time::Duration;

use applevz::{
    EventKind, LinuxBootLoader, OnGracefulTimeout, ShutdownPolicy, Timeouts, VirtualMachine,
    VmConfig, VmState,
};

/// Why a real-VM test cannot run here, if it cannot.
fn unrunnable_reason(needs_save_restore: bool) -> Option<String> {
    if applevz::is_simulator() {
        return Some(
            "real-VM tests need macOS; the simulator suites cover the lifecycle logic".into(),
        );
    }
    if std::env::var_os("APPLEVZ_TEST_KERNEL").is_none() {
        return Some("no kernel given: set APPLEVZ_TEST_KERNEL (and APPLEVZ_TEST_INITRD)".into());
    }
    if !applevz::is_supported() {
        return Some(
            "this Mac does not support virtualization (VZVirtualMachine.isSupported is false)"
                .into(),
        );
    }
    if needs_save_restore && !applevz::save_restore_supported() {
        return Some("suspend needs Apple silicon with macOS 14 or later".into());
    }
    None
}

/// An included (`--include-ignored`) test that cannot run here fails with the reason:
/// it was asked for explicitly, and a skip must never count as a pass.
fn require_runnable(needs_save_restore: bool) {
    if let Some(reason) = unrunnable_reason(needs_save_restore) {
        panic!("cannot run this real-VM test here: {reason}");
    }
}

struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("applevz-real-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn config(scratch: &Scratch) -> VmConfig {
    let kernel = std::env::var_os("APPLEVZ_TEST_KERNEL").expect("checked by unrunnable_reason");
    let command_line =
        std::env::var("APPLEVZ_TEST_CMDLINE").unwrap_or_else(|_| "console=hvc0".into());
    let mut boot = LinuxBootLoader::new(kernel).command_line(command_line);
    if let Some(initrd) = std::env::var_os("APPLEVZ_TEST_INITRD") {
        boot = boot.initrd(initrd);
    }
    VmConfig::builder()
        .cpu_count(1)
        .memory_mib(512)
        .linux_boot_loader(boot)
        .nat_network(None)
        .serial_port(applevz::SerialPort::File {
            path: scratch.0.join("console.log"),
            append: false,
        })
        .saved_state_path(scratch.0.join("vm.state"))
        .timeouts(Timeouts {
            graceful_shutdown: Duration::from_secs(30),
            ..Timeouts::default()
        })
        .on_graceful_timeout(OnGracefulTimeout::ForceStop)
        .build()
        .expect("valid configuration")
}

#[test]
#[cfg_attr(
    not(target_os = "macos"),
    ignore = "needs a Mac with Virtualization.framework (the simulator suites cover the lifecycle here)"
)]
#[cfg_attr(
    target_os = "macos",
    ignore = "boots a real Linux guest: run with --include-ignored on a Mac that supports virtualization, with APPLEVZ_TEST_KERNEL set"
)]
fn boots_pauses_resumes_and_powers_off() {
    require_runnable(false);
    let scratch = Scratch::new("cycle");
    let vm = VirtualMachine::new(&config(&scratch)).expect("create");
    vm.start().expect("start");
    assert_eq!(vm.state(), VmState::Running);
    vm.pause().expect("pause");
    assert_eq!(vm.state(), VmState::Paused);
    vm.resume().expect("resume");
    assert_eq!(vm.state(), VmState::Running);
    vm.shutdown(ShutdownPolicy::Poweroff).expect("poweroff");
    assert_eq!(vm.state(), VmState::Stopped);
    // A stopped VM boots again.
    vm.start().expect("second start");
    vm.shutdown(ShutdownPolicy::Halt).expect("halt");
    assert_eq!(vm.state(), VmState::Stopped);
}

#[test]
#[cfg_attr(
    not(target_os = "macos"),
    ignore = "needs a Mac with Virtualization.framework (the simulator suites cover the lifecycle here)"
)]
#[cfg_attr(
    target_os = "macos",
    ignore = "boots a real Linux guest: run with --include-ignored on a Mac that supports virtualization, with APPLEVZ_TEST_KERNEL set"
)]
fn powerdown_asks_the_guest() {
    require_runnable(false);
    let scratch = Scratch::new("powerdown");
    let vm = VirtualMachine::new(&config(&scratch)).expect("create");
    let events = vm.subscribe();
    vm.start().expect("start");
    // Give the guest time to boot far enough to handle the power button.
    std::thread::sleep(Duration::from_secs(5));
    vm.shutdown(ShutdownPolicy::Powerdown)
        .expect("powerdown (escalates if ignored)");
    assert_eq!(vm.state(), VmState::Stopped);
    let guest_stopped = events.try_iter().any(|e| e.kind == EventKind::GuestStopped);
    if std::env::var_os("APPLEVZ_TEST_GUEST_HANDLES_POWER_BUTTON").is_some_and(|v| v == "1") {
        assert!(guest_stopped, "the guest should have powered itself off");
    } else if !guest_stopped {
        eprintln!(
            "note: the guest ignored the power button; the shutdown escalated to a forced stop"
        );
    }
}

#[test]
#[cfg_attr(
    not(target_os = "macos"),
    ignore = "needs a Mac with Virtualization.framework (the simulator suites cover the lifecycle here)"
)]
#[cfg_attr(
    target_os = "macos",
    ignore = "boots a real Linux guest: run with --include-ignored on a Mac that supports virtualization, with APPLEVZ_TEST_KERNEL set"
)]
fn suspends_and_starts_from_the_saved_state() {
    require_runnable(true);
    let scratch = Scratch::new("suspend");
    let config = config(&scratch);
    let vm = VirtualMachine::new(&config).expect("create");
    vm.start().expect("start");
    vm.suspend().expect("suspend");
    assert_eq!(vm.state(), VmState::Suspended);
    assert!(scratch.0.join("vm.state").exists());
    drop(vm);

    // As after a host-process restart: a new VM over the same saved state.
    let vm = VirtualMachine::new(&config).expect("create again");
    assert_eq!(vm.state(), VmState::Suspended);
    vm.start().expect("restore and resume");
    assert_eq!(vm.state(), VmState::Running);
    assert!(
        !scratch.0.join("vm.state").exists(),
        "deleted after a successful restore"
    );
    vm.shutdown(ShutdownPolicy::Poweroff).expect("poweroff");
}

#[test]
#[cfg_attr(
    not(target_os = "macos"),
    ignore = "needs a Mac with Virtualization.framework (the simulator suites cover the lifecycle here)"
)]
#[cfg_attr(
    target_os = "macos",
    ignore = "boots a real Linux guest: run with --include-ignored on a Mac that supports virtualization, with APPLEVZ_TEST_KERNEL set"
)]
fn suspend_is_supported_or_a_clear_error() {
    require_runnable(false);
    let scratch = Scratch::new("suspend-or-not");
    let vm = VirtualMachine::new(&config(&scratch)).expect("create");
    vm.start().expect("start");
    if applevz::save_restore_supported() {
        // Apple silicon with macOS 14: suspend works (the round trip is
        // suspends_and_starts_from_the_saved_state); Poweroff discards the saved state.
        vm.suspend().expect("suspend on a Mac with save/restore");
        assert_eq!(vm.state(), VmState::Suspended);
        vm.shutdown(ShutdownPolicy::Poweroff)
            .expect("poweroff discards");
        assert_eq!(vm.state(), VmState::Stopped);
        assert!(!scratch.0.join("vm.state").exists(), "discarded");
        return;
    }
    let error = vm.suspend().expect_err("no save/restore here");
    assert!(
        matches!(error, applevz::Error::SuspendNotSupported { .. }),
        "{error:?}"
    );
    assert_eq!(vm.state(), VmState::Running, "the VM keeps running");
    vm.shutdown(ShutdownPolicy::Poweroff).expect("poweroff");
}
