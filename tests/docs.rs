//! The documents are true to the tree, where that can be checked mechanically: every
//! document the project refers to is in it, every file ARCHITECTURE.md, README.md and
//! docs/lifecycle.md name exists, only `ffi/` calls the bindings, and ARCHITECTURE.md
//! names exactly the files above `ffi/` that hold `unsafe` code.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Text files of the project (its sources, scripts and documents), relative to the
/// root: not the build output, the fuzz corpora, or the SDK fixture for shim checks.
fn project_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let relative = path.strip_prefix(root).unwrap().to_path_buf();
            let skipped = [
                "target",
                ".git",
                "fuzz/corpus",
                "fuzz/target",
                "shim/check/sdk",
            ]
            .iter()
            .any(|skip| relative.starts_with(skip));
            if skipped {
                continue;
            }
            if path.is_dir() {
                walk(&path, root, out);
            } else if std::fs::read_to_string(&path).is_ok() {
                out.push(relative);
            }
        }
    }
    let mut files = Vec::new();
    walk(&root(), &root(), &mut files);
    files.sort();
    files
}

#[test]
fn every_document_referred_to_is_in_the_project() {
    let mut missing = Vec::new();
    for file in project_files() {
        let text = std::fs::read_to_string(root().join(&file)).unwrap();
        let here = root().join(file.parent().unwrap_or(Path::new("")));
        for word in text.split(|c: char| !(c.is_alphanumeric() || "_./-".contains(c))) {
            let Some(name) = word.strip_suffix(".md").map(|_| word) else {
                continue;
            };
            if name.len() <= ".md".len() {
                continue;
            }
            // `concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")` names a root file too.
            let relative = name.trim_start_matches('/');
            let found = root().join(relative).is_file() || here.join(relative).is_file();
            if !found {
                missing.push(format!("{}: {name}", file.display()));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "references to documents the project does not contain: {missing:?}"
    );
}

/// Paths in backticks in `document` that name a file or directory of the project
/// (a `/` and a known extension, or a trailing `/`), without placeholders.
fn named_paths(document: &str) -> Vec<String> {
    let text = std::fs::read_to_string(root().join(document)).unwrap();
    let extensions = [".rs", ".md", ".h", ".m", ".c", ".sh", ".toml", ".inc"];
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|quoted| quoted.contains('/') && !quoted.contains(char::is_whitespace))
        .filter(|quoted| !quoted.contains(['<', '*', '$', '|', ':']) && !quoted.contains("DIR"))
        .filter(|quoted| {
            quoted.ends_with('/') || extensions.iter().any(|ext| quoted.ends_with(ext))
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_files_the_documents_name_exist() {
    let mut gone = Vec::new();
    for document in ["ARCHITECTURE.md", "README.md", "docs/lifecycle.md"] {
        let paths = named_paths(document);
        assert!(!paths.is_empty(), "{document} names no file?");
        for path in paths {
            // Paths are relative to the root, or to src/ (the module map), or to
            // src/bin/applevz/ (the tool's modules).
            let exists = ["", "src", "src/bin/applevz"]
                .iter()
                .any(|base| root().join(base).join(&path).exists());
            if !exists {
                gone.push(format!("{document}: {path}"));
            }
        }
    }
    assert!(gone.is_empty(), "named but not in the tree: {gone:?}");
}

/// A Rust file without its comments (line comments only: block comments are not
/// used in this crate's code).
fn code_of(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn rust_files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files_under(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

/// Source files outside `src/ffi/`, relative to `src/`.
fn files_above_ffi() -> Vec<(String, String)> {
    let src = root().join("src");
    let mut files = Vec::new();
    rust_files_under(&src, &mut files);
    files
        .into_iter()
        .filter(|path| !path.starts_with(src.join("ffi")))
        .map(|path| {
            let relative = path
                .strip_prefix(&src)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            (relative, code_of(&path))
        })
        .collect()
}

#[test]
fn only_ffi_calls_the_bindings() {
    // The bindings' functions are `avz_*`; other layers may read `sys::AVZ_*`
    // constants, nothing else.
    let mut calls = Vec::new();
    for (file, code) in files_above_ffi() {
        for (at, _) in code.match_indices("avz_") {
            let before = code[..at].chars().next_back();
            if !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '"') {
                calls.push(format!("{file}: {}", &code[at..(at + 30).min(code.len())]));
            }
        }
        for (at, _) in code.match_indices("sys::") {
            let next = code[at + "sys::".len()..].chars().next();
            if !next.is_some_and(|c| c.is_ascii_uppercase()) {
                calls.push(format!("{file}: {}", &code[at..(at + 30).min(code.len())]));
            }
        }
    }
    assert!(calls.is_empty(), "bindings used outside ffi/: {calls:?}");
}

#[test]
fn architecture_md_names_every_file_with_unsafe_code_above_ffi() {
    let text = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    let start = text
        .find("Only `ffi/` calls into the bindings")
        .expect("ARCHITECTURE.md's paragraph on the bindings and unsafe code");
    let paragraph = &text[start
        ..text[start..]
            .find("\n\n")
            .map_or(text.len(), |end| start + end)];
    let named: BTreeSet<String> = paragraph
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|quoted| {
            Path::new(quoted).extension().is_some_and(|ext| ext == "rs")
                && !quoted.starts_with("tests/")
        })
        .map(str::to_owned)
        .collect();
    let with_unsafe: BTreeSet<String> = files_above_ffi()
        .into_iter()
        .filter(|(_, code)| code.contains("unsafe {") || code.contains("unsafe impl"))
        .map(|(file, _)| {
            // The tool's modules are named by file name, as elsewhere in the document.
            file.strip_prefix("bin/applevz/")
                .unwrap_or(&file)
                .to_owned()
        })
        .collect();
    assert_eq!(
        named, with_unsafe,
        "ARCHITECTURE.md's list of files with unsafe code above ffi/ (left) against the tree (right)"
    );
}
