//! The C API as a C/C++ project gets it: installed under a prefix by
//! `scripts/install-c.sh`, found only through pkg-config (directly, and from `CMake`'s
//! `pkg_check_modules`), never through this tree's `include/` or `target/`.
//!
//! - the header's version macros are Cargo.toml's version;
//! - the installed header, library and `applevz.pc`; the C and C++ test programs, the C
//!   example and a `CMake` consumer built from them, run (also under valgrind);
//! - `tests/c/errors.c` walks every error kind through the C API: each message is
//!   worded for C (no Rust names, no doubled word).
//!
//! Needs `pkg-config` and `cmake` (`.ci/run` installs them); a missing one fails the
//! test, saying so, rather than passing without checking.

#![allow(clippy::similar_names)]

#[path = "support/cargo_build.rs"]
mod cargo_build;
#[path = "support/scratch.rs"]
mod scratch;

use scratch::Scratch;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn run(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|error| panic!("cannot run {command:?}: {error}"))
}

/// Runs `command`, which must succeed; its stdout.
fn run_ok(command: &mut Command) -> String {
    let output = run(command);
    assert!(
        output.status.success(),
        "{command:?} exited with {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        text(&output.stdout),
        text(&output.stderr)
    );
    text(&output.stdout)
}

fn tool(variable: &str, default: &str) -> String {
    std::env::var(variable).unwrap_or_else(|_| default.to_owned())
}

// ---------------------------------------------------------------------------------
// The version
// ---------------------------------------------------------------------------------

/// The header's version macros and the values Cargo.toml's version gives them.
fn version_macros() -> [(&'static str, String); 4] {
    [
        (
            "APPLEVZ_VERSION_MAJOR",
            env!("CARGO_PKG_VERSION_MAJOR").to_owned(),
        ),
        (
            "APPLEVZ_VERSION_MINOR",
            env!("CARGO_PKG_VERSION_MINOR").to_owned(),
        ),
        (
            "APPLEVZ_VERSION_PATCH",
            env!("CARGO_PKG_VERSION_PATCH").to_owned(),
        ),
        (
            "APPLEVZ_VERSION_STRING",
            format!("\"{}\"", env!("CARGO_PKG_VERSION")),
        ),
    ]
}

/// Cargo.toml's version is the one source: the header's macros must say the same.
/// After a version bump, `APPLEVZ_UPDATE_HEADER_VERSION=1 cargo test --test
/// capi_install` rewrites them (review the diff). The library's own
/// `applevz_version_number()` comes from Cargo.toml at build time; tests/c/lifecycle.c
/// checks that it equals the header's `APPLEVZ_VERSION_NUMBER`.
#[test]
fn the_header_version_is_cargo_tomls() {
    let path = Path::new(MANIFEST_DIR).join("include/applevz_vm.h");
    let header = std::fs::read_to_string(&path).unwrap();
    let update = std::env::var_os("APPLEVZ_UPDATE_HEADER_VERSION").is_some_and(|v| v == "1");
    let mut updated = Vec::new();
    let mut wrong = Vec::new();
    let mut found = BTreeSet::new();
    for line in header.lines() {
        let mut line = line.to_owned();
        for (name, value) in version_macros() {
            let Some(rest) = line.strip_prefix(&format!("#define {name} ")) else {
                continue;
            };
            found.insert(name);
            if rest.trim() != value {
                wrong.push(format!(
                    "{name} is {} in the header, {value} in Cargo.toml",
                    rest.trim()
                ));
                line = format!("#define {name} {value}");
            }
        }
        updated.push(line);
    }
    assert_eq!(found.len(), 4, "the header defines {found:?}");
    if update && !wrong.is_empty() {
        std::fs::write(&path, updated.join("\n") + "\n").unwrap();
        return;
    }
    assert!(
        wrong.is_empty(),
        "{}\n(APPLEVZ_UPDATE_HEADER_VERSION=1 cargo test --test capi_install rewrites them)",
        wrong.join("\n")
    );
    assert!(
        header.contains(
            "#define APPLEVZ_VERSION_NUMBER \\\n    (APPLEVZ_VERSION_MAJOR * 1000000 + \
             APPLEVZ_VERSION_MINOR * 1000 + APPLEVZ_VERSION_PATCH)"
        ),
        "APPLEVZ_VERSION_NUMBER is MAJOR * 1000000 + MINOR * 1000 + PATCH"
    );
}

// ---------------------------------------------------------------------------------
// The install
// ---------------------------------------------------------------------------------

/// Fails, saying what to install, when `program` is not there.
#[cfg_attr(not(applevz_simulator), allow(dead_code))]
fn require(program: &str) {
    let found = Command::new(program).arg("--version").output();
    assert!(
        found.is_ok_and(|output| output.status.success()),
        "{program} is not installed: apt-get install {program} (.ci/run does)"
    );
}

/// A prefix filled by scripts/install-c.sh with this test's build of the library.
#[cfg_attr(not(applevz_simulator), allow(dead_code))]
struct Installed {
    scratch: Scratch,
}

#[cfg_attr(not(applevz_simulator), allow(dead_code))]
impl Installed {
    fn new(name: &str) -> Self {
        require("pkg-config");
        let scratch = Scratch::new("install", name);
        let installed = Self { scratch };
        run_ok(
            Command::new("bash")
                .current_dir(MANIFEST_DIR)
                .arg("scripts/install-c.sh")
                .arg(installed.prefix())
                .args(cargo_build::lib_build_args()),
        );
        installed
    }

    fn prefix(&self) -> PathBuf {
        self.scratch.0.join("prefix")
    }

    fn pkg_config_path(&self) -> PathBuf {
        self.prefix().join("lib/pkgconfig")
    }

    /// `pkg-config ARGS applevz`, split into arguments.
    fn pkg_config(&self, args: &[&str]) -> Vec<String> {
        let stdout = run_ok(
            Command::new(tool("PKG_CONFIG", "pkg-config"))
                .env("PKG_CONFIG_PATH", self.pkg_config_path())
                .args(args)
                .arg("applevz"),
        );
        stdout.split_whitespace().map(str::to_owned).collect()
    }

    /// Compiles and links `source` (relative to the crate) with only what pkg-config
    /// says; the executable.
    fn build(&self, source: &str) -> PathBuf {
        let is_cpp = Path::new(source)
            .extension()
            .is_some_and(|extension| extension == "cpp");
        let (compiler, standard) = if is_cpp {
            (tool("CXX", "c++"), "-std=c++17")
        } else {
            (tool("CC", "cc"), "-std=c11")
        };
        let stem = Path::new(source).file_stem().unwrap().to_string_lossy();
        let exe = self.scratch.0.join(format!("{stem}-pkg-config"));
        run_ok(
            Command::new(compiler)
                .args([standard, "-Wall", "-Wextra", "-Werror", "-pedantic", "-g"])
                .args(self.pkg_config(&["--cflags"]))
                .arg(Path::new(MANIFEST_DIR).join(source))
                .args(self.pkg_config(&["--libs", "--static"]))
                .arg("-o")
                .arg(&exe),
        );
        exe
    }
}

/// Runs a test program (optionally under `wrapper`) with a fresh scratch directory and
/// no simulated-guest script; it must end with "N passed, 0 failed". Its stdout.
#[cfg(applevz_simulator)]
fn run_program(exe: &Path, wrapper: &[&str]) -> String {
    let scratch = Scratch::new("install", "program");
    let mut command = match wrapper.split_first() {
        Some((first, rest)) => {
            let mut command = Command::new(first);
            command.args(rest).arg(exe);
            command
        }
        None => Command::new(exe),
    };
    let stdout = run_ok(command.arg(&scratch.0).env_remove("APPLEVZ_SIM_GUEST"));
    let last = stdout.lines().last().unwrap_or_default();
    assert!(
        last.ends_with(" passed, 0 failed"),
        "{}: {last}",
        exe.display()
    );
    stdout
}

/// Every `error<TAB>KIND<TAB>what<TAB>message` line of tests/c/errors.c: every kind
/// from `INVALID_ARGUMENT` (1) to `NO_SAVED_STATE_PATH` (10) is there, and no message
/// names a Rust item or repeats a word.
fn check_c_wording(output: &str) {
    /// Rust spellings a C caller has no use for (after the C API's own names, which
    /// start with `applevz_` / `APPLEVZ_`, are taken out).
    const RUST_NAMES: [&str; 13] = [
        "()",
        "::",
        "shutdown(",
        "Poweroff",
        "Powerdown",
        "Halt",
        "wait_for_state",
        "VirtualMachine",
        "VmConfigBuilder",
        "OnGracefulTimeout",
        "ForceStop",
        "generic_platform",
        "saved_state_path",
    ];
    let mut kinds = BTreeSet::new();
    for line in output.lines().filter(|line| line.starts_with("error\t")) {
        let fields: Vec<&str> = line.splitn(4, '\t').collect();
        let [_, kind, what, message] = fields[..] else {
            panic!("a malformed line: {line:?}");
        };
        kinds.insert(kind.parse::<i32>().expect("a kind"));
        let words: Vec<&str> = message.split_whitespace().collect();
        let without_c_names: Vec<&str> = words
            .iter()
            .copied()
            .filter(|word| !word.contains("applevz_") && !word.contains("APPLEVZ_"))
            .collect();
        let rest = without_c_names.join(" ");
        for name in RUST_NAMES {
            assert!(!rest.contains(name), "{what}: {message:?} names {name:?}");
        }
        // Paths (vm/vm.toml) are not words.
        let normalized: Vec<String> = words
            .iter()
            .filter(|word| !word.contains('/'))
            .map(|word| {
                word.trim_matches(|c: char| !c.is_alphanumeric())
                    .to_lowercase()
            })
            .collect();
        for pair in normalized.windows(2) {
            assert!(
                pair[0].len() < 3 || pair[0] != pair[1],
                "{what}: {message:?} repeats {:?}",
                pair[0]
            );
        }
    }
    assert_eq!(
        kinds,
        (1..=10).collect::<BTreeSet<i32>>(),
        "the error kinds errors.c produced:\n{output}"
    );
}

#[cfg(applevz_simulator)]
#[test]
fn the_installed_copy_builds_through_pkg_config_and_cmake_and_runs() {
    require("cmake");
    let installed = Installed::new("plain");
    let prefix = installed.prefix();

    // What was installed, and what pkg-config says about it.
    let pc = std::fs::read_to_string(installed.pkg_config_path().join("applevz.pc")).unwrap();
    assert!(
        pc.contains(&format!("prefix={}\n", prefix.display())),
        "{pc}"
    );
    assert!(pc.contains("Libs.private: "), "{pc}");
    assert!(prefix.join("lib/libapplevz.a").is_file());
    assert!(prefix.join("include/applevz_vm.h").is_file());
    assert!(
        !prefix.join("include/applevz.h").exists(),
        "the internal ABI is not installed"
    );
    assert_eq!(
        installed.pkg_config(&["--modversion"]),
        [env!("CARGO_PKG_VERSION")]
    );
    assert_eq!(
        installed.pkg_config(&["--cflags"]),
        [format!("-I{}/include", prefix.display())]
    );
    let libs = installed.pkg_config(&["--libs", "--static"]);
    for flag in [
        format!("-L{}/lib", prefix.display()),
        "-lapplevz".into(),
        "-lpthread".into(),
        "-ldl".into(),
    ] {
        assert!(libs.contains(&flag), "{flag} missing from {libs:?}");
    }

    // Built with pkg-config's flags only.
    run_program(&installed.build("tests/c/lifecycle.c"), &[]);
    run_program(&installed.build("tests/c/multipass_vm.cpp"), &[]);
    check_c_wording(&run_program(&installed.build("tests/c/errors.c"), &[]));

    // A CMake project: find_package(PkgConfig) + pkg_check_modules(applevz).
    let build = installed.scratch.0.join("cmake-build");
    let cmake = |args: &[&std::ffi::OsStr]| {
        run_ok(
            Command::new("cmake")
                .env("PKG_CONFIG_PATH", installed.pkg_config_path())
                .args(args),
        )
    };
    let source = Path::new(MANIFEST_DIR).join("tests/c/cmake");
    let configured = cmake(&[
        "-S".as_ref(),
        source.as_os_str(),
        "-B".as_ref(),
        build.as_os_str(),
    ]);
    assert!(
        configured.contains("Checking for module 'applevz'"),
        "{configured}"
    );
    cmake(&["--build".as_ref(), build.as_os_str()]);
    run_program(&build.join("lifecycle"), &[]);
    run_program(&build.join("multipass_vm"), &[]);
    check_c_wording(&run_program(&build.join("errors"), &[]));

    // The example, on a definition made like the tool's.
    let vm = installed.scratch.0.join("vm");
    std::fs::create_dir(&vm).unwrap();
    std::fs::write(vm.join("vmlinuz"), b"not really a kernel").unwrap();
    std::fs::write(
        vm.join("vm.toml"),
        "memory = \"512MiB\"\nsaved_state = \"vm.state\"\n[boot]\nkernel = \"vmlinuz\"\n",
    )
    .unwrap();
    let stdout = run_ok(
        Command::new(build.join("vm_lifecycle"))
            .arg(vm.join("vm.toml"))
            .env_remove("APPLEVZ_SIM_GUEST"),
    );
    assert!(stdout.contains("finally: stopped\n"), "{stdout}");
}

#[cfg(all(applevz_simulator, applevz_valgrind))]
#[path = "support/valgrind.rs"]
mod valgrind;
#[cfg(all(applevz_simulator, applevz_valgrind))]
use valgrind::VALGRIND;

#[cfg(applevz_simulator)]
#[cfg_attr(
    not(applevz_valgrind),
    ignore = "valgrind is not installed (apt-get install valgrind; build.rs looks for it on PATH)"
)]
#[test]
fn the_installed_copy_runs_under_valgrind() {
    // Run with --include-ignored where valgrind is missing: a failure, never a pass.
    #[cfg(not(applevz_valgrind))]
    panic!("valgrind is not installed: the installed copy did not run under it");
    #[cfg(applevz_valgrind)]
    {
        let installed = Installed::new("valgrind");
        run_program(&installed.build("tests/c/lifecycle.c"), &VALGRIND);
        run_program(&installed.build("tests/c/multipass_vm.cpp"), &VALGRIND);
        check_c_wording(&run_program(
            &installed.build("tests/c/errors.c"),
            &VALGRIND,
        ));
    }
}

#[test]
fn the_wording_check_rejects_rust_names_and_doubled_words() {
    let good = (1..=10)
        .map(|kind| format!("error\t{kind}\tx\tapplevz_vm_start boots it"))
        .collect::<Vec<_>>()
        .join("\n");
    check_c_wording(&good);
    for bad in [
        "cannot pause while the VM is stopped: start() boots it",
        "shutdown(Poweroff) discards it",
        "the VM is suspended: suspended: applevz_vm_start restores it",
        "configure OnGracefulTimeout::ForceStop",
    ] {
        let output = format!("{good}\nerror\t2\tbad\t{bad}\n");
        let caught = std::panic::catch_unwind(|| check_c_wording(&output));
        assert!(caught.is_err(), "{bad:?} passed the check");
    }
}
