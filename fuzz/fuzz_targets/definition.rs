//! Fuzz target: `vm.toml` text → `VmDefinition::parse` → `to_builder` → `finish`
//! (a validated `VmConfig`). None of them may panic on any input; errors are fine.
//!
//! Validation looks at the file system (the kernel, disks, shared directories, …). To
//! keep runs deterministic and safe, the definition "lives" in a fixed scratch directory
//! (`fuzz/target/scratch/definition`, made once per process with fixed contents and
//! only read afterwards), and an input reaches validation only when each of its paths is
//! relative and stays inside that directory (no root, no `..`). The directory holds
//! regular files and directories only, no links, so nothing outside it is ever opened
//! (the one path derived from another, a saved state's default identity file beside
//! it, is at most one level up, in `fuzz/target/scratch`, where no such file exists).
//! Validation opens files but never creates or writes one.
//!
//! A definition that parses must also survive `try_to_toml` and read back as the same
//! definition (the `applevz init` path writes files that way).
#![no_main]

use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use applevz::VmDefinition;
use libfuzzer_sys::fuzz_target;

/// Regular files in the scratch directory (the names the seeds use) and their contents.
const FILES: &[(&str, &[u8])] = &[
    ("vmlinuz", b"simulated kernel\n"),
    ("initrd", b"initrd"),
    ("initrd.img", b"initrd"),
    ("root.img", b"disk"),
    ("disk.img", b"disk"),
    ("data.img", b"disk"),
    ("seed.iso", b"iso"),
    ("efi-vars", b"efi variables"),
    ("console.log", b""),
    // Machine identities: a good one, an empty one and one too large (> 4096 bytes).
    ("machine-id", b"identity"),
    ("machine-identifier", b"identity"),
    ("empty", b""),
    ("big", &[b'x'; 5000]),
];

/// Directories in the scratch directory.
const DIRECTORIES: &[&str] = &["home", "src", "docs", "shared"];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = scratch().join("vm.toml");
    let Ok(definition) = VmDefinition::parse(text, &file) else {
        return;
    };

    // Written back as TOML, it reads as the same definition (NaN is never equal to
    // itself, so a definition holding one is only written).
    if let Ok(written) = definition.try_to_toml(&file) {
        let again = VmDefinition::parse(&written, &file).unwrap_or_else(|error| {
            panic!("written definition does not parse: {error}\n{written}")
        });
        if !has_nan(&definition) {
            assert_eq!(again, definition, "round trip through:\n{written}");
        }
    }

    let Ok(builder) = definition.to_builder(&file) else {
        return;
    };
    if paths(&definition).all(stays_inside) {
        let _ = definition.finish(&file, builder);
    }
});

/// The scratch directory, made (idempotently, with fixed contents) on first use.
fn scratch() -> &'static Path {
    static SCRATCH: OnceLock<PathBuf> = OnceLock::new();
    SCRATCH.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/scratch/definition");
        std::fs::create_dir_all(&dir).expect("create the scratch directory");
        for (name, contents) in FILES {
            std::fs::write(dir.join(name), contents).expect("write a scratch file");
        }
        for name in DIRECTORIES {
            std::fs::create_dir_all(dir.join(name)).expect("create a scratch directory");
        }
        dir
    })
}

/// Every path the definition names (all resolved against the file's directory).
fn paths(definition: &VmDefinition) -> impl Iterator<Item = &Path> {
    let boot = &definition.boot;
    [
        &boot.kernel,
        &boot.initrd,
        &boot.efi_variable_store,
        &definition.machine_identifier,
        &definition.saved_state,
        &definition.serial_log,
    ]
    .into_iter()
    .filter_map(|path| path.as_deref())
    .chain(definition.disks.iter().map(|disk| disk.path.as_path()))
    .chain(definition.shares.iter().flat_map(|share| {
        share
            .path
            .as_deref()
            .into_iter()
            .chain(share.directories.values().map(|d| d.path.as_path()))
    }))
}

/// Relative, and no `..`: joined to the scratch directory it stays inside.
fn stays_inside(path: &Path) -> bool {
    path.components()
        .all(|component| matches!(component, Component::Normal(_) | Component::CurDir))
}

fn has_nan(definition: &VmDefinition) -> bool {
    let t = &definition.timeouts;
    [
        t.start,
        t.stop,
        t.pause,
        t.resume,
        t.save,
        t.restore,
        t.graceful_shutdown,
        t.vsock_connect,
    ]
    .into_iter()
    .flatten()
    .any(f64::is_nan)
}
