//! VM definition files: what people write by hand loads into a working configuration;
//! unknown keys and invalid values are refused with the file, the key and the reason.
#![cfg(applevz_simulator)]

mod common;

use std::path::PathBuf;

use applevz::definition::{DiskDefinition, NetworkDefinition, parse_memory};
use applevz::{Error, VirtualMachine, VmDefinition, VmState};
use common::{LeakCheck, TestDir};
use serial_test::serial;

const FULL: &str = r#"
# A VM as a person writes it.
cpus = 2
memory = "1GiB"
saved_state = "vm.state"
machine_identifier = "machine-id"
entropy = true
memory_balloon = true
vsock = true
serial_log = "console.log"
on_graceful_timeout = "force-stop"

[boot]
kernel = "vmlinuz"
initrd = "initrd"
command_line = "console=hvc0 root=/dev/vda"

[[disk]]
path = "root.img"
identifier = "root"

[[disk]]
path = "seed.iso"
read_only = true
caching = "automatic"
sync = "full"

[[disk]]
path = "data.img"
interface = "nvme"

[[network]]
mac = "stable"

[[network]]
mac = "52:54:00:12:34:56"

[[share]]
tag = "home"
path = "home"
read_only = true

[[share]]
tag = "work"
[share.directories]
src = { path = "src" }
docs = { path = "docs", read_only = true }

[timeouts]
start = 30
graceful_shutdown = 2.5
"#;

fn vm_dir() -> (TestDir, PathBuf) {
    let dir = TestDir::new("definition");
    for file in ["vmlinuz", "initrd", "root.img", "seed.iso", "data.img"] {
        dir.file(file, b"contents");
    }
    for sub in ["home", "src", "docs"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let file = dir.file("vm.toml", FULL.as_bytes());
    (dir, file)
}

#[test]
#[serial]
fn a_hand_written_definition_loads_builds_and_boots() {
    let leaks = LeakCheck::start();
    let (dir, file) = vm_dir();
    let config = VmDefinition::load_config(&file).expect("valid definition");
    assert_eq!(config.memory_size(), 1 << 30);
    assert!(config.has_vsock() && config.has_memory_balloon());
    assert_eq!(
        config.saved_state_path(),
        Some(dir.join("vm.state").as_path()),
        "relative to the file"
    );
    assert_eq!(config.timeouts().graceful_shutdown.as_millis(), 2500);
    let vm = VirtualMachine::new(&config).unwrap();
    vm.start().unwrap();
    // Its directory shares make it unsuspendable, as on a Mac (fidelity rule 19 of
    // shim/sim/README.md): refused up front, the guest keeps running.
    match vm.suspend() {
        Err(applevz::Error::SuspendNotSupported { source }) => assert!(
            source.description.contains("directory sharing device"),
            "{source:?}"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(vm.state(), VmState::Running);
    assert!(!dir.join("vm.state").exists());
    drop(vm);
    // The identity was persisted where the file says.
    assert!(dir.join("machine-id").exists());
    leaks.finish();
}

#[test]
fn a_definition_round_trips_through_toml() {
    let (_dir, file) = vm_dir();
    let definition = VmDefinition::load(&file).unwrap();
    let written = definition.to_toml();
    let again = VmDefinition::parse(&written, &file).unwrap();
    assert_eq!(again, definition);

    let mut small = VmDefinition::linux("vmlinuz", 512 << 20);
    small.disks.push(DiskDefinition {
        path: "root.img".into(),
        read_only: false,
        interface: None,
        caching: None,
        sync: None,
        identifier: None,
    });
    small.networks.push(NetworkDefinition::default());
    let text = small.to_toml();
    assert!(text.contains("memory = \"512MiB\""), "{text}");
    assert_eq!(VmDefinition::parse(&text, &file).unwrap(), small);
}

/// Loads `text` as a definition and returns the error's key and reason.
fn rejected(text: &str) -> (String, String) {
    let (dir, _) = vm_dir();
    let file = dir.file("bad.toml", text.as_bytes());
    match VmDefinition::load_config(&file) {
        Err(Error::Definition {
            file: named,
            key,
            reason,
            ..
        }) => {
            assert_eq!(named, file, "the error names the file");
            (key, reason)
        }
        other => panic!("expected a definition error for {text:?}, got {other:?}"),
    }
}

const BASE: &str = "memory = \"512MiB\"\n[boot]\nkernel = \"vmlinuz\"\n";

#[test]
#[serial]
fn unknown_keys_are_refused_with_their_place() {
    let (key, reason) = rejected(&format!("colour = \"blue\"\n{BASE}"));
    assert_eq!(key, "colour");
    assert!(reason.contains("unknown field `colour`"), "{reason}");

    let (key, reason) = rejected(&format!("{BASE}[[disk]]\npath = \"root.img\"\nsize = 10\n"));
    assert_eq!(key, "disk[0].size");
    assert!(reason.contains("unknown field `size`"), "{reason}");

    let (key, reason) = rejected(&format!("{BASE}extra = 1\n"));
    assert_eq!(key, "boot.extra", "the key sits in [boot] here: {reason}");
}

#[test]
#[serial]
fn invalid_values_name_their_key() {
    for (text, expected_key, reason_part) in [
        (format!("cpus = \"two\"\n{BASE}"), "cpus", "invalid type"),
        (format!("cpus = 100000\n{BASE}"), "cpus", "CPUs"),
        (
            "memory = \"2TB\"\n[boot]\nkernel = \"vmlinuz\"\n".to_owned(),
            "memory",
            "not MiB or GiB",
        ),
        (
            "memory = \"100MiB\"\n[boot]\nkernel = \"vmlinuz\"\n".to_owned(),
            "memory",
            "outside",
        ),
        (
            "memory = \"512MiB\"\n[boot]\nkernel = \"missing\"\n".to_owned(),
            "boot.kernel",
            "does not exist",
        ),
        (
            "memory = \"512MiB\"\n[boot]\n".to_owned(),
            "boot",
            "set kernel",
        ),
        (
            "memory = \"512MiB\"\n[boot]\nkernel = \"vmlinuz\"\nefi_variable_store = \"efi\"\n"
                .to_owned(),
            "boot",
            "not both",
        ),
        (
            format!("{BASE}[[disk]]\npath = \"root.img\"\ncaching = \"sometimes\"\n"),
            "disk[0].caching",
            "unknown variant",
        ),
        (
            format!("{BASE}[[disk]]\npath = \"root.img\"\n[[disk]]\npath = \"nope.img\"\n"),
            "disk[1].path",
            "does not exist",
        ),
        (
            format!(
                "{BASE}[[disk]]\npath = \"root.img\"\nidentifier = \"much-too-long-for-virtio\"\n"
            ),
            "disk[0].identifier",
            "longer than 20",
        ),
        (
            format!("{BASE}[[network]]\n[[network]]\nmac = \"52:54:00\"\n"),
            "network[1].mac",
            "fewer than six",
        ),
        (
            format!("{BASE}[[share]]\ntag = \"\"\npath = \"home\"\n"),
            "share[0].tag",
            "is empty",
        ),
        (
            format!("{BASE}[[share]]\ntag = \"t\"\n"),
            "share[0]",
            "set path",
        ),
        (
            format!("{BASE}[timeouts]\nstart = -1\n"),
            "timeouts.start",
            "positive",
        ),
        (
            format!("on_graceful_timeout = \"maybe\"\n{BASE}"),
            "on_graceful_timeout",
            "unknown variant",
        ),
    ] {
        let (key, reason) = rejected(&text);
        assert_eq!(key, expected_key, "{text:?}: {reason}");
        assert!(
            reason.contains(reason_part),
            "{text:?}: {reason:?} lacks {reason_part:?}"
        );
    }
}

#[test]
#[serial]
fn broken_toml_and_missing_files_are_clear() {
    let (key, reason) = rejected("memory = \"512MiB\n");
    assert_eq!(key, "");
    assert!(!reason.is_empty());
    let missing = PathBuf::from("/nonexistent/applevz/vm.toml");
    assert!(matches!(
        VmDefinition::load(&missing),
        Err(Error::Io { .. })
    ));
    // The message a person sees: file, key, reason.
    let dir = TestDir::new("message");
    let file = dir.file(
        "vm.toml",
        b"memory = \"1 parsec\"\n[boot]\nkernel = \"k\"\n",
    );
    let message = VmDefinition::load_config(&file).unwrap_err().to_string();
    assert!(
        message.starts_with(&format!("{}: memory: ", file.display())),
        "{message}"
    );
}

#[test]
fn memory_sizes_parse_with_units() {
    assert_eq!(parse_memory("512MiB"), Ok(512 << 20));
    assert_eq!(parse_memory("2 GiB"), Ok(2 << 30));
    assert!(parse_memory("2G").is_err());
    assert!(parse_memory("GiB").is_err());
    assert!(parse_memory("99999999999999999GiB").is_err());
    assert_eq!(parse_memory("1.5GiB"), Ok(1536 << 20));
    assert_eq!(parse_memory("0.5 MiB"), Ok(512 << 10));
    assert!(
        parse_memory("0.3MiB").is_err(),
        "not a whole number of bytes"
    );
    for malformed in ["1.GiB", ".5GiB", "1.2.3GiB", "1,5GiB"] {
        assert!(parse_memory(malformed).is_err(), "{malformed}");
    }
}

#[test]
fn syntax_and_type_errors_point_at_the_line_and_column() {
    let dir = TestDir::new("definition-location");
    for (text, expected) in [
        // A syntax error: the value is missing.
        (
            "memory = \"512MiB\"\ncpus = \n[boot]\nkernel = \"vmlinuz\"\n",
            ":2:8: ",
        ),
        // An unterminated string, after a multi-byte character on the same line.
        (
            "memory = \"512MiB\"\n[boot]\ncommand_line = \"é\nkernel = \"k\"\n",
            ":3:",
        ),
        // A value of the wrong type.
        (
            "memory = \"512MiB\"\ncpus = \"two\"\n[boot]\nkernel = \"vmlinuz\"\n",
            ":2:8: cpus: ",
        ),
        // An unknown key.
        (
            "memory = \"512MiB\"\n[boot]\nkernel = \"vmlinuz\"\ncolour = 1\n",
            ":4:1: boot.colour: ",
        ),
    ] {
        let file = dir.file("vm.toml", text.as_bytes());
        let message = VmDefinition::load(&file).unwrap_err().to_string();
        let prefix = format!("{}{expected}", file.display());
        assert!(
            message.starts_with(&prefix),
            "{text:?}: {message:?} starts with {prefix:?}"
        );
    }
}

#[test]
#[serial]
fn a_disk_image_attached_twice_or_a_mac_address_used_twice_is_refused() {
    let (dir, _) = vm_dir();
    std::os::unix::fs::symlink(dir.join("root.img"), dir.join("link.img")).unwrap();
    let file = dir.join("twice.toml");
    for (second, first_index) in [
        ("root.img", 0),
        ("./root.img", 0),
        ("link.img", 0),
        ("../{dir}/root.img", 0),
        ("data.img", 99), // a different file: accepted
    ] {
        let name = dir.path().file_name().unwrap().to_str().unwrap();
        let second = second.replace("{dir}", name);
        let text = format!(
            "{BASE}[[disk]]\npath = \"root.img\"\n[[disk]]\npath = \"seed.iso\"\nread_only = true\n\
             [[disk]]\npath = \"{second}\"\n"
        );
        std::fs::write(&file, &text).unwrap();
        match VmDefinition::load_config(&file) {
            Ok(_) => assert_eq!(first_index, 99, "{second} is root.img again, accepted"),
            Err(error) => {
                let message = error.to_string();
                assert_ne!(first_index, 99, "{second}: {message}");
                assert!(
                    message.starts_with(&format!("{}: disk[2].path: ", file.display())),
                    "{message}"
                );
                assert!(
                    message.contains("same file as disk 0"),
                    "{second}: {message}"
                );
            }
        }
    }

    let text = format!(
        "{BASE}[[network]]\nmac = \"52:54:00:12:34:56\"\n[[network]]\n\
         [[network]]\nmac = \"52:54:00:12:34:56\"\n"
    );
    std::fs::write(&file, &text).unwrap();
    let message = VmDefinition::load_config(&file).unwrap_err().to_string();
    assert!(
        message.starts_with(&format!("{}: network[2].mac: ", file.display())),
        "{message}"
    );
    assert!(message.contains("network device 0"), "{message}");
    // Spelled differently, the same address.
    let text = format!(
        "{BASE}[[network]]\nmac = \"52:54:00:ab:cd:ef\"\n[[network]]\nmac = \"52:54:00:AB:CD:EF\"\n"
    );
    std::fs::write(&file, &text).unwrap();
    let message = VmDefinition::load_config(&file).unwrap_err().to_string();
    assert!(message.contains("network[1].mac"), "{message}");
}
