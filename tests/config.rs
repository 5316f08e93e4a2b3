//! Configuration validation: every bad input gets its own clear error, before
//! anything crosses the ABI; the valid ones build and boot.
#![cfg(applevz_simulator)]

mod common;

use applevz::sim::SimulatedGuest;
use applevz::{
    Disk, EfiVariableStore, Error, Limits, LinuxBootLoader, MacAddress, MachineIdentifier,
    SerialPort, VirtualMachine, VmConfig, VmState,
};
use common::{LeakCheck, TestDir, builder};
use serial_test::serial;

fn kernel(dir: &TestDir) -> LinuxBootLoader {
    LinuxBootLoader::new(dir.file("vmlinuz", b"kernel"))
}

fn base(dir: &TestDir) -> applevz::VmConfigBuilder {
    VmConfig::builder()
        .memory_mib(256)
        .linux_boot_loader(kernel(dir))
}

#[test]
#[serial]
fn cpu_count_outside_the_host_limits() {
    let dir = TestDir::new("cpu");
    let limits = Limits::host();
    for count in [limits.min_cpu_count - 1, limits.max_cpu_count + 1] {
        match base(&dir).cpu_count(count).build() {
            Err(Error::CpuCount {
                requested,
                min,
                max,
            }) => {
                assert_eq!(
                    (requested, min, max),
                    (count, limits.min_cpu_count, limits.max_cpu_count)
                );
            }
            other => panic!("{count} CPUs: {other:?}"),
        }
    }
    assert!(base(&dir).cpu_count(limits.max_cpu_count).build().is_ok());
}

#[test]
#[serial]
fn memory_outside_the_limits_or_not_whole_mib() {
    let dir = TestDir::new("memory");
    let limits = Limits::host();
    let too_small = limits.min_memory_size - 1024 * 1024;
    let too_large = limits.max_memory_size + 1024 * 1024;
    for size in [too_small, too_large] {
        assert!(
            matches!(base(&dir).memory_size(size).build(), Err(Error::MemorySize { requested, .. }) if requested == size)
        );
    }
    let odd = limits.min_memory_size + 4096;
    assert!(
        matches!(base(&dir).memory_size(odd).build(), Err(Error::MemoryNotMibMultiple { requested }) if requested == odd)
    );
}

#[test]
#[serial]
fn a_boot_loader_is_required() {
    assert!(matches!(
        VmConfig::builder().build(),
        Err(Error::MissingBootLoader)
    ));
}

#[test]
#[serial]
fn missing_and_unusable_files_are_named() {
    let dir = TestDir::new("files");
    let missing = dir.join("missing");
    let expect_not_found = |result: applevz::Result<VmConfig>, role: &str| match result {
        Err(Error::FileNotFound { role: r, path }) => {
            assert_eq!(r, role);
            assert_eq!(path, missing);
        }
        other => panic!("{role}: {other:?}"),
    };
    expect_not_found(
        VmConfig::builder()
            .linux_boot_loader(LinuxBootLoader::new(&missing))
            .build(),
        "kernel",
    );
    expect_not_found(
        base(&dir)
            .linux_boot_loader(kernel(&dir).initrd(&missing))
            .build(),
        "initrd",
    );
    expect_not_found(base(&dir).disk(Disk::new(&missing)).build(), "disk image");
    expect_not_found(
        base(&dir)
            .efi_boot_loader(&missing, EfiVariableStore::Open)
            .build(),
        "EFI variable store",
    );

    // A directory where a file belongs.
    match VmConfig::builder()
        .linux_boot_loader(LinuxBootLoader::new(dir.path()))
        .build()
    {
        Err(error @ Error::FileUnusable { .. }) => {
            assert!(error.to_string().contains("is a directory"), "{error}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        base(&dir)
            .disk(Disk::new(dir.path()).read_only(true))
            .build(),
        Err(Error::FileUnusable {
            role: "disk image",
            ..
        })
    ));
    // A saved-state file in a directory that does not exist.
    assert!(matches!(
        base(&dir)
            .saved_state_path(dir.join("no/such/dir/vm.state"))
            .build(),
        Err(Error::FileUnusable {
            role: "saved-state file",
            ..
        })
    ));
    assert!(matches!(
        base(&dir)
            .serial_port(SerialPort::File {
                path: dir.join("nodir/serial.log"),
                append: true
            })
            .build(),
        Err(Error::FileUnusable {
            role: "serial log",
            ..
        })
    ));
}

#[test]
#[serial]
fn mac_addresses_must_parse() {
    let dir = TestDir::new("mac");
    for (bad, reason) in [
        ("", "two-digit"),
        ("52:54:00:12:34", "fewer than six"),
        ("52:54:00:12:34:56:78", "more than six"),
        ("52:54:00:12:34:5g", "two-digit"),
        ("52-54-00-12-34-56", "two-digit"),
        ("525:4:00:12:34:56", "two-digit"),
        ("01:00:5e:00:00:01", "multicast"),
    ] {
        match base(&dir).nat_network(Some(bad)).build() {
            Err(error @ Error::InvalidMacAddress { .. }) => {
                assert!(error.to_string().contains(reason), "{bad:?}: {error}");
            }
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    let good: MacAddress = "52:54:00:AB:cd:01".parse().unwrap();
    assert_eq!(good.to_string(), "52:54:00:ab:cd:01");
    assert!(
        base(&dir)
            .nat_network(Some("52:54:00:ab:cd:01"))
            .nat_network(None)
            .build()
            .is_ok()
    );
}

#[test]
#[serial]
fn interior_nul_bytes_are_rejected() {
    let dir = TestDir::new("nul");
    assert!(matches!(
        base(&dir)
            .linux_boot_loader(kernel(&dir).command_line("console=hvc0\0rm"))
            .build(),
        Err(Error::InteriorNul {
            what: "kernel command line",
            ..
        })
    ));
    // A path with a NUL cannot exist, so it is rejected before any file check.
    let nul_path = std::path::PathBuf::from(std::ffi::OsString::from("vm\0.state"));
    match base(&dir).saved_state_path(&nul_path).build() {
        Err(Error::InteriorNul {
            what: "saved-state path",
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
#[serial]
fn machine_identifiers_persist_and_bad_ones_are_refused() {
    let leaks = LeakCheck::start();
    let dir = TestDir::new("identity");
    let id_file = dir.join("machine-id");
    let config = builder(&dir, SimulatedGuest::default())
        .generic_platform(MachineIdentifier::Persisted(id_file.clone()))
        .build()
        .unwrap();
    let vm = VirtualMachine::new(&config).unwrap();
    let first = std::fs::read(&id_file).expect("identifier written on first use");
    drop(vm);
    let vm = VirtualMachine::new(&config).unwrap();
    assert_eq!(
        std::fs::read(&id_file).unwrap(),
        first,
        "the same identity on the next run"
    );
    drop(vm);

    // An empty file is refused in Rust; a corrupt one by the framework.
    let empty = dir.file("empty-id", b"");
    assert!(matches!(
        base(&dir)
            .generic_platform(MachineIdentifier::Persisted(empty))
            .build(),
        Err(Error::InvalidMachineIdentifier { .. })
    ));
    let corrupt = dir.file("corrupt-id", b"not an identifier");
    let config = builder(&dir, SimulatedGuest::default())
        .generic_platform(MachineIdentifier::Persisted(corrupt.clone()))
        .build()
        .unwrap();
    match VirtualMachine::new(&config) {
        Err(Error::InvalidMachineIdentifier { origin, .. }) => {
            assert_eq!(origin, corrupt.display().to_string());
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        std::fs::read(&corrupt).unwrap(),
        b"not an identifier",
        "never overwritten"
    );
    leaks.finish();
}

#[test]
#[serial]
fn every_device_of_the_basic_set_builds_and_boots() {
    let leaks = LeakCheck::start();
    let dir = TestDir::new("devices");
    let disk = dir.file("disk.img", &[0u8; 4096]);
    let seed = dir.file("seed.iso", &[0u8; 2048]);
    let (reader, writer) = std::os::unix::net::UnixStream::pair().unwrap();
    let config = builder(&dir, SimulatedGuest::default())
        .cpu_count(1)
        .linux_boot_loader(
            kernel(&dir)
                .initrd(dir.file("initrd", b"initrd"))
                .command_line("console=hvc0 root=/dev/vda"),
        )
        .generic_platform(MachineIdentifier::Bytes(
            MachineIdentifier::generate().unwrap(),
        ))
        .disk(Disk::new(&disk))
        .disk(
            Disk::new(&seed)
                .read_only(true)
                .caching(applevz::CachingMode::Automatic)
                .sync(applevz::SyncMode::Full),
        )
        .nat_network(Some("52:54:00:00:00:01"))
        .serial_port(SerialPort::File {
            path: dir.join("serial.log"),
            append: false,
        })
        .serial_port(SerialPort::Fds {
            read: Some(std::sync::Arc::new(std::os::fd::OwnedFd::from(reader))),
            write: Some(std::sync::Arc::new(std::os::fd::OwnedFd::from(writer))),
        })
        .build()
        .unwrap();
    let vm = VirtualMachine::new(&config).unwrap();
    vm.start().unwrap();
    assert_eq!(vm.state(), VmState::Running);
    drop(vm);
    drop(config);
    leaks.finish();
}

#[test]
#[serial]
fn efi_variable_store_is_created_once_then_opened() {
    let leaks = LeakCheck::start();
    let dir = TestDir::new("efi");
    let store = dir.join("efi-vars");
    let config = VmConfig::builder()
        .memory_mib(256)
        .efi_boot_loader(&store, EfiVariableStore::OpenOrCreate)
        .build()
        .unwrap();
    drop(VirtualMachine::new(&config).unwrap());
    let created = std::fs::read(&store).expect("store created");
    drop(VirtualMachine::new(&config).unwrap());
    assert_eq!(
        std::fs::read(&store).unwrap(),
        created,
        "opened, not recreated"
    );
    // Open on a file that is not a store: the framework's error.
    let bogus = dir.file("bogus-vars", b"nope");
    let config = VmConfig::builder()
        .memory_mib(256)
        .efi_boot_loader(&bogus, EfiVariableStore::Open)
        .build()
        .unwrap();
    assert!(matches!(
        VirtualMachine::new(&config),
        Err(Error::Framework { .. })
    ));
    leaks.finish();
}
