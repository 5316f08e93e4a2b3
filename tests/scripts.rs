//! The project's shell scripts, where their logic can go wrong without a failing build.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `scripts/find-libclang.sh DIR...`: (exit status, what it printed).
fn find_libclang(dirs: &[&Path]) -> (i32, String) {
    let output = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/find-libclang.sh"))
        .args(dirs)
        .output()
        .expect("bash runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).trim().to_owned(),
    )
}

#[test]
fn find_libclang_takes_libclang_itself_not_libclang_cpp() {
    let root =
        Scratch(std::env::temp_dir().join(format!("applevz-find-libclang-{}", std::process::id())));
    let with = |name: &str, files: &[&str]| {
        let dir = root.0.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for file in files {
            std::fs::write(dir.join(file), b"").unwrap();
        }
        dir
    };
    // llvm-14 as Debian ships it without libclang-14-dev: only the C++ library.
    let cpp_only = with("llvm-14", &["libclang-cpp.so.14", "libclangAST.a"]);
    let versioned = with("llvm-19", &["libclang-19.so.1", "libclang-cpp.so.19.1"]);
    let plain = with("llvm-18", &["libclang.so"]);
    let empty = with("llvm-17", &[]);

    assert_eq!(find_libclang(&[&cpp_only]), (1, String::new()));
    assert_eq!(find_libclang(&[&cpp_only, &empty]), (1, String::new()));
    assert_eq!(
        find_libclang(&[&cpp_only, &versioned]),
        (0, versioned.display().to_string())
    );
    assert_eq!(
        find_libclang(&[&plain, &versioned]),
        (0, plain.display().to_string())
    );
}
