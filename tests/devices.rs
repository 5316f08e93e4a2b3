//! Device coverage through the simulator: entropy, memory balloon, vsock, shared
//! directories, Rosetta, console ports, networking and storage — each end to end
//! through the FFI path, and each bad input with its own error.
#![cfg(applevz_simulator)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::time::Duration;

use applevz::sim::{self, SimulatedGuest, SimulatedHost};
use applevz::{
    ConsolePort, DirectoryShare, Disk, Error, LinuxBootLoader, MacAddress, MacChoice,
    MachineIdentifier, Network, RosettaAvailability, ShutdownPolicy, StorageInterface,
    VirtualMachine, VmConfig, VmState, VzErrorCode,
};
use common::{LeakCheck, PATIENCE, TestDir, builder};
use serial_test::serial;

const MIB: u64 = 1024 * 1024;

/// A builder without a saved-state path (so no identity is defaulted).
fn plain(dir: &TestDir) -> applevz::VmConfigBuilder {
    VmConfig::builder()
        .memory_mib(256)
        .linux_boot_loader(LinuxBootLoader::new(dir.file("vmlinuz", b"kernel")))
        .timeouts(common::patient_timeouts())
}

fn running(config: &VmConfig) -> VirtualMachine {
    let vm = VirtualMachine::new(config).expect("create");
    vm.start().expect("start");
    vm
}

// ---------------------------------------------------------------------------------
// Entropy and memory balloon.

#[test]
#[serial]
fn entropy_device_boots() {
    let leaks = LeakCheck::start();
    let dir = TestDir::new("entropy");
    let vm = running(&plain(&dir).entropy(true).build().unwrap());
    assert_eq!(vm.state(), VmState::Running);
    drop(vm);
    leaks.finish();
}

#[test]
#[serial]
fn memory_balloon_target_is_read_set_and_validated() {
    let leaks = LeakCheck::start();
    let dir = TestDir::new("balloon");
    let config = plain(&dir)
        .memory_mib(1024)
        .memory_balloon(true)
        .build()
        .unwrap();
    let vm = VirtualMachine::new(&config).unwrap();
    // Not running: the framework's state error.
    let error = vm.memory_balloon_target().unwrap_err();
    assert_eq!(
        error.vz_code(),
        Some(VzErrorCode::InvalidVirtualMachineState),
        "{error}"
    );
    vm.start().unwrap();
    assert_eq!(
        vm.memory_balloon_target().unwrap(),
        1024 * MIB,
        "starts at the configured memory"
    );
    vm.set_memory_balloon_target(512 * MIB).unwrap();
    assert_eq!(vm.memory_balloon_target().unwrap(), 512 * MIB);
    // Rounded down to whole MiB by the framework.
    vm.set_memory_balloon_target(300 * MIB + 12345).unwrap();
    assert_eq!(vm.memory_balloon_target().unwrap(), 300 * MIB);
    // Outside min..=configured memory: refused in Rust, target unchanged.
    for bad in [1025 * MIB, MIB] {
        assert!(
            matches!(vm.set_memory_balloon_target(bad), Err(Error::BalloonTarget { max, .. }) if max == 1024 * MIB)
        );
    }
    assert_eq!(vm.memory_balloon_target().unwrap(), 300 * MIB);
    drop(vm);

    let without = running(&plain(&dir).build().unwrap());
    assert!(matches!(
        without.memory_balloon_target(),
        Err(Error::DeviceNotConfigured { .. })
    ));
    assert!(matches!(
        without.set_memory_balloon_target(256 * MIB),
        Err(Error::DeviceNotConfigured { .. })
    ));
    drop(without);
    leaks.finish();
}

// ---------------------------------------------------------------------------------
// vsock.

fn vsock_guest(dir: &TestDir, ports: &[u32]) -> VmConfig {
    let guest = SimulatedGuest {
        guest_vsock_ports: ports.to_vec(),
        ..Default::default()
    };
    builder(dir, guest).vsock(true).build().unwrap()
}

#[test]
#[serial]
fn vsock_connect_reaches_a_listening_guest_port_from_any_thread() {
    let leaks = LeakCheck::start();
    let dir = TestDir::new("vsock-connect");
    let vm = running(&vsock_guest(&dir, &[1024]));
    let mut stream = vm.vsock_connect(1024).expect("the guest listens on 1024");
    assert_eq!(stream.guest_port(), 1024);
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    // The connection moves to another thread and works there.
    let echoed = std::thread::spawn(move || {
        stream.write_all(b"ping over vsock").unwrap();
        let mut reply = [0u8; 15];
        stream.read_exact(&mut reply).unwrap();
        reply
    })
    .join()
    .unwrap();
    assert_eq!(&echoed, b"ping over vsock");

    // Nobody listens on 2048: the framework's connection error.
    let error = vm.vsock_connect(2048).expect_err("no listener");
    assert!(matches!(error, Error::Framework { .. }), "{error:?}");
    assert!(
        error
            .to_string()
            .contains("connect to guest vsock port 2048"),
        "{error}"
    );

    vm.shutdown(ShutdownPolicy::Poweroff).unwrap();
    let error = vm.vsock_connect(1024).expect_err("not running");
    assert_eq!(
        error.vz_code(),
        Some(VzErrorCode::InvalidVirtualMachineState),
        "{error}"
    );
    drop(vm);

    let without = running(&plain(&dir).build().unwrap());
    assert!(matches!(
        without.vsock_connect(1024),
        Err(Error::DeviceNotConfigured {
            device: "vsock device",
            ..
        })
    ));
    assert!(matches!(
        without.vsock_listen(1024),
        Err(Error::DeviceNotConfigured { .. })
    ));
    drop(without);
    leaks.finish();
}

#[test]
#[serial]
fn vsock_listener_accepts_guest_connections_and_can_be_removed() {
    let leaks = LeakCheck::start();
    let dir = TestDir::new("vsock-listen");
    let vm = running(&vsock_guest(&dir, &[]));
    let listener = vm.vsock_listen(5000).unwrap();
    assert_eq!(listener.port(), 5000);
    assert!(matches!(
        vm.vsock_listen(5000),
        Err(Error::VsockPortInUse { port: 5000 })
    ));

    vm.simulator().guest_vsock_connect(5000);
    let stream = listener
        .accept_timeout(PATIENCE)
        .unwrap()
        .expect("a guest connection");
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut greeting = String::new();
    reader.read_line(&mut greeting).unwrap();
    assert_eq!(greeting, "hello from guest port 5000\n");
    (&stream).write_all(b"echo me\n").unwrap();
    let mut echo = String::new();
    reader.read_line(&mut echo).unwrap();
    assert_eq!(echo, "echo me\n");
    drop((reader, stream));

    // Nothing more arrives; a connection to another port is not ours.
    vm.simulator().guest_vsock_connect(5001);
    assert!(
        listener
            .accept_timeout(Duration::from_millis(100))
            .unwrap()
            .is_none()
    );

    listener.remove().unwrap();
    // The port is free again once the listener is gone.
    let again = vm.vsock_listen(5000).unwrap();
    drop(again);
    let third = vm.vsock_listen(5000).unwrap();
    vm.simulator().guest_vsock_connect(5000);
    assert!(third.accept_timeout(PATIENCE).unwrap().is_some());
    drop(vm);
    // The listener keeps the native VM alive; once it goes, everything is released.
    drop(third);
    leaks.finish();
}

#[test]
#[serial]
fn a_vsock_listener_hears_the_guest_after_each_crash_and_fresh_start() {
    // A crash the simulator had queued but not yet made let `start()` find the VM still
    // running; the guest's connection then came to a failed VM and the listener heard
    // nothing (tests/model.rs, seed 1796688826164633815). Each control now returns once
    // it took effect, so every round starts a failed VM and the connection is there.
    let leaks = LeakCheck::start();
    let dir = TestDir::new("vsock-crash");
    let vm = running(&vsock_guest(&dir, &[]));
    let listener = vm.vsock_listen(5000).unwrap();
    for round in 0..50 {
        vm.simulator().crash(1);
        assert_eq!(vm.state(), VmState::Error, "round {round}");
        vm.start().unwrap();
        assert_eq!(vm.state(), VmState::Running, "round {round}");
        vm.simulator().guest_vsock_connect(5000);
        let stream = listener.accept_timeout(Duration::ZERO).unwrap();
        assert!(
            stream.is_some(),
            "round {round}: the guest's connection is waiting"
        );
    }
    drop(vm);
    drop(listener);
    leaks.finish();
}

// ---------------------------------------------------------------------------------
// Shared directories and Rosetta.

#[test]
#[serial]
fn a_vsock_listener_lasts_across_a_suspend_and_restore() {
    // Every restore goes into a fresh native VM object: the listener moves along.
    let leaks = LeakCheck::start();
    let dir = TestDir::new("vsock-restore");
    let vm = running(&vsock_guest(&dir, &[]));
    let listener = vm.vsock_listen(5000).unwrap();
    vm.suspend().unwrap();
    vm.start().unwrap();
    vm.simulator().guest_vsock_connect(5000);
    let stream = listener
        .accept_timeout(PATIENCE)
        .unwrap()
        .expect("a guest connection after the restore");
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut greeting = String::new();
    BufReader::new(&stream).read_line(&mut greeting).unwrap();
    assert_eq!(greeting, "hello from guest port 5000\n");
    drop(stream);
    listener.remove().unwrap();
    drop(vm);
    leaks.finish();
}

#[test]
#[serial]
fn directory_shares_build_and_boot() {
    let leaks = LeakCheck::start();
    let dir = TestDir::new("shares");
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let config = plain(&dir)
        .directory_share(DirectoryShare::single("home", dir.path(), true))
        .directory_share(
            DirectoryShare::multiple("work")
                .directory("src", dir.join("src"), false)
                .directory("data", dir.join("data"), true),
        )
        .build()
        .unwrap();
    let vm = running(&config);
    drop(vm);
    leaks.finish();
}

#[test]
#[serial]
fn directory_share_tags_names_and_paths_are_validated() {
    let dir = TestDir::new("share-errors");
    let file = dir.file("not-a-dir", b"x");
    let tag_error = |share: DirectoryShare| match plain(&dir).directory_share(share).build() {
        Err(error @ Error::InvalidShareTag { .. }) => error.to_string(),
        other => panic!("{other:?}"),
    };
    assert!(tag_error(DirectoryShare::single("", dir.path(), true)).contains("is empty"));
    assert!(
        tag_error(DirectoryShare::single("t".repeat(36), dir.path(), true))
            .contains("longer than 35 bytes")
    );
    assert!(tag_error(DirectoryShare::multiple("empty")).contains("shares no directory"));
    match plain(&dir)
        .directory_share(DirectoryShare::single("same", dir.path(), true))
        .directory_share(DirectoryShare::single("same", dir.path(), true))
        .build()
    {
        Err(error @ Error::InvalidShareTag { .. }) => {
            assert!(error.to_string().contains("another share"));
        }
        other => panic!("{other:?}"),
    }
    for (name, reason) in [
        ("", "is empty"),
        ("a/b", "'/'"),
        ("..", "not a directory name"),
    ] {
        match plain(&dir)
            .directory_share(DirectoryShare::multiple("t").directory(name, dir.path(), false))
            .build()
        {
            Err(error @ Error::InvalidShareName { .. }) => {
                assert!(error.to_string().contains(reason), "{error}");
            }
            other => panic!("{name:?}: {other:?}"),
        }
    }
    assert!(matches!(
        plain(&dir)
            .directory_share(
                DirectoryShare::multiple("t")
                    .directory("a", dir.path(), false)
                    .directory("a", dir.path(), true)
            )
            .build(),
        Err(Error::InvalidShareName {
            reason: "appears twice",
            ..
        })
    ));
    assert!(matches!(
        plain(&dir)
            .directory_share(DirectoryShare::single("t", dir.join("missing"), true))
            .build(),
        Err(Error::FileNotFound {
            role: "shared directory",
            ..
        })
    ));
    match plain(&dir)
        .directory_share(DirectoryShare::single("t", &file, true))
        .build()
    {
        Err(error @ Error::FileUnusable { .. }) => {
            assert!(error.to_string().contains("not a directory"));
        }
        other => panic!("{other:?}"),
    }
}

/// Restores the simulated host even when a test fails.
struct HostGuard;

impl Drop for HostGuard {
    fn drop(&mut self) {
        sim::set_host(SimulatedHost::AppleSilicon);
        sim::set_rosetta_installed(true);
    }
}

#[test]
#[serial]
fn rosetta_availability_and_share() {
    let leaks = LeakCheck::start();
    let _restore = HostGuard;
    let dir = TestDir::new("rosetta");
    assert_eq!(
        applevz::rosetta_availability(),
        RosettaAvailability::Installed
    );
    let vm = running(&plain(&dir).rosetta("rosetta").build().unwrap());
    drop(vm);
    // The Rosetta tag is a virtiofs tag like any other.
    assert!(matches!(
        plain(&dir)
            .directory_share(DirectoryShare::single("rosetta", dir.path(), true))
            .rosetta("rosetta")
            .build(),
        Err(Error::InvalidShareTag { .. })
    ));

    sim::set_rosetta_installed(false);
    assert_eq!(
        applevz::rosetta_availability(),
        RosettaAvailability::NotInstalled
    );
    let error = plain(&dir).rosetta("rosetta").build().unwrap_err();
    assert!(matches!(error, Error::RosettaNotInstalled));
    assert!(
        error
            .to_string()
            .contains("softwareupdate --install-rosetta")
    );

    sim::set_host(SimulatedHost::Intel);
    assert_eq!(
        applevz::rosetta_availability(),
        RosettaAvailability::NotSupported
    );
    assert!(matches!(
        plain(&dir).rosetta("rosetta").build(),
        Err(Error::RosettaNotSupported)
    ));
    leaks.finish();
}

#[test]
#[serial]
fn an_intel_host_cannot_suspend() {
    let leaks = LeakCheck::start();
    let _restore = HostGuard;
    sim::set_host(SimulatedHost::Intel);
    assert!(!applevz::save_restore_supported());
    let dir = TestDir::new("intel");
    let vm = running(&builder(&dir, SimulatedGuest::default()).build().unwrap());
    let error = vm.suspend().unwrap_err();
    assert!(
        matches!(error, Error::SuspendNotSupported { .. }),
        "{error:?}"
    );
    assert_eq!(error.vz_code(), Some(VzErrorCode::NotSupported));
    assert_eq!(vm.state(), VmState::Running);
    drop(vm);
    leaks.finish();
}

// ---------------------------------------------------------------------------------
// Console ports and serial.

#[test]
#[serial]
fn console_ports_carry_guest_output() {
    let leaks = LeakCheck::start();
    let dir = TestDir::new("console");
    let (host_end, guest_end) = UnixStream::pair().unwrap();
    let config = plain(&dir)
        .console_port(ConsolePort::new("org.applevz.agent").output(OwnedFd::from(guest_end)))
        .build()
        .unwrap();
    let vm = running(&config);
    host_end.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut line = String::new();
    BufReader::new(&host_end).read_line(&mut line).unwrap();
    assert_eq!(
        line,
        "applevz-sim: console port org.applevz.agent is ready\n"
    );
    drop(vm);
    drop(config);
    assert!(matches!(
        plain(&dir).console_port(ConsolePort::new("")).build(),
        Err(Error::InvalidConsolePortName {
            reason: "is empty",
            ..
        })
    ));
    leaks.finish();
}

#[test]
#[serial]
fn serial_port_on_the_callers_terminal_builds() {
    let dir = TestDir::new("stdio");
    let serial = applevz::SerialPort::stdio().expect("duplicate stdin and stdout");
    assert!(plain(&dir).serial_port(serial).build().is_ok());
}

// ---------------------------------------------------------------------------------
// Networking.

#[test]
#[serial]
fn network_devices_nat_and_file_handle() {
    let leaks = LeakCheck::start();
    let dir = TestDir::new("network");
    let (vm_end, _host_end) = UnixDatagram::pair().unwrap();
    let config = builder(&dir, SimulatedGuest::default())
        .network(Network::nat())
        .network(Network::nat().mac_address("52:54:00:00:00:01"))
        .network(Network::nat().mac(MacChoice::Stable))
        .network(
            Network::file_handle(OwnedFd::from(vm_end))
                .mtu(9000)
                .mac(MacChoice::Stable),
        )
        .build()
        .unwrap();
    drop(running(&config));
    drop(config);

    let (stream, _other) = UnixStream::pair().unwrap();
    match plain(&dir)
        .network(Network::file_handle(OwnedFd::from(stream)))
        .build()
    {
        Err(error @ Error::NotADatagramSocket { .. }) => {
            assert!(error.to_string().contains("stream socket"));
        }
        other => panic!("{other:?}"),
    }
    let file = std::fs::File::open(dir.join("vmlinuz")).unwrap();
    assert!(matches!(
        plain(&dir)
            .network(Network::file_handle(OwnedFd::from(file)))
            .build(),
        Err(Error::NotADatagramSocket { .. })
    ));
    for mtu in [1000, 70000] {
        let (socket, _peer) = UnixDatagram::pair().unwrap();
        assert!(matches!(
            plain(&dir).network(Network::file_handle(OwnedFd::from(socket)).mtu(mtu)).build(),
            Err(Error::InvalidMtu { mtu: m }) if m == mtu
        ));
    }
    // A stable MAC needs an identity to derive it from.
    assert!(matches!(
        plain(&dir)
            .network(Network::nat().mac(MacChoice::Stable))
            .build(),
        Err(Error::StableMacNeedsIdentity)
    ));
    assert!(matches!(
        plain(&dir)
            .network(Network::nat().mac_address("zz:54:00:00:00:01"))
            .build(),
        Err(Error::InvalidMacAddress { .. })
    ));
    leaks.finish();
}

#[test]
fn stable_mac_addresses_are_deterministic_local_and_distinct() {
    let a = MacAddress::stable(b"identity-1", 0);
    assert_eq!(a, MacAddress::stable(b"identity-1", 0));
    assert_ne!(a, MacAddress::stable(b"identity-1", 1));
    assert_ne!(a, MacAddress::stable(b"identity-2", 0));
    for mac in [a, MacAddress::stable(b"", 7)] {
        assert!(mac.is_locally_administered());
        assert_eq!(mac.octets()[0] & 1, 0, "unicast");
        // It prints as an address the parser accepts back.
        assert_eq!(mac.to_string().parse::<MacAddress>().unwrap(), mac);
    }
}

// ---------------------------------------------------------------------------------
// Storage.

#[test]
#[serial]
fn storage_nvme_identifiers_and_iso() {
    let leaks = LeakCheck::start();
    let dir = TestDir::new("storage");
    let root = dir.file("root.img", &[0u8; 4096]);
    let seed = dir.file("seed.iso", &[0u8; 2048]);
    let data = dir.file("data.img", &[0u8; 4096]);
    let config = plain(&dir)
        .generic_platform(MachineIdentifier::Persisted(dir.join("machine-id")))
        .disk(Disk::new(&root).interface(StorageInterface::Nvme))
        .disk(Disk::new(&data).read_only(true).identifier("data-ro"))
        .disk(Disk::iso(&seed))
        .build()
        .unwrap();
    drop(running(&config));

    assert!(matches!(
        plain(&dir)
            .disk(Disk::new(&root).interface(StorageInterface::Nvme))
            .build(),
        Err(Error::NvmeNeedsGenericPlatform { .. })
    ));
    for (bad, reason) in [
        ("", "is empty"),
        ("123456789012345678901", "longer than 20"),
        ("dïsk", "printable ASCII"),
    ] {
        match plain(&dir).disk(Disk::new(&root).identifier(bad)).build() {
            Err(error @ Error::InvalidBlockDeviceIdentifier { .. }) => {
                assert!(error.to_string().contains(reason), "{error}");
            }
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    leaks.finish();
}
