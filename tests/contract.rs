//! The framework contract, written once: which call is legal in which state, the
//! order of events, and the save/restore rules, through the public API.
//!
//! Here it runs against the simulator (shim/sim). On a Mac it runs against
//! Virtualization.framework, so a divergence between the two shows up as a failing
//! test on the first Mac run. There the tests are ignored by default and run with
//! `cargo test --test contract -- --include-ignored` when a guest is provided:
//! `APPLEVZ_TEST_KERNEL` (and optionally `APPLEVZ_TEST_INITRD`, `APPLEVZ_TEST_CMDLINE`,
//! `APPLEVZ_TEST_GUEST_HANDLES_POWER_BUTTON=1`), as for `tests/real_vm.rs`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;
use std::time::Duration;

use applevz::{
    Error, EventKind, ShutdownPolicy, StateEvent, Timeouts, VirtualMachine, VmConfigBuilder,
    VmState, VzErrorCode,
};

const PATIENCE: Duration = Duration::from_secs(60);

/// The guest: the simulator's scripted one, or a real kernel on a Mac.
mod guest {
    use super::*;

    #[cfg(applevz_simulator)]
    pub fn config(dir: &Path) -> VmConfigBuilder {
        let kernel = dir.join("vmlinuz");
        std::fs::write(&kernel, b"not really a kernel").unwrap();
        applevz::VmConfig::builder()
            .linux_boot_loader(applevz::LinuxBootLoader::new(kernel))
            .simulated_guest(applevz::sim::SimulatedGuest::default())
    }

    #[cfg(not(applevz_simulator))]
    pub fn config(_dir: &Path) -> VmConfigBuilder {
        let kernel = std::env::var_os("APPLEVZ_TEST_KERNEL")
            .expect("the contract suite on a Mac needs APPLEVZ_TEST_KERNEL");
        let mut boot = applevz::LinuxBootLoader::new(kernel).command_line(
            std::env::var("APPLEVZ_TEST_CMDLINE").unwrap_or_else(|_| "console=hvc0".into()),
        );
        if let Some(initrd) = std::env::var_os("APPLEVZ_TEST_INITRD") {
            boot = boot.initrd(initrd);
        }
        applevz::VmConfig::builder().linux_boot_loader(boot)
    }

    /// Whether the guest powers off on the ACPI power button.
    pub fn handles_power_button() -> bool {
        cfg!(applevz_simulator)
            || std::env::var_os("APPLEVZ_TEST_GUEST_HANDLES_POWER_BUTTON").is_some()
    }
}

/// Where save/restore does not exist (Intel Macs, macOS < 14), the contract is a
/// clear error and the VM running on.
fn suspend_is_refused_and_the_vm_keeps_running() {
    let vm = vm(&Scratch::new("no-save-restore"), 512);
    vm.start().unwrap();
    let error = vm.suspend().expect_err("not supported here");
    assert!(
        matches!(error, Error::SuspendNotSupported { .. }),
        "{error:?}"
    );
    assert_eq!(vm.state(), VmState::Running);
    vm.shutdown(ShutdownPolicy::Halt).unwrap();
}

struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("applevz-contract-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn timeouts() -> Timeouts {
    Timeouts {
        start: PATIENCE,
        stop: PATIENCE,
        pause: PATIENCE,
        resume: PATIENCE,
        save: PATIENCE,
        restore: PATIENCE,
        graceful_shutdown: PATIENCE,
        vsock_connect: PATIENCE,
    }
}

fn vm(dir: &Scratch, memory_mib: u64) -> VirtualMachine {
    let config = guest::config(&dir.0)
        .cpu_count(1)
        .memory_mib(memory_mib)
        .saved_state_path(dir.0.join("vm.state"))
        .timeouts(timeouts())
        .build()
        .expect("valid configuration");
    VirtualMachine::new(&config).expect("create the VM")
}

/// The states of the events received so far, waiting for the one that ends with
/// `last`.
fn states_until(
    events: &Receiver<StateEvent>,
    mut last: impl FnMut(&StateEvent) -> bool,
) -> Vec<VmState> {
    let mut states = Vec::new();
    loop {
        let event = events
            .recv_timeout(PATIENCE)
            .unwrap_or_else(|e| panic!("no further event ({e}); got {states:?}"));
        states.push(event.state);
        if last(&event) {
            return states;
        }
    }
}

#[test]
#[cfg_attr(
    not(applevz_simulator),
    ignore = "contract against Virtualization.framework: needs a Mac and APPLEVZ_TEST_KERNEL (--include-ignored)"
)]
fn start_pause_resume_and_halt_report_each_state_in_order() {
    use VmState::*;
    let dir = Scratch::new("order");
    let vm = vm(&dir, 512);
    let events = vm.subscribe();
    vm.start().unwrap();
    // The completion comes after the state change it reports.
    assert_eq!(vm.state(), VmState::Running);
    vm.pause().unwrap();
    assert_eq!(vm.state(), VmState::Paused);
    vm.resume().unwrap();
    assert_eq!(vm.state(), VmState::Running);
    vm.shutdown(ShutdownPolicy::Halt).unwrap();
    assert_eq!(vm.state(), VmState::Stopped);
    assert_eq!(
        states_until(&events, |e| e.state == Stopped),
        vec![
            Starting, Running, Pausing, Paused, Resuming, Running, Stopping, Stopped
        ]
    );
}

#[test]
#[cfg_attr(
    not(applevz_simulator),
    ignore = "contract against Virtualization.framework: needs a Mac and APPLEVZ_TEST_KERNEL (--include-ignored)"
)]
fn calls_outside_their_documented_states_are_refused() {
    let dir = Scratch::new("refused");
    let vm = vm(&dir, 512);
    for (what, result) in [
        ("pause while stopped", vm.pause()),
        ("resume while stopped", vm.resume()),
        ("suspend while stopped", vm.suspend()),
    ] {
        assert!(
            matches!(
                result,
                Err(Error::InvalidState {
                    state: VmState::Stopped,
                    ..
                })
            ),
            "{what}: {result:?}"
        );
    }
    // Stopping a VM that does not run changes nothing, whatever the policy.
    for policy in [
        ShutdownPolicy::Powerdown,
        ShutdownPolicy::Halt,
        ShutdownPolicy::Poweroff,
    ] {
        vm.shutdown(policy).unwrap();
        assert_eq!(vm.state(), VmState::Stopped);
    }
}

#[test]
#[cfg_attr(
    not(applevz_simulator),
    ignore = "contract against Virtualization.framework: needs a Mac and APPLEVZ_TEST_KERNEL (--include-ignored)"
)]
fn powerdown_of_a_paused_vm_resumes_it_then_the_guest_stops() {
    use VmState::*;
    let dir = Scratch::new("powerdown");
    let vm = vm(&dir, 512);
    vm.start().unwrap();
    vm.pause().unwrap();
    let events = vm.subscribe();
    if !guest::handles_power_button() {
        // A guest without ACPI power-button handling ignores the request: resumed
        // first, then the graceful wait times out and the VM keeps running.
        vm.set_timeouts(Timeouts {
            graceful_shutdown: Duration::from_secs(5),
            ..timeouts()
        });
        let error = vm.shutdown(ShutdownPolicy::Powerdown).expect_err("ignored");
        assert!(matches!(error, applevz::Error::Timeout { .. }), "{error:?}");
        assert_eq!(vm.state(), Running);
        let states = states_until(&events, |e| e.state == Running);
        assert_eq!(states, vec![Resuming, Running]);
        vm.shutdown(ShutdownPolicy::Halt).unwrap();
        return;
    }
    vm.shutdown(ShutdownPolicy::Powerdown).unwrap();
    let mut kinds = Vec::new();
    let states = states_until(&events, |e| {
        kinds.push(e.kind.clone());
        e.kind == EventKind::GuestStopped
    });
    assert_eq!(states.first(), Some(&Resuming));
    assert!(states.contains(&Running));
    // The delegate's event comes after the state change it implies.
    assert_eq!(states.last(), Some(&Stopped));
    assert_eq!(states[states.len() - 2], Stopped, "{states:?} {kinds:?}");
}

#[test]
#[cfg_attr(
    not(applevz_simulator),
    ignore = "contract against Virtualization.framework: needs a Mac and APPLEVZ_TEST_KERNEL (--include-ignored)"
)]
fn suspend_saves_an_owner_only_file_and_start_restores_it() {
    use VmState::{Paused, Pausing, Restoring, Resuming, Running, Saving, Stopping, Suspended};
    if !applevz::save_restore_supported() {
        suspend_is_refused_and_the_vm_keeps_running();
        return;
    }
    let dir = Scratch::new("suspend");
    let vm = vm(&dir, 512);
    vm.start().unwrap();
    let events = vm.subscribe();
    vm.suspend().unwrap();
    assert_eq!(
        states_until(&events, |e| e.kind == EventKind::Suspended),
        vec![Pausing, Paused, Saving, Paused, Stopping, Suspended]
    );
    let saved = dir.0.join("vm.state");
    let mode = std::fs::metadata(&saved).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "guest memory is owner-only");

    vm.start().unwrap();
    // A restore goes through restoring to paused; then the guest resumes.
    assert_eq!(
        states_until(&events, |e| e.kind == EventKind::SavedStateRemoved),
        vec![Restoring, Paused, Resuming, Running, Running]
    );
    assert!(!saved.exists(), "spent once the guest runs again");
    vm.shutdown(ShutdownPolicy::Poweroff).unwrap();
}

#[test]
#[cfg_attr(
    not(applevz_simulator),
    ignore = "contract against Virtualization.framework: needs a Mac and APPLEVZ_TEST_KERNEL (--include-ignored)"
)]
fn a_saved_state_restores_only_into_the_configuration_that_made_it() {
    if !applevz::save_restore_supported() {
        suspend_is_refused_and_the_vm_keeps_running();
        return;
    }
    let dir = Scratch::new("other-config");
    let first = vm(&dir, 512);
    first.start().unwrap();
    first.suspend().unwrap();
    drop(first);
    let saved = std::fs::read(dir.0.join("vm.state")).unwrap();
    // Another memory size: the framework refuses with its restore error.
    let other = vm(&dir, 1024);
    assert_eq!(other.state(), VmState::Suspended);
    let error = other.start().expect_err("another configuration");
    assert_eq!(error.vz_code(), Some(VzErrorCode::Restore), "{error:?}");
    assert!(error.to_string().contains("the file is kept"), "{error}");
    assert_eq!(other.state(), VmState::Suspended);
    assert_eq!(std::fs::read(dir.0.join("vm.state")).unwrap(), saved);
    drop(other);
    // The configuration that made it restores it.
    let same = vm(&dir, 512);
    same.start().unwrap();
    assert_eq!(same.state(), VmState::Running);
    same.shutdown(ShutdownPolicy::Poweroff).unwrap();
}

#[test]
#[cfg_attr(
    not(applevz_simulator),
    ignore = "contract against Virtualization.framework: needs a Mac and APPLEVZ_TEST_KERNEL (--include-ignored)"
)]
fn a_restored_vm_can_be_suspended_and_restored_again() {
    // Every restore goes into a fresh native VM object; the VM keeps working across
    // several rounds.
    if !applevz::save_restore_supported() {
        suspend_is_refused_and_the_vm_keeps_running();
        return;
    }
    let dir = Scratch::new("rounds");
    let vm = vm(&dir, 512);
    vm.start().unwrap();
    for round in 0..3 {
        vm.suspend()
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(vm.state(), VmState::Suspended);
        vm.start().unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(vm.state(), VmState::Running);
    }
    vm.shutdown(ShutdownPolicy::Halt).unwrap();
}
