//! Compile checks of the macOS shim (`shim/applevz.m`) on any host.
//!
//! The same checks as `scripts/check-shim.sh`, done with `std::process::Command`:
//! clang (`$CLANG`, default `clang-19`) compiles the shim with `-fobjc-arc -Werror`
//! (unguarded availability is an error) for each target in `shim/check/targets`,
//! against the hand-written declarations in `shim/check/sdk/`, and must report
//! nothing; each file in `shim/check/mistakes/` must fail on its `CHECK-FAIL:` targets
//! with every `CHECK-DIAG:` text and no other error, and compile cleanly on its
//! `CHECK-PASS:` lines. Flags come from `shim/check/clang-flags`.
//!
//! Symbol completeness, which `-fsyntax-only` cannot see: for each target the shim is
//! compiled to a Mach-O object (the same flags without `-fsyntax-only`) and llvm-nm
//! (`$LLVM_NM`, default `llvm-nm-19`, Debian package `llvm-19`) must list an exported
//! (`external`, not `private external`) text symbol `_avz_NAME` for every function
//! `avz_NAME` declared in `include/applevz.h` (as preprocessed for that target, so
//! comments do not count), and no exported `_avz_` symbol the header does not declare.
//! One more test shows the check reports a function renamed with `-D`.
//!
//! Without clang (or, for the symbol tests, llvm-nm) each test prints why it was
//! skipped and passes; CI installs clang-19 and llvm-19.

use std::path::{Path, PathBuf};
use std::process::Command;

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

/// The clang to use, or `None` (after saying so on stderr) when it is not installed.
fn clang() -> Option<String> {
    let clang = std::env::var("CLANG")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .unwrap_or_else(|| "clang-19".to_string());
    match Command::new(&clang).arg("--version").output() {
        Ok(output) if output.status.success() => Some(clang),
        _ => {
            eprintln!("skipped: {clang} not installed (apt-get install clang-19)");
            None
        }
    }
}

/// The llvm-nm to use, or `None` (after saying so on stderr) when it is not installed.
fn llvm_nm() -> Option<String> {
    let nm = std::env::var("LLVM_NM")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .unwrap_or_else(|| "llvm-nm-19".to_string());
    match Command::new(&nm).arg("--version").output() {
        Ok(output) if output.status.success() => Some(nm),
        _ => {
            eprintln!("skipped: {nm} not installed (apt-get install llvm-19)");
            None
        }
    }
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
fn exported_functions(nm: &str, object: &Path) -> Vec<String> {
    let output = Command::new(nm)
        .args(["-m", "--defined-only"])
        .arg(object)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {nm}: {e}"));
    assert!(
        output.status.success(),
        "{nm} failed on {}:\n{}",
        object.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let mut names: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let (_, symbol) = line.split_once("(__TEXT,__text) external _")?;
            symbol
                .starts_with("avz_")
                .then(|| symbol.trim().to_string())
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// What the symbol check found: (declared but not exported, exported but not declared,
/// how many the header declares).
struct SymbolReport {
    missing: Vec<String>,
    extra: Vec<String>,
    declared: usize,
}

/// Compiles the shim to an object for `target` (with `extra` clang arguments) and
/// compares its exported `avz_` functions with the header's declarations.
fn symbol_report(clang: &str, nm: &str, target: &str, extra: &[String]) -> SymbolReport {
    let declared = declared_functions(clang, target);
    assert!(
        !declared.is_empty(),
        "found no avz_ function declarations in include/applevz.h for {target}"
    );
    let tag = if extra.is_empty() { "" } else { "-probe" };
    let object = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "applevz-shim-{target}{tag}-{}.o",
        std::process::id()
    ));
    let output = Command::new(clang)
        .current_dir(root())
        .arg("-target")
        .arg(target)
        .args(object_flags())
        .args(extra)
        .arg("-c")
        .arg("-o")
        .arg(&object)
        .arg("shim/applevz.m")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {clang}: {e}"));
    let mut diagnostics = String::from_utf8_lossy(&output.stderr).into_owned();
    diagnostics.push_str(&String::from_utf8_lossy(&output.stdout));
    assert!(
        output.status.success() && diagnostics.trim().is_empty(),
        "shim/applevz.m must compile to an object for {target} {extra:?} with no diagnostics:\n{diagnostics}"
    );
    let exported = exported_functions(nm, &object);
    let _ = std::fs::remove_file(&object);
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
        declared: declared.len(),
    }
}

fn check_symbols(target: &str) {
    assert!(
        lines_of("shim/check/targets").iter().any(|t| t == target),
        "{target} is not listed in shim/check/targets"
    );
    let Some(clang) = clang() else { return };
    let Some(nm) = llvm_nm() else { return };
    let report = symbol_report(&clang, &nm, target, &[]);
    assert!(
        report.missing.is_empty(),
        "declared in include/applevz.h but not defined and exported by shim/applevz.m for \
         {target}: {:?}",
        report.missing
    );
    assert!(
        report.extra.is_empty(),
        "exported by shim/applevz.m for {target} but not declared in include/applevz.h: {:?}",
        report.extra
    );
    eprintln!(
        "shim/applevz.m for {target} exports all {} avz_ functions of the header",
        report.declared
    );
}

fn check_shim(target: &str) {
    assert!(
        lines_of("shim/check/targets").iter().any(|t| t == target),
        "{target} is not listed in shim/check/targets"
    );
    let Some(clang) = clang() else { return };
    let outcome = compile(&clang, target, Path::new("shim/applevz.m"), &[]);
    assert!(
        outcome.success && outcome.diagnostics.trim().is_empty(),
        "shim/applevz.m must compile for {target} with no diagnostics:\n{}",
        outcome.diagnostics
    );
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
    let Some(clang) = clang() else { return };
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
fn shim_compiles_for_arm64_macos14() {
    check_shim("arm64-apple-macos14");
}

#[test]
fn shim_compiles_for_arm64_macos12() {
    check_shim("arm64-apple-macos12");
}

#[test]
fn shim_compiles_for_x86_64_macos12() {
    check_shim("x86_64-apple-macos12");
}

#[test]
fn shim_compiles_for_x86_64_macos11() {
    check_shim("x86_64-apple-macos11");
}

#[test]
fn mistake_a_missing_bridge_cast_is_rejected() {
    check_mistake("a_missing_bridge_cast.m");
}

#[test]
fn mistake_b_misspelled_selector_is_rejected() {
    check_mistake("b_misspelled_selector.m");
}

#[test]
fn mistake_c_unguarded_availability_is_rejected() {
    check_mistake("c_unguarded_availability.m");
}

#[test]
fn mistake_d_save_restore_on_intel_is_rejected() {
    check_mistake("d_save_restore_on_intel.m");
}

#[test]
fn shim_exports_every_header_function_for_arm64_macos14() {
    check_symbols("arm64-apple-macos14");
}

#[test]
fn shim_exports_every_header_function_for_arm64_macos12() {
    check_symbols("arm64-apple-macos12");
}

#[test]
fn shim_exports_every_header_function_for_x86_64_macos12() {
    check_symbols("x86_64-apple-macos12");
}

#[test]
fn shim_exports_every_header_function_for_x86_64_macos11() {
    check_symbols("x86_64-apple-macos11");
}

/// The symbol check itself: with one function renamed by the preprocessor (declaration
/// and definition alike, so the shim still compiles cleanly) it must report the name
/// as missing and the new one as undeclared.
#[test]
fn symbol_check_reports_a_renamed_function() {
    let Some(clang) = clang() else { return };
    let Some(nm) = llvm_nm() else { return };
    let probe = "avz_vm_vsock_remove_listener";
    let report = symbol_report(
        &clang,
        &nm,
        "arm64-apple-macos14",
        &[format!("-D{probe}=avz_check_renamed")],
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
}
