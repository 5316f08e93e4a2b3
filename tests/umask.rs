//! The crate's own tightening of guest files, under a permissive umask.
//!
//! The simulator creates the files the framework writes (the saved state, a created EFI
//! variable store) under the process's umask, as the framework does (fidelity rule 18 of
//! `shim/sim/README.md`), so under umask 022 they come out 0644 unless the crate makes
//! them owner-only: this test fails if `restrict_to_owner` in `src/vm/saved_state.rs` or
//! `src/config/lower.rs` is removed, and if the serial log is left for the framework to
//! create (`create_owner_only` in `src/config/lower.rs`).
//!
//! Its own test binary, with a single test: the umask is process-wide, shared by every
//! thread, and the test harness runs the tests of one binary in parallel threads. Alone
//! here, nothing else creates files while the mask is changed, and no other test sees it.
#![cfg(applevz_simulator)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use applevz::sim::SimulatedGuest;
use applevz::{EfiVariableStore, SerialPort, VirtualMachine, VmConfig, VmState};
use common::{LeakCheck, TestDir, builder};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Restores the previous umask however the test ends.
struct Umask(libc::mode_t);

impl Umask {
    fn set(mask: libc::mode_t) -> Self {
        // SAFETY: umask only changes the process's file-creation mask; this binary's only
        // test is the one thread that creates files meanwhile (see the module comment).
        Self(unsafe { libc::umask(mask) })
    }
}

impl Drop for Umask {
    fn drop(&mut self) {
        // SAFETY: as in Umask::set.
        unsafe { libc::umask(self.0) };
    }
}

#[test]
fn guest_files_are_owner_only_under_umask_022() {
    let _mask = Umask::set(0o022);
    let leaks = LeakCheck::start();
    let dir = TestDir::new("umask");

    // Control: a file created here under this mask is readable by others, so a 0600
    // below is the crate's doing, not the mask's.
    let control = dir.file("control", b"");
    assert_eq!(
        format!("{:o}", mode(&control)),
        "644",
        "the umask is in force"
    );

    let config = builder(&dir, SimulatedGuest::default())
        .serial_port(SerialPort::File {
            path: dir.join("console.log"),
            append: true,
        })
        .build()
        .unwrap();
    let vm = VirtualMachine::new(&config).unwrap();
    assert_eq!(
        format!("{:o}", mode(&dir.join("console.log"))),
        "600",
        "serial log"
    );
    vm.start().unwrap();
    vm.suspend().unwrap();
    assert_eq!(vm.state(), VmState::Suspended);
    assert_eq!(
        format!("{:o}", mode(&dir.join("vm.state"))),
        "600",
        "saved state"
    );
    drop(vm);

    let store = dir.join("efi-vars");
    let efi = VmConfig::builder()
        .cpu_count(1)
        .memory_mib(256)
        .efi_boot_loader(&store, EfiVariableStore::OpenOrCreate)
        .build()
        .unwrap();
    drop(VirtualMachine::new(&efi).unwrap());
    assert_eq!(format!("{:o}", mode(&store)), "600", "EFI variable store");
    leaks.finish();
}
