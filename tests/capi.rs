//! The C API (`include/applevz_vm.h`, `libapplevz.a`) from C and C++.
//!
//! - The header against the library: every `#[unsafe(no_mangle)]` export of `src/capi/`
//!   is in the static library (`nm`) and declared in the header, and nothing else is;
//!   a C file generated from the Rust signatures takes the address of every function
//!   with the prototype Rust gives it, and checks every constant, type alias and the
//!   opaque types (and the layout of a `repr(C)` struct, of which the ABI policy allows
//!   none) against the header (the compiler rejects any mismatch). So
//!   an export changed without the header fails here; a test below proves the check
//!   catches such a change.
//! - Programs: `tests/c/lifecycle.c` (C11), `tests/c/multipass_vm.cpp` (C++17) and
//!   `examples/c/vm_lifecycle.c`, linked against the library with only
//!   `-lpthread -ldl -lm`, drive the simulator; the C and C++ tests run again under
//!   valgrind where it is installed (a cfg from build.rs; ignored otherwise).
//!
//! The library under test: cargo builds the staticlib together with the rlib this test
//! links (Cargo.toml: `crate-type = ["rlib", "staticlib"]`), but leaves it in `deps/`
//! under a hashed name when the library is only a dependency of a test. So the test
//! asks cargo for it, once per run: `cargo build --lib` with this test's target
//! directory, target, profile and features, which is fresh (nothing is compiled, a
//! fraction of a second) and names the exact `libapplevz.a` in its JSON messages; a
//! stale `target/debug/libapplevz.a` from an earlier build is never used.
//! Compilers: `$CC` and `$CXX`, default `cc` and `c++`; `$NM`, default `nm`.

// Generated C text is built with `push_str(&format!(..))` for readability, and the
// paired names (`c_file`/`h_file`, ...) are deliberate.
#![allow(clippy::format_push_string, clippy::similar_names)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

// ---------------------------------------------------------------------------------
// Locations and tools
// ---------------------------------------------------------------------------------

#[path = "support/cargo_build.rs"]
mod cargo_build;
#[path = "support/scratch.rs"]
mod scratch;

use cargo_build::lib_build_args;
use scratch::Scratch;

/// The static library of this build (see the module's documentation).
fn staticlib() -> PathBuf {
    static LIBRARY: OnceLock<PathBuf> = OnceLock::new();
    LIBRARY.get_or_init(build_staticlib).clone()
}

fn build_staticlib() -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let mut command = Command::new(cargo);
    command
        .current_dir(MANIFEST_DIR)
        .args(["build", "--lib", "--message-format=json-render-diagnostics"])
        .args(lib_build_args());
    let output = run(&mut command);
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}",
        text(&output.stderr)
    );
    // The artifact message of the library lists its files, the staticlib among them.
    let stdout = text(&output.stdout);
    let library = stdout
        .lines()
        .filter(|line| {
            line.contains("\"reason\":\"compiler-artifact\"") && line.contains("\"staticlib\"")
        })
        .flat_map(|line| line.split('"'))
        .find(|piece| piece.ends_with("/libapplevz.a"))
        .unwrap_or_else(|| panic!("cargo named no libapplevz.a:\n{stdout}"));
    PathBuf::from(library)
}

fn header() -> PathBuf {
    Path::new(MANIFEST_DIR).join("include/applevz_vm.h")
}

fn tool(variable: &str, default: &str) -> String {
    std::env::var(variable).unwrap_or_else(|_| default.to_owned())
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn run(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|error| panic!("cannot run {command:?}: {error}"))
}

// ---------------------------------------------------------------------------------
// The Rust side of the API, read from src/capi/
// ---------------------------------------------------------------------------------

/// One `#[unsafe(no_mangle)]` function: its name and C prototype pieces.
#[derive(Debug, Clone)]
struct Export {
    name: String,
    /// C types of the parameters.
    params: Vec<String>,
    /// C return type.
    ret: String,
}

/// What src/capi/ declares for C.
#[derive(Debug, Default, Clone)]
struct RustApi {
    exports: Vec<Export>,
    /// `pub const APPLEVZ_*`: name and value.
    constants: Vec<(String, String)>,
    /// `pub type applevz_*`: name and C type.
    aliases: Vec<(String, String)>,
    /// `#[repr(C)] pub struct applevz_*`: name and fields (name, C type).
    structs: Vec<(String, Vec<(String, String)>)>,
    /// `pub struct applevz_*` without `repr(C)`: opaque to C.
    opaque: Vec<String>,
}

/// Every `.rs` file under src/capi/, comments removed.
fn capi_sources() -> Vec<String> {
    let mut files = Vec::new();
    let mut dirs = vec![Path::new(MANIFEST_DIR).join("src/capi")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("src/capi") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
        .iter()
        .map(|path| strip_rust_comments(&std::fs::read_to_string(path).expect("read")))
        .collect()
}

/// Removes `//` comments (the API's signatures hold no string with `//`) and the
/// `#[cfg(test)]` module at the end of a file.
fn strip_rust_comments(source: &str) -> String {
    let source = source.split("#[cfg(test)]").next().unwrap_or_default();
    source
        .lines()
        .map(|line| line.find("//").map_or(line, |at| &line[..at]))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Splits at top-level commas (not inside `<>`, `()` or `[]`).
fn split_top_level(list: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut current = String::new();
    let mut previous = ' ';
    for c in list.chars() {
        match c {
            '<' | '(' | '[' => depth += 1,
            // `->` is not a closing bracket.
            '>' if previous != '-' => depth -= 1,
            ')' | ']' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(std::mem::take(&mut current));
                previous = c;
                continue;
            }
            _ => {}
        }
        current.push(c);
        previous = c;
    }
    parts.push(current);
    parts
        .into_iter()
        .map(|part| part.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|part| !part.is_empty())
        .collect()
}

/// The text between the bracket at `open` and its match.
fn bracketed(text: &str, open: usize) -> (&str, usize) {
    let bytes = text.as_bytes();
    let (left, right) = (bytes[open], if bytes[open] == b'(' { b')' } else { b'}' });
    let mut depth = 0;
    for (i, &b) in bytes.iter().enumerate().skip(open) {
        if b == left {
            depth += 1;
        } else if b == right {
            depth -= 1;
            if depth == 0 {
                return (&text[open + 1..i], i);
            }
        }
    }
    panic!("unbalanced brackets in {}", &text[open..]);
}

/// The C type of a Rust type of the API.
fn c_type(rust: &str) -> String {
    let rust = rust.trim();
    if let Some(pointee) = rust.strip_prefix("*const ") {
        return pointer(&c_type(pointee), true);
    }
    if let Some(pointee) = rust.strip_prefix("*mut ") {
        return pointer(&c_type(pointee), false);
    }
    if let Some(function) = rust
        .strip_prefix("Option<")
        .and_then(|inner| inner.strip_suffix('>'))
    {
        return function_pointer(function);
    }
    match rust {
        "c_char" => "char".into(),
        "c_int" => "int".into(),
        "c_void" => "void".into(),
        "bool" => "bool".into(),
        "i32" => "int32_t".into(),
        "i64" => "int64_t".into(),
        "u32" => "uint32_t".into(),
        "u64" => "uint64_t".into(),
        "usize" => "size_t".into(),
        name if name.starts_with("applevz_") => name.into(),
        other => panic!("tests/capi.rs has no C type for the Rust type {other:?}: add it"),
    }
}

fn pointer(pointee: &str, is_const: bool) -> String {
    match (pointee.ends_with('*'), is_const) {
        (true, true) => format!("{pointee}const *"),
        (true, false) => format!("{pointee}*"),
        (false, true) => format!("const {pointee} *"),
        (false, false) => format!("{pointee} *"),
    }
}

/// `unsafe extern "C" fn(a: A, b: B) -> R` as the C abstract type `R (*)(A, B)`.
fn function_pointer(rust: &str) -> String {
    let rest = rust.trim().trim_start_matches("unsafe ").trim();
    let rest = rest
        .strip_prefix("extern \"C\" fn")
        .unwrap_or_else(|| panic!("not an extern \"C\" function pointer: {rust}"));
    let open = rest.find('(').expect("parameters");
    let (params, close) = bracketed(rest, open);
    let ret = rest[close + 1..]
        .trim()
        .strip_prefix("->")
        .map_or("void".to_owned(), c_type);
    format!("{ret} (*)({})", c_params(params).join(", "))
}

/// The C types of a Rust parameter list (`name: Type, ...`).
fn c_params(params: &str) -> Vec<String> {
    let types: Vec<String> = split_top_level(params)
        .iter()
        .map(|param| {
            let ty = param.split_once(':').map_or(param.as_str(), |(_, ty)| ty);
            c_type(ty)
        })
        .collect();
    if types.is_empty() {
        vec!["void".into()]
    } else {
        types
    }
}

fn parse_rust_api(sources: &[String]) -> RustApi {
    let mut api = RustApi::default();
    for source in sources {
        // Exports.
        for (at, _) in source.match_indices("#[unsafe(no_mangle)]") {
            let rest = &source[at..];
            let fn_at = rest.find("fn ").expect("an exported fn");
            let after = &rest[fn_at + 3..];
            let open = after.find('(').expect("parameters");
            let name = after[..open].trim().to_owned();
            let (params, close) = bracketed(after, open);
            let tail = &after[close + 1..];
            let ret = tail[..tail.find('{').expect("a body")].trim();
            let ret = ret.strip_prefix("->").map_or("void".to_owned(), c_type);
            api.exports.push(Export {
                name,
                params: c_params(params),
                ret,
            });
        }
        for line in source.lines().map(str::trim) {
            // Constants: `pub const APPLEVZ_X: type = value;`
            if let Some(rest) = line.strip_prefix("pub const APPLEVZ_") {
                let (name, value) = rest.split_once(':').expect("a typed const");
                let value = value.split_once('=').expect("a value").1;
                let value = value.trim().trim_end_matches(';').trim();
                assert!(
                    value.trim_start_matches('-').parse::<i64>().is_ok(),
                    "APPLEVZ_{name}: only integer literals are checked, not {value:?}"
                );
                api.constants
                    .push((format!("APPLEVZ_{}", name.trim()), value.to_owned()));
            }
            // Opaque structs: `pub struct applevz_x {` (repr(C) ones are found below).
            if let Some(rest) = line.strip_prefix("pub struct applevz_") {
                let name = format!("applevz_{}", rest.trim_end_matches('{').trim());
                api.opaque.push(name);
            }
        }
        // Type aliases (possibly over several lines).
        for (at, _) in source.match_indices("pub type applevz_") {
            let rest = &source[at + "pub type ".len()..];
            let (name, ty) = rest[..rest.find(';').expect("`;`")]
                .split_once('=')
                .expect("an alias");
            let ty = ty.split_whitespace().collect::<Vec<_>>().join(" ");
            api.aliases.push((name.trim().to_owned(), c_type(&ty)));
        }
        // repr(C) structs.
        for (at, _) in source.match_indices("#[repr(C)]") {
            let rest = &source[at..];
            let name_at = rest.find("pub struct ").expect("a struct") + "pub struct ".len();
            let open = rest.find('{').expect("fields");
            let name = rest[name_at..open].trim().to_owned();
            let (body, _) = bracketed(rest, open);
            let fields = split_top_level(body)
                .iter()
                .map(|field| {
                    let field = field.trim().trim_start_matches("pub ").trim();
                    let (name, ty) = field.split_once(':').expect("name: type");
                    (name.trim().to_owned(), c_type(ty))
                })
                .collect();
            api.opaque.retain(|opaque| *opaque != name);
            api.structs.push((name, fields));
        }
    }
    api.exports.sort_by(|a, b| a.name.cmp(&b.name));
    api
}

fn rust_api() -> RustApi {
    parse_rust_api(&capi_sources())
}

// ---------------------------------------------------------------------------------
// The header
// ---------------------------------------------------------------------------------

/// The header's text without its comments.
fn strip_c_comments(source: &str) -> String {
    let mut out = String::new();
    let mut rest = source;
    loop {
        let block = rest.find("/*");
        let line = rest.find("//");
        match (block, line) {
            (Some(b), l) if l.is_none_or(|l| b < l) => {
                out.push_str(&rest[..b]);
                let end = rest[b..].find("*/").expect("closed comment") + b + 2;
                rest = &rest[end..];
            }
            (_, Some(l)) => {
                out.push_str(&rest[..l]);
                rest = rest[l..].find('\n').map_or("", |end| &rest[l + end..]);
            }
            _ => {
                out.push_str(rest);
                return out;
            }
        }
    }
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The functions the header declares: every `applevz_…(` outside comments.
fn header_functions(header: &str) -> BTreeSet<String> {
    let code = strip_c_comments(header);
    let mut names = BTreeSet::new();
    for (at, _) in code.match_indices("applevz_") {
        if at > 0 && code[..at].ends_with(is_ident) {
            continue;
        }
        let end = code[at..]
            .find(|c| !is_ident(c))
            .map_or(code.len(), |e| at + e);
        if code[end..].trim_start().starts_with('(') {
            names.insert(code[at..end].to_owned());
        }
    }
    names
}

/// The enumeration constants the header defines: every `APPLEVZ_… =`.
fn header_constants(header: &str) -> BTreeSet<String> {
    let code = strip_c_comments(header);
    let mut names = BTreeSet::new();
    for (at, _) in code.match_indices("APPLEVZ_") {
        let end = code[at..]
            .find(|c| !is_ident(c))
            .map_or(code.len(), |e| at + e);
        let after = code[end..].trim_start();
        if after.starts_with('=') && !after.starts_with("==") {
            names.insert(code[at..end].to_owned());
        }
    }
    names
}

// ---------------------------------------------------------------------------------
// The checks, as functions of the header and the Rust side (so that a test can prove
// that they catch a change)
// ---------------------------------------------------------------------------------

/// The names in the library, the Rust sources and the header agree; the differences
/// otherwise.
fn compare_names(in_library: &BTreeSet<String>, api: &RustApi, header: &str) -> Result<(), String> {
    let in_rust: BTreeSet<String> = api.exports.iter().map(|e| e.name.clone()).collect();
    let in_header = header_functions(header);
    let mut problems = Vec::new();
    let mut differ = |a: &BTreeSet<String>, a_name: &str, b: &BTreeSet<String>, b_name: &str| {
        let missing: Vec<_> = a.difference(b).collect();
        if !missing.is_empty() {
            problems.push(format!("in {a_name} but not in {b_name}: {missing:?}"));
        }
    };
    differ(
        in_library,
        "libapplevz.a",
        &in_header,
        "include/applevz_vm.h",
    );
    differ(
        &in_header,
        "include/applevz_vm.h",
        in_library,
        "libapplevz.a",
    );
    differ(&in_rust, "src/capi/", in_library, "libapplevz.a");
    differ(
        in_library,
        "libapplevz.a",
        &in_rust,
        "src/capi/ (as tests/capi.rs reads it)",
    );
    let rust_constants: BTreeSet<String> = api.constants.iter().map(|c| c.0.clone()).collect();
    let header_constants = header_constants(header);
    differ(
        &rust_constants,
        "src/capi/ constants",
        &header_constants,
        "the header",
    );
    differ(
        &header_constants,
        "the header's constants",
        &rust_constants,
        "src/capi/",
    );
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

/// A C file that the compiler accepts only when the header agrees with the Rust side:
/// function pointers with Rust's prototypes initialised from the header's functions,
/// static assertions on constants, aliases and the layout of repr(C) structs.
fn prototype_check_source(api: &RustApi) -> String {
    let mut c = String::from(
        "/* Generated by tests/capi.rs from src/capi/: compiles only when\n   \
         include/applevz_vm.h agrees with it. */\n\
         #include <stddef.h>\n#include \"applevz_vm.h\"\n\n",
    );
    for export in &api.exports {
        c.push_str(&format!(
            "{} (*const check_{})({}) = &{};\n",
            export.ret,
            export.name,
            export.params.join(", "),
            export.name
        ));
    }
    c.push('\n');
    for (name, value) in &api.constants {
        c.push_str(&format!(
            "_Static_assert({name} == ({value}), \"{name} is {value} in src/capi/\");\n"
        ));
    }
    for (name, ty) in &api.aliases {
        c.push_str(&format!(
            "_Static_assert(_Generic(({name})0, {ty}: 1, default: 0), \"{name} is {ty} in src/capi/\");\n"
        ));
    }
    for name in &api.opaque {
        c.push_str(&format!("{name} *check_opaque_{name};\n"));
    }
    for (name, fields) in &api.structs {
        c.push_str(&format!("struct rust_{name} {{\n"));
        for (field, ty) in fields {
            c.push_str(&format!("    {ty} {field};\n"));
        }
        c.push_str("};\n");
        c.push_str(&format!(
            "_Static_assert(sizeof({name}) == sizeof(struct rust_{name}), \"size of {name}\");\n"
        ));
        for (field, ty) in fields {
            c.push_str(&format!(
                "_Static_assert(offsetof({name}, {field}) == offsetof(struct rust_{name}, {field}), \"{name}.{field} offset\");\n\
                 _Static_assert(_Generic((({name} *)0)->{field}, {ty}: 1, default: 0), \"{name}.{field} is {ty}\");\n"
            ));
        }
    }
    c
}

/// Compiles the prototype check against `include_dir`'s `applevz_vm.h`; the compiler's
/// complaints otherwise.
fn compile_prototype_check(
    api: &RustApi,
    include_dir: &Path,
    scratch: &Path,
) -> Result<(), String> {
    let source = scratch.join("prototypes.c");
    std::fs::write(&source, prototype_check_source(api)).expect("write prototypes.c");
    let output = run(Command::new(tool("CC", "cc"))
        .args([
            "-std=c11",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pedantic-errors",
        ])
        .arg("-Werror=incompatible-pointer-types")
        .arg("-I")
        .arg(include_dir)
        .arg("-c")
        .arg(&source)
        .arg("-o")
        .arg(scratch.join("prototypes.o")));
    if output.status.success() {
        Ok(())
    } else {
        Err(text(&output.stderr))
    }
}

/// The `applevz_*` functions the static library defines.
fn library_exports() -> BTreeSet<String> {
    let output = run(Command::new(tool("NM", "nm"))
        .args(["-g", "--defined-only"])
        .arg(staticlib()));
    assert!(output.status.success(), "nm: {}", text(&output.stderr));
    text(&output.stdout)
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace().rev();
            let name = fields.next()?;
            let kind = fields.next()?;
            // Mach-O prefixes C names with an underscore.
            let name = name
                .strip_prefix('_')
                .filter(|_| cfg!(target_vendor = "apple"))
                .unwrap_or(name);
            (kind == "T" && name.starts_with("applevz_")).then(|| name.to_owned())
        })
        .collect()
}

// ---------------------------------------------------------------------------------
// Header tests
// ---------------------------------------------------------------------------------

#[test]
fn every_export_is_in_the_library_and_the_header_and_nothing_else() {
    let api = rust_api();
    assert!(api.exports.len() >= 19, "found only {:?}", api.exports);
    let header = std::fs::read_to_string(header()).expect("read the header");
    if let Err(problems) = compare_names(&library_exports(), &api, &header) {
        panic!("include/applevz_vm.h and the library disagree:\n{problems}");
    }
}

#[test]
fn header_prototypes_constants_and_types_match_the_rust_exports() {
    let scratch = Scratch::new("capi", "prototypes");
    let api = rust_api();
    assert!(!api.constants.is_empty() && !api.aliases.is_empty() && !api.opaque.is_empty());
    // The ABI policy (the header's opening comment): every object is opaque, so no
    // struct layout is part of the ABI. A repr(C) struct would be checked below, but
    // needs the policy changed first.
    assert!(
        api.structs.is_empty(),
        "a repr(C) struct in src/capi/ breaks the header's ABI policy: {:?}",
        api.structs
    );
    if let Err(errors) =
        compile_prototype_check(&api, &Path::new(MANIFEST_DIR).join("include"), &scratch.0)
    {
        panic!(
            "include/applevz_vm.h disagrees with src/capi/:\n{errors}\n(generated check:\n{})",
            prototype_check_source(&api)
        );
    }
}

/// The drift check fails when an export changes without the header: a changed
/// parameter type, a changed return type, a changed constant, an opaque type, a
/// new export, an export removed from the header.
#[test]
fn the_drift_check_catches_a_changed_export() {
    let scratch = Scratch::new("capi", "drift");
    let api = rust_api();
    let include = Path::new(MANIFEST_DIR).join("include");
    let header = std::fs::read_to_string(header()).unwrap();

    let mut changed = api.clone();
    let shutdown = changed
        .exports
        .iter_mut()
        .find(|e| e.name == "applevz_vm_shutdown")
        .unwrap();
    shutdown.params[1] = "int64_t".into();
    assert!(
        compile_prototype_check(&changed, &include, &scratch.0).is_err(),
        "a parameter type"
    );

    let mut changed = api.clone();
    let state = changed
        .exports
        .iter_mut()
        .find(|e| e.name == "applevz_vm_get_state")
        .unwrap();
    state.ret = "int64_t".into();
    assert!(
        compile_prototype_check(&changed, &include, &scratch.0).is_err(),
        "a return type"
    );

    let mut changed = api.clone();
    changed.exports.retain(|e| e.name != "applevz_vm_pause");
    changed.exports.push(Export {
        name: "applevz_vm_pause".into(),
        params: vec!["applevz_vm *".into()],
        ret: "bool".into(),
    });
    assert!(
        compile_prototype_check(&changed, &include, &scratch.0).is_err(),
        "a parameter count"
    );

    let mut changed = api.clone();
    let constant = changed
        .constants
        .iter_mut()
        .find(|c| c.0 == "APPLEVZ_STATE_SUSPENDED")
        .unwrap();
    constant.1 = "11".into();
    assert!(
        compile_prototype_check(&changed, &include, &scratch.0).is_err(),
        "a constant"
    );

    let mut changed = api.clone();
    changed.opaque.push("applevz_event_v2".into());
    assert!(
        compile_prototype_check(&changed, &include, &scratch.0).is_err(),
        "an opaque type"
    );

    let mut changed = api.clone();
    changed.structs.push((
        "applevz_event".into(),
        vec![("state".into(), "applevz_vm_state".into())],
    ));
    assert!(
        compile_prototype_check(&changed, &include, &scratch.0).is_err(),
        "a struct where the header has an opaque type"
    );

    let mut library = library_exports();
    library.insert("applevz_vm_reboot".into());
    let mut changed = api.clone();
    changed.exports.push(Export {
        name: "applevz_vm_reboot".into(),
        params: vec!["applevz_vm *".into()],
        ret: "bool".into(),
    });
    let error = compare_names(&library, &changed, &header).unwrap_err();
    assert!(error.contains("applevz_vm_reboot"), "a new export: {error}");

    let without_pause = header.replace("bool applevz_vm_pause(", "bool applevz_vm_pause_old(");
    let error = compare_names(&library_exports(), &api, &without_pause).unwrap_err();
    assert!(
        error.contains("applevz_vm_pause"),
        "a renamed declaration: {error}"
    );

    let without_constant = header.replace("APPLEVZ_EVENT_SUSPENDED = 4,", "");
    let error = compare_names(&library_exports(), &api, &without_constant).unwrap_err();
    assert!(
        error.contains("APPLEVZ_EVENT_SUSPENDED"),
        "a missing constant: {error}"
    );
}

#[test]
fn the_header_stands_alone_in_c99_and_cpp11() {
    let scratch = Scratch::new("capi", "standalone");
    let source = scratch.0.join("only_header.c");
    std::fs::write(
        &source,
        "#include \"applevz_vm.h\"\n#include \"applevz_vm.h\"\nint main(void) { return 0; }\n",
    )
    .unwrap();
    for (compiler, flags) in [
        (
            tool("CC", "cc"),
            vec!["-std=c99", "-Wstrict-prototypes", "-Wmissing-prototypes"],
        ),
        (tool("CXX", "c++"), vec!["-x", "c++", "-std=c++11"]),
    ] {
        let output = run(Command::new(&compiler)
            .args(&flags)
            .args([
                "-Wall",
                "-Wextra",
                "-Werror",
                "-pedantic-errors",
                "-fsyntax-only",
            ])
            .arg("-I")
            .arg(Path::new(MANIFEST_DIR).join("include"))
            .arg(&source));
        assert!(
            output.status.success(),
            "{compiler} {flags:?}: {}",
            text(&output.stderr)
        );
    }
}

// ---------------------------------------------------------------------------------
// Programs against the simulator
// ---------------------------------------------------------------------------------

/// Compiles and links `source` (relative to the crate) against the library, with only
/// `-lpthread -ldl -lm`, into target/<profile>/capi-tests/, once per test process
/// (builds are serialized; each is written under a temporary name and renamed, so
/// concurrent test processes never see half a binary).
#[cfg(applevz_simulator)]
fn build_program(source: &str) -> PathBuf {
    use std::collections::BTreeMap;
    use std::sync::{Mutex, PoisonError};
    static BUILT: Mutex<BTreeMap<String, PathBuf>> = Mutex::new(BTreeMap::new());
    let mut built = BUILT.lock().unwrap_or_else(PoisonError::into_inner);
    built
        .entry(source.to_owned())
        .or_insert_with(|| compile_and_link(source))
        .clone()
}

#[cfg(applevz_simulator)]
fn compile_and_link(source: &str) -> PathBuf {
    let is_cpp = Path::new(source).extension() == Some(std::ffi::OsStr::new("cpp"));
    let out_dir = cargo_build::profile_dir().join("capi-tests");
    std::fs::create_dir_all(&out_dir).unwrap();
    let stem = Path::new(source)
        .file_stem()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let exe = out_dir.join(&stem);
    let temporary = out_dir.join(format!("{stem}.{}.tmp", std::process::id()));
    let (compiler, standard) = if is_cpp {
        (tool("CXX", "c++"), "-std=c++17")
    } else {
        (tool("CC", "cc"), "-std=c11")
    };
    let output = run(Command::new(&compiler)
        .args([standard, "-Wall", "-Wextra", "-Werror", "-pedantic", "-g"])
        .arg("-I")
        .arg(Path::new(MANIFEST_DIR).join("include"))
        .arg(Path::new(MANIFEST_DIR).join(source))
        .arg(staticlib())
        .args(["-lpthread", "-ldl", "-lm", "-o"])
        .arg(&temporary));
    assert!(
        output.status.success(),
        "{compiler} {source} failed:\n{}",
        text(&output.stderr)
    );
    std::fs::rename(&temporary, &exe).unwrap();
    exe
}

/// Runs a test program (optionally under `wrapper`) with a scratch directory; asserts
/// it succeeded and its last line reports no failure. Returns its stderr.
#[cfg(applevz_simulator)]
fn run_program(exe: &Path, wrapper: &[&str], name: &str) -> String {
    let scratch = Scratch::new("capi", name);
    let mut command = match wrapper.split_first() {
        Some((first, rest)) => {
            let mut command = Command::new(first);
            command.args(rest).arg(exe);
            command
        }
        None => Command::new(exe),
    };
    let output = run(command.arg(&scratch.0).env_remove("APPLEVZ_SIM_GUEST"));
    let stdout = text(&output.stdout);
    let stderr = text(&output.stderr);
    let last = stdout.lines().last().unwrap_or_default().to_owned();
    assert!(
        output.status.success() && last.ends_with(" passed, 0 failed"),
        "{} exited with {:?}; last line {last:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        exe.display(),
        output.status
    );
    println!("{}: {last}", exe.display());
    stderr
}

#[cfg(applevz_simulator)]
#[test]
fn c_program_drives_the_whole_lifecycle() {
    let exe = build_program("tests/c/lifecycle.c");
    run_program(&exe, &[], "c");
}

#[cfg(applevz_simulator)]
#[test]
fn cpp_multipass_like_class_drives_the_lifecycle() {
    let exe = build_program("tests/c/multipass_vm.cpp");
    run_program(&exe, &[], "cpp");
}

/// The README's example program builds and runs on a definition made like the CLI's.
#[cfg(applevz_simulator)]
#[test]
fn the_c_example_builds_and_runs() {
    let exe = build_program("examples/c/vm_lifecycle.c");
    let scratch = Scratch::new("capi", "example");
    std::fs::write(scratch.0.join("vmlinuz"), b"not really a kernel").unwrap();
    let toml = scratch.0.join("vm.toml");
    std::fs::write(
        &toml,
        "memory = \"512MiB\"\nsaved_state = \"vm.state\"\n[boot]\nkernel = \"vmlinuz\"\n",
    )
    .unwrap();
    let output = run(Command::new(&exe)
        .arg(&toml)
        .env_remove("APPLEVZ_SIM_GUEST"));
    let stdout = text(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        text(&output.stderr)
    );
    assert!(stdout.contains("(simulator)"), "{stdout}");
    assert!(stdout.contains("opened: stopped"), "{stdout}");
    assert!(stdout.contains("finally: stopped\n"), "{stdout}");
    // Its events arrive on their own thread, and it ends the subscription without
    // waiting for those still queued: how many it prints depends on the machine's load.

    let output = run(Command::new(&exe).arg(scratch.0.join("missing.toml")));
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).starts_with("open failed (kind 6): read the VM definition"));
}

/// The README's C example ("From C and C++") compiles and links as shown.
#[cfg(applevz_simulator)]
#[test]
fn the_readme_c_example_compiles_and_links() {
    let readme = std::fs::read_to_string(Path::new(MANIFEST_DIR).join("README.md")).unwrap();
    let section = &readme[readme.find("## From C and C++").expect("the section")..];
    let start = section.find("```c\n").expect("a C example") + "```c\n".len();
    let example = &section[start..start + section[start..].find("```").unwrap()];
    let scratch = Scratch::new("capi", "readme");
    let source = scratch.0.join("readme_example.c");
    std::fs::write(&source, example).unwrap();
    let exe = build_program(source.to_str().unwrap());
    assert!(exe.is_file());
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
fn c_program_under_valgrind() {
    // Run with --include-ignored where valgrind is missing: a failure, never a pass.
    #[cfg(not(applevz_valgrind))]
    panic!("valgrind is not installed: the C program did not run under it");
    #[cfg(applevz_valgrind)]
    {
        let exe = build_program("tests/c/lifecycle.c");
        let report = run_program(&exe, &VALGRIND, "c-valgrind");
        print_valgrind_summary(&report);
    }
}

#[cfg(applevz_simulator)]
#[cfg_attr(
    not(applevz_valgrind),
    ignore = "valgrind is not installed (apt-get install valgrind; build.rs looks for it on PATH)"
)]
#[test]
fn cpp_program_under_valgrind() {
    #[cfg(not(applevz_valgrind))]
    panic!("valgrind is not installed: the C++ program did not run under it");
    #[cfg(applevz_valgrind)]
    {
        let exe = build_program("tests/c/multipass_vm.cpp");
        let report = run_program(&exe, &VALGRIND, "cpp-valgrind");
        print_valgrind_summary(&report);
    }
}

#[cfg(all(applevz_simulator, applevz_valgrind))]
fn print_valgrind_summary(report: &str) {
    assert!(report.contains("ERROR SUMMARY: 0 errors"), "{report}");
    for line in report.lines().filter(|line| {
        line.contains("ERROR SUMMARY")
            || line.contains("definitely lost")
            || line.contains("in use at exit")
    }) {
        println!("{line}");
    }
}
