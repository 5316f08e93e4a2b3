//! Real Linux guests on a Mac: start, pause, resume, Powerdown, Poweroff, and on Apple
//! silicon with macOS 14+ suspend and start-from-suspended.
//!
//! They run only where they can mean something, and otherwise say why they skipped
//! (and pass): on a Mac that supports virtualization, with a kernel given by
//!
//! - `APPLEVZ_TEST_KERNEL`: a Linux kernel for this Mac (an uncompressed `Image` on
//!   Apple silicon, a `bzImage` on Intel);
//! - `APPLEVZ_TEST_INITRD` (optional): an initial RAM disk;
//! - `APPLEVZ_TEST_CMDLINE` (optional, default `console=hvc0`);
//! - `APPLEVZ_TEST_GUEST_HANDLES_POWER_BUTTON=1` (optional): the guest powers off on
//!   an ACPI power-button press, so Powerdown must stop it without escalation.
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
fn skip_reason(needs_save_restore: bool) -> Option<String> {
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

macro_rules! skip_unless_runnable {
    ($needs_save_restore:expr) => {
        if let Some(reason) = skip_reason($needs_save_restore) {
            eprintln!("skipped: {reason}");
            return;
        }
    };
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
    let kernel = std::env::var_os("APPLEVZ_TEST_KERNEL").expect("checked by skip_reason");
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
fn boots_pauses_resumes_and_powers_off() {
    skip_unless_runnable!(false);
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
fn powerdown_asks_the_guest() {
    skip_unless_runnable!(false);
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
fn suspends_and_starts_from_the_saved_state() {
    skip_unless_runnable!(true);
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
fn suspend_on_a_mac_without_save_restore_is_a_clear_error() {
    skip_unless_runnable!(false);
    if applevz::save_restore_supported() {
        eprintln!(
            "skipped: this Mac supports save/restore (covered by suspends_and_starts_from_the_saved_state)"
        );
        return;
    }
    let scratch = Scratch::new("no-suspend");
    let vm = VirtualMachine::new(&config(&scratch)).expect("create");
    vm.start().expect("start");
    let error = vm.suspend().expect_err("no save/restore here");
    assert!(
        matches!(error, applevz::Error::SuspendNotSupported { .. }),
        "{error:?}"
    );
    assert_eq!(vm.state(), VmState::Running, "the VM keeps running");
    vm.shutdown(ShutdownPolicy::Poweroff).expect("poweroff");
}
