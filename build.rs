//! Builds the native half of applevz for the *target* (not the host):
//! - macOS targets: the ARC Objective-C shim (every `.m` file in `shim/`: `applevz.m` and
//!   the `applevz_*.m` it is split into), linked against Virtualization, Foundation and
//!   CoreFoundation;
//! - every other target: the portable C simulator in `shim/sim/`, which also provides
//!   the few CoreFoundation functions the Rust side calls. Rust code sees the cfg
//!   `applevz_simulator` there.
//!
//! With the `bindgen` feature it also regenerates the raw bindings from the header and
//! fails when they differ from the checked-in `src/ffi/sys/*.rs` (set
//! `APPLEVZ_UPDATE_BINDINGS=1` to write them instead).

use std::env;
use std::path::{Path, PathBuf};

/// The oldest macOS the shim's baseline features need (`stop` is macOS 12); newer
/// features are guarded with `@available` inside the shim.
const DEFAULT_MACOS_DEPLOYMENT_TARGET: &str = "12.0";

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let target_os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();

    println!("cargo::rustc-check-cfg=cfg(applevz_simulator)");
    println!("cargo::rerun-if-changed=include/applevz.h");
    // The shim's files (its .m files and private header in shim/). A file added there is
    // noticed once a listed one changes: in practice the internal header, which declares
    // what the new file provides.
    for path in shim_files(&manifest_dir) {
        println!("cargo::rerun-if-changed={}", path.display());
    }
    println!("cargo::rerun-if-changed=shim/sim");
    println!("cargo::rerun-if-env-changed=MACOSX_DEPLOYMENT_TARGET");
    println!("cargo::rerun-if-env-changed=APPLEVZ_UPDATE_BINDINGS");

    println!("cargo::rerun-if-env-changed=APPLEVZ_CHECK_AS_REAL_SHIM");
    if std::env::var_os("APPLEVZ_CHECK_AS_REAL_SHIM").is_some() {
        // For `cargo check` only (nothing is linked): type-check the crate as it is
        // built against the real shim, without the simulator's cfg, on any host.
        println!(
            "cargo::warning=APPLEVZ_CHECK_AS_REAL_SHIM: no native half is built; only `cargo check` is meaningful"
        );
    } else if target_os == "macos" {
        build_objc_shim(&manifest_dir);
    } else {
        build_simulator(&manifest_dir);
        println!("cargo::rustc-cfg=applevz_simulator");
    }

    shim_check_tools();

    // tests/capi.rs runs its C and C++ programs under valgrind where it is installed
    // and reports those tests as ignored elsewhere (never as passed).
    println!("cargo::rustc-check-cfg=cfg(applevz_valgrind)");
    println!("cargo::rerun-if-env-changed=PATH");
    if on_path("valgrind") {
        println!("cargo::rustc-cfg=applevz_valgrind");
    }

    #[cfg(feature = "bindgen")]
    bindings::check_or_update(&manifest_dir);
}

/// True when an executable `program` is on `PATH`.
fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    env::var_os("PATH").is_some_and(|path| {
        env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(program))
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
    })
}

/// `tests/shim_compile.rs` needs clang-19 (and llvm-nm-19 for its symbol tests) on the
/// host. When one is missing, its tests are marked ignored with the reason, through the
/// cfgs `applevz_no_clang19` / `applevz_no_llvm_nm19`, instead of passing without
/// checking anything. Under `CI=true` a missing tool is not excused (the cfg is not
/// emitted, so the tests run and fail saying what is missing), except where
/// `APPLEVZ_SHIM_CHECK_OPTIONAL=1` says the host is not meant to run them (the macOS
/// workflow: a Mac compiles the real shim against the real SDK instead).
///
/// `$CLANG` / `$LLVM_NM` name other tools, as for scripts/check-shim.sh. Cargo reruns
/// this when those variables change, when a tool found goes away, and, while one is
/// missing, when a directory on `PATH` changes (installing it adds a file there). Not
/// on every change of `PATH` itself: tools that run cargo with another `PATH` (editors)
/// would rebuild the native half each time.
fn shim_check_tools() {
    println!("cargo::rustc-check-cfg=cfg(applevz_no_clang19)");
    println!("cargo::rustc-check-cfg=cfg(applevz_no_llvm_nm19)");
    for variable in ["CLANG", "LLVM_NM", "CI", "APPLEVZ_SHIM_CHECK_OPTIONAL"] {
        println!("cargo::rerun-if-env-changed={variable}");
    }
    let required = env::var("CI").is_ok_and(|v| v == "true")
        && !env::var("APPLEVZ_SHIM_CHECK_OPTIONAL").is_ok_and(|v| v == "1");
    let mut watching_path = false;
    for (variable, default, cfg) in [
        ("CLANG", "clang-19", "applevz_no_clang19"),
        ("LLVM_NM", "llvm-nm-19", "applevz_no_llvm_nm19"),
    ] {
        let tool = env::var(variable)
            .ok()
            .filter(|v| !v.trim().is_empty())
            .unwrap_or_else(|| default.to_string());
        if let Some(path) = find_program(&tool) {
            println!("cargo::rerun-if-changed={}", path.display());
            continue;
        }
        if !watching_path {
            watching_path = true;
            for dir in path_dirs() {
                println!("cargo::rerun-if-changed={}", dir.display());
            }
        }
        if !required {
            println!("cargo::rustc-cfg={cfg}");
        }
    }
}

/// The directories on `PATH` that exist, canonical and without duplicates.
fn path_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = env::var_os("PATH")
        .map(|path| env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter(|dir| dir.is_absolute())
        .filter_map(|dir| dir.canonicalize().ok())
        .filter(|dir| dir.is_dir())
        .collect();
    dirs.sort();
    dirs.dedup();
    dirs
}

/// `program` as the shell would find it: a path when it contains a slash, otherwise the
/// first executable file of that name in a `PATH` directory.
fn find_program(program: &str) -> Option<PathBuf> {
    let is_executable = |path: &Path| {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            path.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        }
        #[cfg(not(unix))]
        {
            path.is_file()
        }
    };
    if program.contains('/') {
        let path = PathBuf::from(program);
        return is_executable(&path).then_some(path);
    }
    env::var_os("PATH")
        .map(|path| env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join(program))
        .find(|path| is_executable(path))
}

/// The top-level files of `shim/` (the macOS shim's `.m` files and its private header),
/// sorted; `shim/sim/` and `shim/check/` are not among them.
fn shim_files(manifest_dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(manifest_dir.join("shim"))
        .expect("shim/ exists")
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            path.is_file() && path.extension().is_some_and(|ext| ext == "m" || ext == "h")
        })
        .collect();
    files.sort();
    files
}

fn build_objc_shim(manifest_dir: &Path) {
    // Every .m file in shim/ (scripts/check-shim.sh and tests/shim_compile.rs check the
    // same set); each is compiled with the same flags.
    let sources: Vec<PathBuf> = shim_files(manifest_dir)
        .into_iter()
        .filter(|path| path.extension().is_some_and(|ext| ext == "m"))
        .collect();
    assert!(!sources.is_empty(), "no Objective-C sources in shim/");
    let mut build = cc::Build::new();
    build
        .files(&sources)
        .include(manifest_dir.join("include"))
        .flag("-fobjc-arc")
        // ARC releases the objects of the frames an Objective-C exception unwinds on its
        // way to the shim's @catch (without it they leak); shim/check/clang-flags has it too.
        .flag("-fobjc-arc-exceptions")
        .flag("-Wall")
        .flag("-Wextra")
        .flag("-Wunguarded-availability");
    // cc passes MACOSX_DEPLOYMENT_TARGET on when it is set; otherwise pin the documented
    // minimum rather than rustc's older default, so @available checks mean what we say.
    if env::var_os("MACOSX_DEPLOYMENT_TARGET").is_none() {
        build.flag(format!(
            "-mmacosx-version-min={DEFAULT_MACOS_DEPLOYMENT_TARGET}"
        ));
    }
    build.compile("applevz_shim");
    for framework in ["Virtualization", "Foundation", "CoreFoundation"] {
        println!("cargo::rustc-link-lib=framework={framework}");
    }
    // The ARC runtime calls (objc_retain, objc_autoreleasePoolPush, …) live in
    // libobjc; rustc links with the C driver, which does not add it by itself.
    println!("cargo::rustc-link-lib=objc");
}

fn build_simulator(manifest_dir: &Path) {
    let sim_dir = manifest_dir.join("shim/sim");
    let mut sources: Vec<PathBuf> = std::fs::read_dir(&sim_dir)
        .expect("shim/sim exists")
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "c"))
        .collect();
    sources.sort();
    cc::Build::new()
        .files(&sources)
        .include(manifest_dir.join("include"))
        .include(&sim_dir)
        .std("c11")
        .define("_GNU_SOURCE", None)
        .flag_if_supported("-pthread")
        .warnings(true)
        .extra_warnings(true)
        .compile("applevz_sim");
    println!("cargo::rustc-link-lib=pthread");
}

#[cfg(feature = "bindgen")]
mod bindings {
    use std::path::Path;

    /// One generated file: its header, the items it covers, and the checked-in output.
    struct Generated {
        header: &'static str,
        functions: &'static str,
        constants: &'static str,
        /// Types that come from the other generated file instead.
        imported_types: Option<&'static str>,
        output: &'static str,
    }

    const GENERATED: [Generated; 2] = [
        Generated {
            header: "include/applevz.h",
            functions: "avz_.*",
            constants: "AVZ_.*",
            imported_types: None,
            output: "src/ffi/sys/bindings.rs",
        },
        Generated {
            header: "shim/sim/avz_sim.h",
            functions: "avz_sim_.*",
            constants: "AVZ_SIM_.*",
            imported_types: Some("avz_config|avz_vm"),
            output: "src/ffi/sys/sim_bindings.rs",
        },
    ];

    pub fn check_or_update(manifest_dir: &Path) {
        let update = std::env::var_os("APPLEVZ_UPDATE_BINDINGS").is_some_and(|v| v == "1");
        for file in &GENERATED {
            let generated = generate(manifest_dir, file);
            let checked_in_path = manifest_dir.join(file.output);
            let checked_in = std::fs::read_to_string(&checked_in_path).unwrap_or_default();
            if generated == checked_in {
                continue;
            }
            if update {
                std::fs::write(&checked_in_path, generated).expect("write bindings");
            } else {
                panic!(
                    "{} no longer matches {}: regenerate with \
                     `APPLEVZ_UPDATE_BINDINGS=1 cargo build --features bindgen` and review the diff",
                    file.output, file.header
                );
            }
        }
    }

    fn generate(manifest_dir: &Path, file: &Generated) -> String {
        let mut builder = bindgen::Builder::default()
            .header(manifest_dir.join(file.header).to_string_lossy())
            // Generate for a non-Apple target so the header's portable CF declarations
            // are used; the items themselves are identical on every target.
            .clang_arg("--target=x86_64-unknown-linux-gnu")
            .rust_edition(bindgen::RustEdition::Edition2024)
            .allowlist_function(file.functions)
            .allowlist_var(file.constants)
            .blocklist_type("CF.*|__CF.*")
            .layout_tests(false)
            .formatter(bindgen::Formatter::Prettyplease);
        if let Some(types) = file.imported_types {
            builder = builder
                .blocklist_type(types)
                .raw_line("use super::bindings::{avz_config, avz_vm};");
        } else {
            builder = builder
                .allowlist_type("avz_.*")
                .raw_line("use super::cf::CFErrorRef;");
        }
        builder.generate().expect("bindgen").to_string()
    }
}
