//! Compile checks of the macOS shim on any host. The shim is every `.m` file in `shim/`
//! (`shim/applevz.m` and the `applevz_*.m` files it is split into, which share
//! `shim/applevz_internal.h`): the same set build.rs compiles on a Mac.
//!
//! The same checks as `scripts/check-shim.sh`, done with `std::process::Command`:
//! clang (`$CLANG`, default `clang-19`) compiles each shim file with `-fobjc-arc -Werror`
//! (unguarded availability is an error) for each target in `shim/check/targets`,
//! against the hand-written declarations in `shim/check/sdk/`, and must report
//! nothing; each file in `shim/check/mistakes/` must fail on its `CHECK-FAIL:` targets
//! with every `CHECK-DIAG:` text and no other error, and compile cleanly on its
//! `CHECK-PASS:` lines. Flags come from `shim/check/clang-flags`.
//!
//! Symbol completeness, which `-fsyntax-only` cannot see: for each target every shim
//! file is compiled to a Mach-O object (the same flags without `-fsyntax-only`) and
//! llvm-nm (`$LLVM_NM`, default `llvm-nm-19`, Debian package `llvm-19`) must list, across
//! the objects together, an exported (`external`, not `private external`) text symbol
//! `_avz_NAME` for every function `avz_NAME` declared in `include/applevz.h` (as
//! preprocessed for that target, so comments do not count), no exported `_avz_` symbol
//! the header does not declare (the files' shared helpers are hidden), and no `_avz_`
//! symbol one object needs and none defines. Two more tests check the check: a function
//! renamed with `-D`, and the shim without `shim/applevz_util.m`, must be reported.
//!
//! Without clang (or, for the symbol tests, llvm-nm) on the host the tests that need it
//! are reported as *ignored*, with the reason, never as passed: build.rs looks for the
//! tools and sets the cfg `applevz_no_clang19` / `applevz_no_llvm_nm19` when one is
//! missing. Under `CI=true` it does not (unless `APPLEVZ_SHIM_CHECK_OPTIONAL=1`, which
//! the macOS workflow sets: a Mac builds the real shim against the real SDK), so there
//! a missing tool makes these tests fail. CI installs clang-19 and llvm-19. After
//! installing them locally, the next cargo run notices (build.rs watches `PATH`'s
//! directories while a tool is missing).
//!
//! The two list checks need no tools and always run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicUsize;

/// Numbers the symbol tests' object directories (tests run in parallel).
static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Non-comment, non-blank lines of a file under the repository root.
fn lines_of(relative: &str) -> Vec<String> {
    let path = root().join(relative);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(String::from)
        .collect()
}

/// `$variable` or `default`, checked to run: a test that needs the tool is ignored when
/// build.rs did not find it, so one that runs and cannot find it fails (CI, or a tool
/// removed since the build).
fn tool(variable: &str, default: &str, package: &str) -> String {
    let tool = std::env::var(variable)
        .ok()
        .filter(|c| !c.trim().is_empty())
        .unwrap_or_else(|| default.to_string());
    match Command::new(&tool).arg("--version").output() {
        Ok(output) if output.status.success() => tool,
        _ => panic!(
            "{tool} is needed and cannot be run (apt-get install {package}, or set {variable}); \
             without CI=true, a build that does not find it marks these tests ignored"
        ),
    }
}

/// The clang to use (`$CLANG`, default `clang-19`).
fn clang() -> String {
    tool("CLANG", "clang-19", "clang-19")
}

/// The llvm-nm to use (`$LLVM_NM`, default `llvm-nm-19`).
fn llvm_nm() -> String {
    tool("LLVM_NM", "llvm-nm-19", "llvm-19")
}

struct Outcome {
    success: bool,
    diagnostics: String,
}

impl Outcome {
    fn errors(&self) -> Vec<&str> {
        self.diagnostics
            .lines()
            .filter(|l| l.contains("error:"))
            .collect()
    }
}

fn compile(clang: &str, target: &str, file: &Path, extra: &[String]) -> Outcome {
    let output = Command::new(clang)
        .current_dir(root())
        .arg("-target")
        .arg(target)
        .args(lines_of("shim/check/clang-flags"))
        .args(extra)
        .arg(file)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {clang}: {e}"));
    let mut diagnostics = String::from_utf8_lossy(&output.stderr).into_owned();
    diagnostics.push_str(&String::from_utf8_lossy(&output.stdout));
    Outcome {
        success: output.status.success(),
        diagnostics,
    }
}

/// The shim's sources: every `.m` file in `shim/` (as build.rs compiles them), sorted,
/// relative to the repository root.
fn shim_sources() -> Vec<String> {
    let mut sources: Vec<String> = std::fs::read_dir(root().join("shim"))
        .expect("shim/ exists")
        .map(|entry| {
            entry
                .expect("readable entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        // Exactly `.m`, as build.rs and scripts/check-shim.sh pick them (a `.M` file
        // would be Objective-C++ to clang).
        .filter(|name| std::path::Path::new(name).extension() == Some(std::ffi::OsStr::new("m")))
        .map(|name| format!("shim/{name}"))
        .collect();
    sources.sort();
    assert!(
        sources.iter().any(|s| s == "shim/applevz.m"),
        "shim/applevz.m is missing from the shim's sources: {sources:?}"
    );
    sources
}

/// The flags for compiling to an object: `shim/check/clang-flags` without `-fsyntax-only`.
fn object_flags() -> Vec<String> {
    lines_of("shim/check/clang-flags")
        .into_iter()
        .filter(|flag| flag != "-fsyntax-only")
        .collect()
}

/// The `avz_` functions `include/applevz.h` declares for `target`, sorted: every
/// identifier `avz_NAME` followed by `(` in the preprocessed header (no comments left;
/// typedef names are followed by `)` or `;`).
fn declared_functions(clang: &str, target: &str) -> Vec<String> {
    let output = Command::new(clang)
        .current_dir(root())
        .arg("-target")
        .arg(target)
        .args(object_flags())
        .args(["-E", "-P", "include/applevz.h"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {clang}: {e}"));
    assert!(
        output.status.success(),
        "cannot preprocess include/applevz.h for {target}:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    let bytes = text.as_bytes();
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut names = Vec::new();
    let mut at = 0;
    while let Some(found) = text[at..].find("avz_") {
        let start = at + found;
        let mut end = start;
        while end < bytes.len() && is_ident(bytes[end]) {
            end += 1;
        }
        at = end;
        if start > 0 && is_ident(bytes[start - 1]) {
            continue; // part of a longer identifier
        }
        let rest = text[end..].trim_start();
        if rest.starts_with('(') {
            names.push(text[start..end].to_string());
        }
    }
    names.sort();
    names.dedup();
    names
}

/// The exported text symbols `_avz_NAME` of a Mach-O object, as `avz_NAME`, sorted.
/// llvm-nm's darwin format tells `external` from `private external` (hidden).
fn exported_functions(nm: &str, objects: &[PathBuf]) -> Vec<String> {
    avz_symbols(nm, objects, "--defined-only", "(__TEXT,__text) external _")
}

/// Every `_avz_NAME` the objects define, exported or hidden (`private external`).
fn provided_symbols(nm: &str, objects: &[PathBuf]) -> Vec<String> {
    avz_symbols(nm, objects, "--defined-only", " _")
}

/// Every `_avz_NAME` the objects refer to without defining it.
fn needed_symbols(nm: &str, objects: &[PathBuf]) -> Vec<String> {
    avz_symbols(nm, objects, "--undefined-only", "(undefined) external _")
}

/// The `avz_NAME`s of the lines of `llvm-nm -m <selection> objects` that contain
/// `marker` followed by `avz_NAME` (to the end of the line), sorted.
fn avz_symbols(nm: &str, objects: &[PathBuf], selection: &str, marker: &str) -> Vec<String> {
    let output = Command::new(nm)
        .args(["-m", selection])
        .args(objects)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {nm}: {e}"));
    assert!(
        output.status.success(),
        "{nm} failed on {objects:?}:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut names: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let (_, symbol) = line.rsplit_once(marker)?;
            let symbol = symbol.trim();
            (symbol.starts_with("avz_")
                && symbol
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_'))
            .then(|| symbol.to_string())
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// What the symbol check found: (declared but not exported, exported but not declared,
/// needed by an object but defined by none, how many the header declares).
struct SymbolReport {
    missing: Vec<String>,
    extra: Vec<String>,
    unresolved: Vec<String>,
    declared: usize,
}

/// Compiles `sources` to objects for `target` (with `extra` clang arguments) and
/// compares their exported `avz_` functions with the header's declarations.
fn symbol_report(
    clang: &str,
    nm: &str,
    target: &str,
    extra: &[String],
    sources: &[String],
) -> SymbolReport {
    let declared = declared_functions(clang, target);
    assert!(
        !declared.is_empty(),
        "found no avz_ function declarations in include/applevz.h for {target}"
    );
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "applevz-shim-{target}-{}-{}",
        std::process::id(),
        NEXT_DIR.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("create a directory for the objects");
    let objects: Vec<PathBuf> = sources
        .iter()
        .map(|source| {
            let stem = Path::new(source).file_stem().expect("a file name");
            let object = dir.join(stem).with_extension("o");
            let output = Command::new(clang)
                .current_dir(root())
                .arg("-target")
                .arg(target)
                .args(object_flags())
                .args(extra)
                .arg("-c")
                .arg("-o")
                .arg(&object)
                .arg(source)
                .output()
                .unwrap_or_else(|e| panic!("cannot run {clang}: {e}"));
            let mut diagnostics = String::from_utf8_lossy(&output.stderr).into_owned();
            diagnostics.push_str(&String::from_utf8_lossy(&output.stdout));
            assert!(
                output.status.success() && diagnostics.trim().is_empty(),
                "{source} must compile to an object for {target} {extra:?} with no \
                 diagnostics:\n{diagnostics}"
            );
            object
        })
        .collect();
    let exported = exported_functions(nm, &objects);
    let provided = provided_symbols(nm, &objects);
    let needed = needed_symbols(nm, &objects);
    let _ = std::fs::remove_dir_all(&dir);
    SymbolReport {
        missing: declared
            .iter()
            .filter(|name| !exported.contains(name))
            .cloned()
            .collect(),
        extra: exported
            .iter()
            .filter(|name| !declared.contains(name))
            .cloned()
            .collect(),
        unresolved: needed
            .iter()
            .filter(|name| !provided.contains(name))
            .cloned()
            .collect(),
        declared: declared.len(),
    }
}

fn check_symbols(target: &str) {
    assert!(
        lines_of("shim/check/targets").iter().any(|t| t == target),
        "{target} is not listed in shim/check/targets"
    );
    let clang = clang();
    let nm = llvm_nm();
    let sources = shim_sources();
    let report = symbol_report(&clang, &nm, target, &[], &sources);
    assert!(
        report.missing.is_empty(),
        "declared in include/applevz.h but not defined and exported by the shim for \
         {target}: {:?}",
        report.missing
    );
    assert!(
        report.extra.is_empty(),
        "exported by the shim for {target} but not declared in include/applevz.h: {:?}",
        report.extra
    );
    assert!(
        report.unresolved.is_empty(),
        "needed by one of the shim's objects for {target} but defined by none: {:?}",
        report.unresolved
    );
    eprintln!(
        "the shim's {} objects for {target} export all {} avz_ functions of the header",
        sources.len(),
        report.declared
    );
}

fn check_shim(target: &str) {
    assert!(
        lines_of("shim/check/targets").iter().any(|t| t == target),
        "{target} is not listed in shim/check/targets"
    );
    let clang = clang();
    for source in shim_sources() {
        let outcome = compile(&clang, target, Path::new(&source), &[]);
        assert!(
            outcome.success && outcome.diagnostics.trim().is_empty(),
            "{source} must compile for {target} with no diagnostics:\n{}",
            outcome.diagnostics
        );
    }
}

/// The `CHECK-...:` directives of a mistake file.
struct Mistake {
    path: PathBuf,
    fails: Vec<Vec<String>>,
    diags: Vec<String>,
    passes: Vec<Vec<String>>,
}

fn parse_mistake(name: &str) -> Mistake {
    let relative = format!("shim/check/mistakes/{name}");
    let text = std::fs::read_to_string(root().join(&relative))
        .unwrap_or_else(|e| panic!("cannot read {relative}: {e}"));
    let directive = |key: &str| -> Vec<String> {
        text.lines()
            .filter_map(|line| {
                let line =
                    line.trim_start_matches(|c: char| c.is_whitespace() || c == '/' || c == '*');
                line.strip_prefix(key)?
                    .strip_prefix(':')
                    .map(|v| v.trim().to_string())
            })
            .collect()
    };
    let words = |line: String| {
        line.split_whitespace()
            .map(String::from)
            .collect::<Vec<_>>()
    };
    let mistake = Mistake {
        path: PathBuf::from(relative),
        fails: directive("CHECK-FAIL").into_iter().map(words).collect(),
        diags: directive("CHECK-DIAG"),
        passes: directive("CHECK-PASS").into_iter().map(words).collect(),
    };
    assert!(
        !mistake.fails.is_empty() && !mistake.diags.is_empty() && !mistake.passes.is_empty(),
        "{name} needs CHECK-FAIL, CHECK-DIAG and CHECK-PASS lines"
    );
    mistake
}

fn check_mistake(name: &str) {
    let mistake = parse_mistake(name);
    let clang = clang();
    let file = mistake.path.display();
    for args in &mistake.fails {
        let outcome = compile(&clang, &args[0], &mistake.path, &args[1..]);
        let diagnostics = &outcome.diagnostics;
        assert!(
            !outcome.success,
            "{file} must fail for {args:?}, but compiled:\n{diagnostics}"
        );
        for diag in &mistake.diags {
            assert!(
                diagnostics.contains(diag.as_str()),
                "{file} for {args:?} failed without the expected diagnostic\n  {diag}\n{diagnostics}"
            );
        }
        let unexpected: Vec<&str> = outcome
            .errors()
            .into_iter()
            .filter(|error| !mistake.diags.iter().any(|d| error.contains(d.as_str())))
            .collect();
        assert!(
            unexpected.is_empty(),
            "{file} for {args:?} also failed for another reason: {unexpected:#?}"
        );
    }
    for args in &mistake.passes {
        let outcome = compile(&clang, &args[0], &mistake.path, &args[1..]);
        assert!(
            outcome.success && outcome.diagnostics.trim().is_empty(),
            "{file} must compile for {args:?} (control), but:\n{}",
            outcome.diagnostics
        );
    }
}

#[test]
fn targets_list_matches_the_tests() {
    let mut listed = lines_of("shim/check/targets");
    listed.sort();
    let mut tested = vec![
        "arm64-apple-macos14",
        "arm64-apple-macos12",
        "x86_64-apple-macos12",
        "x86_64-apple-macos11",
    ];
    tested.sort_unstable();
    assert_eq!(
        listed, tested,
        "add a #[test] per target in shim/check/targets"
    );
}

#[test]
fn mistakes_dir_matches_the_tests() {
    let mut found: Vec<String> = std::fs::read_dir(root().join("shim/check/mistakes"))
        .expect("shim/check/mistakes exists")
        .map(|entry| {
            entry
                .expect("readable entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|name| Path::new(name).extension().is_some_and(|ext| ext == "m"))
        .collect();
    found.sort();
    assert_eq!(
        found,
        [
            "a_missing_bridge_cast.m",
            "b_misspelled_selector.m",
            "c_unguarded_availability.m",
            "d_save_restore_on_intel.m",
        ],
        "add a #[test] per file in shim/check/mistakes"
    );
}

#[test]
#[cfg_attr(
    applevz_no_clang19,
    ignore = "clang-19 not installed (apt-get install clang-19, or set CLANG)"
)]
fn shim_compiles_for_arm64_macos14() {
    check_shim("arm64-apple-macos14");
}

#[test]
#[cfg_attr(
    applevz_no_clang19,
    ignore = "clang-19 not installed (apt-get install clang-19, or set CLANG)"
)]
fn shim_compiles_for_arm64_macos12() {
    check_shim("arm64-apple-macos12");
}

#[test]
#[cfg_attr(
    applevz_no_clang19,
    ignore = "clang-19 not installed (apt-get install clang-19, or set CLANG)"
)]
fn shim_compiles_for_x86_64_macos12() {
    check_shim("x86_64-apple-macos12");
}

#[test]
#[cfg_attr(
    applevz_no_clang19,
    ignore = "clang-19 not installed (apt-get install clang-19, or set CLANG)"
)]
fn shim_compiles_for_x86_64_macos11() {
    check_shim("x86_64-apple-macos11");
}

#[test]
#[cfg_attr(
    applevz_no_clang19,
    ignore = "clang-19 not installed (apt-get install clang-19, or set CLANG)"
)]
fn mistake_a_missing_bridge_cast_is_rejected() {
    check_mistake("a_missing_bridge_cast.m");
}

#[test]
#[cfg_attr(
    applevz_no_clang19,
    ignore = "clang-19 not installed (apt-get install clang-19, or set CLANG)"
)]
fn mistake_b_misspelled_selector_is_rejected() {
    check_mistake("b_misspelled_selector.m");
}

#[test]
#[cfg_attr(
    applevz_no_clang19,
    ignore = "clang-19 not installed (apt-get install clang-19, or set CLANG)"
)]
fn mistake_c_unguarded_availability_is_rejected() {
    check_mistake("c_unguarded_availability.m");
}

#[test]
#[cfg_attr(
    applevz_no_clang19,
    ignore = "clang-19 not installed (apt-get install clang-19, or set CLANG)"
)]
fn mistake_d_save_restore_on_intel_is_rejected() {
    check_mistake("d_save_restore_on_intel.m");
}

#[test]
#[cfg_attr(
    any(applevz_no_clang19, applevz_no_llvm_nm19),
    ignore = "clang-19 or llvm-nm-19 not installed (apt-get install clang-19 llvm-19, or set CLANG and LLVM_NM)"
)]
fn shim_exports_every_header_function_for_arm64_macos14() {
    check_symbols("arm64-apple-macos14");
}

#[test]
#[cfg_attr(
    any(applevz_no_clang19, applevz_no_llvm_nm19),
    ignore = "clang-19 or llvm-nm-19 not installed (apt-get install clang-19 llvm-19, or set CLANG and LLVM_NM)"
)]
fn shim_exports_every_header_function_for_arm64_macos12() {
    check_symbols("arm64-apple-macos12");
}

#[test]
#[cfg_attr(
    any(applevz_no_clang19, applevz_no_llvm_nm19),
    ignore = "clang-19 or llvm-nm-19 not installed (apt-get install clang-19 llvm-19, or set CLANG and LLVM_NM)"
)]
fn shim_exports_every_header_function_for_x86_64_macos12() {
    check_symbols("x86_64-apple-macos12");
}

#[test]
#[cfg_attr(
    any(applevz_no_clang19, applevz_no_llvm_nm19),
    ignore = "clang-19 or llvm-nm-19 not installed (apt-get install clang-19 llvm-19, or set CLANG and LLVM_NM)"
)]
fn shim_exports_every_header_function_for_x86_64_macos11() {
    check_symbols("x86_64-apple-macos11");
}

/// The symbol check itself: with one function renamed by the preprocessor (declaration
/// and definition alike, so the shim still compiles cleanly) it must report the name
/// as missing and the new one as undeclared.
#[test]
#[cfg_attr(
    any(applevz_no_clang19, applevz_no_llvm_nm19),
    ignore = "clang-19 or llvm-nm-19 not installed (apt-get install clang-19 llvm-19, or set CLANG and LLVM_NM)"
)]
fn symbol_check_reports_a_renamed_function() {
    let clang = clang();
    let nm = llvm_nm();
    let probe = "avz_vm_vsock_remove_listener";
    let report = symbol_report(
        &clang,
        &nm,
        "arm64-apple-macos14",
        &[format!("-D{probe}=avz_check_renamed")],
        &shim_sources(),
    );
    assert_eq!(
        report.missing,
        [probe],
        "the renamed function must be missing"
    );
    assert_eq!(
        report.extra,
        ["avz_check_renamed"],
        "the new name must be reported as not declared"
    );
    assert!(report.unresolved.is_empty(), "{:?}", report.unresolved);
}

/// The symbol check across objects: without `shim/applevz_util.m` the helpers it
/// provides the other files (hidden symbols, so not "exported") must be reported as
/// needed and defined by none, and nothing else.
#[test]
#[cfg_attr(
    any(applevz_no_clang19, applevz_no_llvm_nm19),
    ignore = "clang-19 or llvm-nm-19 not installed (apt-get install clang-19 llvm-19, or set CLANG and LLVM_NM)"
)]
fn symbol_check_reports_a_missing_file() {
    let clang = clang();
    let nm = llvm_nm();
    let left_out = "shim/applevz_util.m";
    let sources: Vec<String> = shim_sources()
        .into_iter()
        .filter(|source| source != left_out)
        .collect();
    assert_eq!(
        sources.len() + 1,
        shim_sources().len(),
        "{left_out} is one of the shim's sources"
    );
    let report = symbol_report(&clang, &nm, "arm64-apple-macos14", &[], &sources);
    assert!(report.missing.is_empty(), "{:?}", report.missing);
    assert!(report.extra.is_empty(), "{:?}", report.extra);
    assert!(
        report.unresolved.iter().any(|name| name == "avz_error"),
        "avz_error (defined in {left_out}) must be reported as needed: {:?}",
        report.unresolved
    );
}
