//! The tests' own guarantees: a failing test leaves no process behind.

use std::sync::mpsc;

use crate::support::{init_vm, process_exists, spawn_run};

#[test]
fn a_test_that_panics_leaves_no_run_process_behind() {
    let (_dir, vm) = init_vm("guard");
    let (pids, pid) = mpsc::channel();
    // A test body that fails while its `run` is up: the panic unwinds through the
    // guard `spawn_run` returned.
    let failed = std::thread::spawn(move || {
        let run = spawn_run(&vm, "", &["--console", "file"]);
        pids.send(run.id()).unwrap();
        panic!("a test failing on purpose, with `applevz run` up (expected)");
    })
    .join();
    assert!(failed.is_err(), "the body panicked");
    let pid = pid.recv().unwrap();
    assert!(
        !process_exists(pid),
        "applevz run (pid {pid}) outlived the test that started it"
    );
}
