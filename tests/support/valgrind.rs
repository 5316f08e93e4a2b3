//! valgrind's command line for the C API's programs, shared by `tests/capi.rs` and
//! `tests/capi_install.rs` through `#[path]`.

/// valgrind's options: any memory error or definite leak fails the run.
pub const VALGRIND: [&str; 5] = [
    "valgrind",
    "--error-exitcode=99",
    "--leak-check=full",
    "--errors-for-leak-kinds=definite",
    "--show-leak-kinds=definite",
];
