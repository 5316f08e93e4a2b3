//! The `cargo build --lib` arguments that rebuild (freshly: nothing is compiled) the
//! library of the test binary that includes this file: its target directory, target,
//! profile and features. Shared by `tests/capi.rs` and `tests/capi_install.rs` through
//! `#[path]`.

use std::path::{Path, PathBuf};

/// `target/<profile>/`: where cargo put this test's executable (in `deps/`) and the
/// library.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>")
        .to_owned()
}

/// `--target-dir DIR [--target TRIPLE] [--release | --profile P] --no-default-features
/// [--features F]`, as this test binary was built.
pub fn lib_build_args() -> Vec<String> {
    let profile_dir = profile_dir();
    let parent = profile_dir.parent().expect("target/[<triple>/]<profile>");
    // Cargo marks the root of a target directory with CACHEDIR.TAG, but only once it
    // has built there (another tool may have made `target/` first); a target triple
    // always has a '-', the default `target` none.
    let is_root = parent.join("CACHEDIR.TAG").is_file()
        || !parent
            .file_name()
            .is_some_and(|name| name.to_string_lossy().contains('-'));
    let (target_dir, triple) = if is_root {
        (parent.to_owned(), None)
    } else {
        let triple = parent.file_name().expect("a target triple");
        (
            parent.parent().expect("the target directory").to_owned(),
            Some(triple.to_string_lossy().into_owned()),
        )
    };
    let mut args = vec![
        "--target-dir".to_owned(),
        target_dir.to_string_lossy().into_owned(),
    ];
    if let Some(triple) = triple {
        args.extend(["--target".to_owned(), triple]);
    }
    match profile_dir.file_name().and_then(|name| name.to_str()) {
        Some("debug") => {}
        Some("release") => args.push("--release".to_owned()),
        Some(profile) => args.extend(["--profile".to_owned(), profile.to_owned()]),
        None => panic!("no profile in {}", profile_dir.display()),
    }
    let features: Vec<&str> = [
        ("cli", cfg!(feature = "cli")),
        ("bindgen", cfg!(feature = "bindgen")),
    ]
    .into_iter()
    .filter_map(|(name, on)| on.then_some(name))
    .collect();
    args.push("--no-default-features".to_owned());
    if !features.is_empty() {
        args.extend(["--features".to_owned(), features.join(",")]);
    }
    args
}
