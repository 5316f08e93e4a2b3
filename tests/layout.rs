//! The source layout (ARCHITECTURE.md) holds: no import circle between the files of
//! either crate (the library under `src/`, the tool under `src/bin/applevz/`), the
//! library's top-level modules import each other only downwards, in the data-flow
//! order listed in [`LIBRARY_LAYERS`], nothing imports a crate root (internal code
//! never goes through the public re-exports), and no hand-written source file is over
//! the size limit.
//!
//! The imports are read from the source text: every `use` declaration (with its `{..}`
//! groups expanded) and every `crate::`, `super::`, `self::` or child-module path in
//! code, with comments and string literals removed. A path is resolved to the file of
//! the deepest module it names, so `crate::config::VmConfig` counts as an import of
//! `src/config/mod.rs` and `crate::ffi::cf::CfError` as one of `src/ffi/cf.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The library's top-level modules from the bottom up: each may import only the ones
/// before it (and itself). A new top-level module must be placed here.
const LIBRARY_LAYERS: &[&str] = &[
    "util",
    "probe",
    "deadline",
    "framework_error",
    "state",
    "error",
    "ffi",
    "sim",
    "config",
    "vm",
    "capi",
];

/// Hand-written sources over this many lines fail (generated bindings are exempt).
const MAX_LINES: usize = 900;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_library_has_no_import_circle() {
    let graph = Graph::of_crate(&root().join("src/lib.rs"));
    assert!(graph.files.len() > 20, "found only {:?}", graph.files);
    if let Some(cycle) = graph.cycle() {
        panic!("import circle: {}", cycle.join(" -> "));
    }
}

#[test]
fn the_tool_has_no_import_circle() {
    let graph = Graph::of_crate(&root().join("src/bin/applevz/main.rs"));
    assert!(graph.files.len() > 5, "found only {:?}", graph.files);
    if let Some(cycle) = graph.cycle() {
        panic!("import circle: {}", cycle.join(" -> "));
    }
}

#[test]
fn library_layers_import_only_downwards() {
    let graph = Graph::of_crate(&root().join("src/lib.rs"));
    let layer_of = |file: &str| -> Option<usize> {
        let module = graph.top_module.get(file).expect("known file");
        if module.is_empty() {
            return None; // the crate root re-exports every layer
        }
        let index = LIBRARY_LAYERS.iter().position(|layer| layer == module);
        Some(index.unwrap_or_else(|| {
            panic!("top-level module `{module}` ({file}) is not placed in LIBRARY_LAYERS")
        }))
    };
    let mut wrong = Vec::new();
    for (from, targets) in &graph.edges {
        for to in targets {
            if let (Some(from_layer), Some(to_layer)) = (layer_of(from), layer_of(to)) {
                if to_layer > from_layer {
                    wrong.push(format!(
                        "{from} ({}) imports {to} ({}), a layer above it",
                        LIBRARY_LAYERS[from_layer], LIBRARY_LAYERS[to_layer]
                    ));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn nothing_imports_a_crate_root() {
    for (crate_root, name) in [
        ("src/lib.rs", "lib.rs"),
        ("src/bin/applevz/main.rs", "main.rs"),
    ] {
        let graph = Graph::of_crate(&root().join(crate_root));
        let importers: Vec<&String> = graph
            .edges
            .iter()
            .filter(|(_, targets)| targets.contains(&graph.root_file))
            .map(|(from, _)| from)
            .collect();
        assert!(
            importers.is_empty(),
            "{importers:?} import {name}: name the module that defines the item instead"
        );
    }
}

#[test]
fn no_source_file_is_over_the_limit() {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    assert!(!files.is_empty());
    let generated = ["bindings.rs", "sim_bindings.rs"];
    let mut long = Vec::new();
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        if generated.contains(&name.as_str()) {
            continue;
        }
        let lines = std::fs::read_to_string(&file).unwrap().lines().count();
        if lines > MAX_LINES {
            long.push(format!("{} has {lines} lines", file.display()));
        }
    }
    assert!(long.is_empty(), "over {MAX_LINES} lines: {long:?}");
}

#[test]
fn architecture_md_matches_the_tree() {
    let text = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    let src = root().join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut missing = Vec::new();
    for file in &files {
        let relative = file
            .strip_prefix(&src)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let named = if relative.starts_with("bin/applevz/") {
            text.contains(&format!("`{name}`"))
        } else if relative.starts_with("ffi/sys/") {
            text.contains("`ffi/sys/`")
        } else {
            text.contains(&format!("`{relative}`"))
        };
        if !named {
            missing.push(relative);
        }
    }
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md does not name {missing:?}"
    );
    let gone: Vec<&str> = text
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|quoted| {
            Path::new(quoted).extension().is_some_and(|ext| ext == "rs") && quoted.contains('/')
        })
        .filter(|path| !path.starts_with("tests/") && !src.join(path).exists())
        .collect();
    assert!(
        gone.is_empty(),
        "ARCHITECTURE.md names files that do not exist: {gone:?}"
    );
}

/// The checker itself finds a circle, also one through `super::` and a child-module
/// path, and is not fooled by test modules, comments or strings.
#[test]
fn the_checker_finds_a_circle() {
    let dir = std::env::temp_dir().join(format!("applevz-layout-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("outer")).unwrap();
    let write = |name: &str, text: &str| std::fs::write(dir.join(name), text).unwrap();
    write("lib.rs", "mod a;\nmod outer;\n");
    write(
        "a.rs",
        "//! use crate::outer::inner; (a comment)\nconst S: &str = \"crate::outer\";\n\
         #[cfg(test)]\nmod tests {\n    use super::*;\n}\n",
    );
    write("outer/mod.rs", "mod inner;\npub fn f() { inner::g() }\n");
    write("outer/inner.rs", "use crate::a::S;\npub fn g() {}\n");

    let graph = Graph::of_crate(&dir.join("lib.rs"));
    assert_eq!(graph.cycle(), None, "{:?}", graph.edges);

    write("a.rs", "use crate::outer::{self as o};\n");
    write("outer/inner.rs", "use super::super::a;\npub fn g() {}\n");
    let graph = Graph::of_crate(&dir.join("lib.rs"));
    let cycle = graph
        .cycle()
        .expect("a -> outer/mod.rs -> outer/inner.rs -> a");
    assert_eq!(cycle.first(), cycle.last());
    assert_eq!(cycle.len(), 4, "{cycle:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

// ---------------------------------------------------------------------------------
// The import graph.

/// One module: where its code is, and its child modules.
struct Module {
    path: Vec<String>,
    file: String,
    children: BTreeMap<String, usize>,
}

struct Graph {
    /// Files relative to the crate root's directory's parent, e.g. `src/ffi/cf.rs`.
    files: BTreeSet<String>,
    root_file: String,
    /// file -> the files it imports.
    edges: BTreeMap<String, BTreeSet<String>>,
    /// file -> its top-level module (`""` for the crate root).
    top_module: BTreeMap<String, String>,
}

impl Graph {
    fn of_crate(root_file: &Path) -> Self {
        let base = root_file.parent().unwrap().parent().unwrap().to_owned();
        let name = |path: &Path| {
            path.strip_prefix(&base)
                .unwrap_or(path)
                .to_string_lossy()
                .into_owned()
        };
        // Discover the module tree: files through `mod x;`, inline modules (with or
        // without `include!`) in each file.
        let mut modules = vec![Module {
            path: Vec::new(),
            file: name(root_file),
            children: BTreeMap::new(),
        }];
        let mut sources: Vec<(usize, PathBuf, String)> = Vec::new();
        let mut pending = vec![(0usize, root_file.to_owned(), true)];
        while let Some((module, file, owns_directory)) = pending.pop() {
            let text = std::fs::read_to_string(&file)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
            let dir = if owns_directory {
                file.parent().unwrap().to_owned()
            } else {
                file.with_extension("")
            };
            let clean = strip_comments_and_strings(&text);
            for declared in declared_modules(&clean, &text) {
                let parent = declared.parent_path.iter().fold(module, |m, name| {
                    *modules[m].children.get(name).expect("inline module known")
                });
                let mut path = modules[parent].path.clone();
                path.push(declared.name.clone());
                let (file_of_child, source) = match declared.kind {
                    Declared::Inline => (modules[module].file.clone(), None),
                    Declared::Included(included) => {
                        let included = file.parent().unwrap().join(included);
                        (name(&included), Some((included, false)))
                    }
                    Declared::File => {
                        let flat = dir.join(format!("{}.rs", declared.name));
                        let nested = dir.join(&declared.name).join("mod.rs");
                        let (child, owns) = if flat.exists() {
                            (flat, false)
                        } else {
                            (nested, true)
                        };
                        (name(&child), Some((child, owns)))
                    }
                };
                let index = modules.len();
                modules.push(Module {
                    path,
                    file: file_of_child,
                    children: BTreeMap::new(),
                });
                modules[parent]
                    .children
                    .insert(declared.name.clone(), index);
                if let Some((child_file, owns)) = source {
                    pending.push((index, child_file, owns));
                }
            }
            sources.push((module, file, clean));
        }

        let mut graph = Self {
            files: modules.iter().map(|m| m.file.clone()).collect(),
            root_file: modules[0].file.clone(),
            edges: BTreeMap::new(),
            top_module: BTreeMap::new(),
        };
        for module in &modules {
            let top = module.path.first().cloned().unwrap_or_default();
            graph.top_module.entry(module.file.clone()).or_insert(top);
        }
        for (module, _, clean) in &sources {
            let from = modules[*module].file.clone();
            for (scope, path) in referenced_paths(clean) {
                let here = scope.iter().fold(*module, |m, name| {
                    modules[m].children.get(name).copied().unwrap_or(m)
                });
                if let Some(target) = resolve(&modules, here, &path) {
                    let to = modules[target].file.clone();
                    if to != from {
                        graph.edges.entry(from.clone()).or_default().insert(to);
                    }
                }
            }
        }
        graph
    }

    /// A circle of files (first = last), if there is one.
    fn cycle(&self) -> Option<Vec<String>> {
        fn visit(
            graph: &Graph,
            file: &String,
            state: &mut BTreeMap<String, u8>,
            stack: &mut Vec<String>,
        ) -> Option<Vec<String>> {
            state.insert(file.clone(), 1);
            stack.push(file.clone());
            for next in graph.edges.get(file).into_iter().flatten() {
                match state.get(next) {
                    Some(1) => {
                        let start = stack.iter().position(|f| f == next).unwrap();
                        let mut cycle = stack[start..].to_vec();
                        cycle.push(next.clone());
                        return Some(cycle);
                    }
                    Some(_) => {}
                    None => {
                        if let Some(cycle) = visit(graph, next, state, stack) {
                            return Some(cycle);
                        }
                    }
                }
            }
            stack.pop();
            state.insert(file.clone(), 2);
            None
        }
        let mut state = BTreeMap::new();
        for file in &self.files {
            if !state.contains_key(file) {
                if let Some(cycle) = visit(self, file, &mut state, &mut Vec::new()) {
                    return Some(cycle);
                }
            }
        }
        None
    }
}

/// The module a path names, as deep as it goes (`None` for other crates).
fn resolve(modules: &[Module], here: usize, path: &[String]) -> Option<usize> {
    let parent_of = |m: usize| {
        let parent_path = &modules[m].path[..modules[m].path.len().saturating_sub(1)];
        modules.iter().position(|module| module.path == parent_path)
    };
    let mut segments = path.iter().peekable();
    let mut current = match segments.peek()?.as_str() {
        "crate" => {
            segments.next();
            0
        }
        "self" => {
            segments.next();
            here
        }
        "super" => here,
        first if modules[here].children.contains_key(first) => here,
        _ => return None,
    };
    while segments.peek().is_some_and(|s| *s == "super") {
        segments.next();
        current = parent_of(current)?;
    }
    for segment in segments {
        match modules[current].children.get(segment) {
            Some(&child) => current = child,
            None => break,
        }
    }
    Some(current)
}

enum Declared {
    File,
    Inline,
    Included(String),
}

struct DeclaredModule {
    /// The inline modules of the file it sits in.
    parent_path: Vec<String>,
    name: String,
    kind: Declared,
}

/// `mod x;` and `mod x { .. }` declarations of a file, with the inline modules that
/// enclose each. `original` is only consulted for `include!("file")` paths.
fn declared_modules(clean: &str, original: &str) -> Vec<DeclaredModule> {
    let mut found = Vec::new();
    for (scope, position, name, inline) in module_items(clean) {
        let kind = if inline {
            // `mod x { include!("file.rs"); }`: the file is the module's code.
            let body = &original[position..];
            let body = &body[..body.find('}').unwrap_or(body.len())];
            match body.find("include!(\"") {
                Some(start) => {
                    let rest = &body[start + "include!(\"".len()..];
                    Declared::Included(rest[..rest.find('"').unwrap()].to_owned())
                }
                None => Declared::Inline,
            }
        } else {
            Declared::File
        };
        found.push(DeclaredModule {
            parent_path: scope,
            name,
            kind,
        });
    }
    found
}

/// Every `mod NAME` item: (enclosing inline modules, byte offset after the name, name,
/// whether it has a body).
fn module_items(clean: &str) -> Vec<(Vec<String>, usize, String, bool)> {
    let tokens = tokens(clean);
    let mut items = Vec::new();
    let mut scope: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < tokens.len() {
        let (offset, token) = &tokens[i];
        match token.as_str() {
            "{" => depth += 1,
            "}" => {
                depth -= 1;
                if scope.last().is_some_and(|(_, d)| *d == depth) {
                    scope.pop();
                }
            }
            "mod" if i + 2 < tokens.len() => {
                let name = tokens[i + 1].1.clone();
                let next = tokens[i + 2].1.as_str();
                let names: Vec<String> = scope.iter().map(|(n, _)| n.clone()).collect();
                if next == ";" {
                    items.push((names, *offset, name, false));
                } else if next == "{" {
                    items.push((names, tokens[i + 2].0, name.clone(), true));
                    scope.push((name, depth));
                    depth += 1;
                    i += 3;
                    continue;
                }
            }
            _ => {}
        }
        i += 1;
    }
    items
}

/// Every path that may name a module of this crate, with the inline modules it is
/// written in: `use` trees expanded, and `a::b` paths in code.
fn referenced_paths(clean: &str) -> Vec<(Vec<String>, Vec<String>)> {
    let tokens = tokens(clean);
    let mut found = Vec::new();
    let mut scope: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < tokens.len() {
        let token = tokens[i].1.as_str();
        let names = || scope.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        match token {
            "{" => depth += 1,
            "}" => {
                depth -= 1;
                if scope.last().is_some_and(|(_, d)| *d == depth) {
                    scope.pop();
                }
            }
            "mod" if tokens.get(i + 2).is_some_and(|(_, t)| t == "{") => {
                scope.push((tokens[i + 1].1.clone(), depth));
                depth += 1;
                i += 3;
                continue;
            }
            "use" => {
                let end = (i..tokens.len())
                    .find(|&j| tokens[j].1 == ";")
                    .unwrap_or(tokens.len());
                let tree: Vec<&str> = tokens[i + 1..end].iter().map(|(_, t)| t.as_str()).collect();
                for path in expand_use_tree(&tree) {
                    found.push((names(), path));
                }
                i = end + 1;
                continue;
            }
            _ if is_identifier(token)
                && tokens.get(i + 1).is_some_and(|(_, t)| t == "::")
                && !(i > 0 && tokens[i - 1].1 == "::") =>
            {
                let mut path = vec![token.to_owned()];
                let mut j = i + 1;
                while j + 1 < tokens.len() && tokens[j].1 == "::" && is_identifier(&tokens[j + 1].1)
                {
                    path.push(tokens[j + 1].1.clone());
                    j += 2;
                }
                found.push((names(), path));
                i = j;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    found
}

/// `crate::a::{b, c::{self, D}}` → `crate::a::b`, `crate::a::c`, `crate::a::c::D`.
fn expand_use_tree(tokens: &[&str]) -> Vec<Vec<String>> {
    fn tree(tokens: &[&str], at: &mut usize, prefix: &[String], out: &mut Vec<Vec<String>>) {
        let mut path = prefix.to_vec();
        while *at < tokens.len() {
            match tokens[*at] {
                "::" => *at += 1,
                "{" => {
                    *at += 1;
                    loop {
                        tree(tokens, at, &path, out);
                        match tokens.get(*at) {
                            Some(&",") => *at += 1,
                            Some(&"}") => {
                                *at += 1;
                                break;
                            }
                            _ => break,
                        }
                    }
                    return;
                }
                "," | "}" => break,
                "as" => *at += 2,
                "*" => *at += 1,
                "self" if !path.is_empty() => *at += 1,
                segment => {
                    path.push(segment.to_owned());
                    *at += 1;
                }
            }
        }
        if !path.is_empty() {
            out.push(path);
        }
    }
    let mut out = Vec::new();
    let mut at = 0;
    tree(tokens, &mut at, &[], &mut out);
    out
}

fn is_identifier(token: &str) -> bool {
    token
        .chars()
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_')
        && token.chars().all(|c| c.is_alphanumeric() || c == '_')
}

/// Identifiers, `::`, and single punctuation characters, with their byte offsets.
fn tokens(clean: &str) -> Vec<(usize, String)> {
    let bytes = clean.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c.is_ascii_alphanumeric() || c == b'_' {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            tokens.push((start, clean[start..i].to_owned()));
        } else if c == b':' && bytes.get(i + 1) == Some(&b':') {
            tokens.push((i, "::".to_owned()));
            i += 2;
        } else {
            let width = clean[i..].chars().next().unwrap().len_utf8();
            tokens.push((i, clean[i..i + width].to_owned()));
            i += width;
        }
    }
    tokens
}

/// The source with comments, string and character literals blanked out (same length,
/// same line breaks), so that neither braces nor paths in them count.
fn strip_comments_and_strings(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    let blank_run = |out: &mut String, run: &[char]| {
        for &c in run {
            for _ in 0..c.len_utf8() {
                out.push(blank(c));
            }
        }
    };
    let mut i = 0;
    while i < chars.len() {
        let rest = &chars[i..];
        let end = if rest.starts_with(&['/', '/']) {
            i + rest.iter().position(|&c| c == '\n').unwrap_or(rest.len())
        } else if rest.starts_with(&['/', '*']) {
            let mut nesting = 0;
            let mut j = i;
            loop {
                if chars[j..].starts_with(&['/', '*']) {
                    nesting += 1;
                    j += 2;
                } else if chars[j..].starts_with(&['*', '/']) {
                    nesting -= 1;
                    j += 2;
                    if nesting == 0 {
                        break j;
                    }
                } else {
                    j += 1;
                }
            }
        } else if rest[0] == 'r'
            && matches!(rest.get(1), Some('"' | '#'))
            && (i == 0 || !(chars[i - 1].is_alphanumeric() || chars[i - 1] == '_'))
        {
            let hashes = rest[1..].iter().take_while(|&&c| c == '#').count();
            if rest.get(1 + hashes) != Some(&'"') {
                out.push(rest[0]);
                i += 1;
                continue;
            }
            let closing: Vec<char> = std::iter::once('"')
                .chain(std::iter::repeat_n('#', hashes))
                .collect();
            let body = i + 2 + hashes;
            let close = (body..chars.len())
                .find(|&j| chars[j..].starts_with(&closing))
                .unwrap();
            close + closing.len()
        } else if rest[0] == '"' {
            let mut j = i + 1;
            while chars[j] != '"' {
                j += if chars[j] == '\\' { 2 } else { 1 };
            }
            j + 1
        } else if rest[0] == '\'' {
            // A character literal ('x', '\n', '\u{..}'), not a lifetime ('a).
            match (rest.get(1), rest.get(2)) {
                (Some('\\'), _) => i + 3 + rest[3..].iter().position(|&c| c == '\'').unwrap() + 1,
                (Some(_), Some('\'')) => i + 3,
                _ => {
                    out.push('\'');
                    i += 1;
                    continue;
                }
            }
        } else {
            out.push(rest[0]);
            i += 1;
            continue;
        };
        blank_run(&mut out, &chars[i..end]);
        i = end;
    }
    out
}
