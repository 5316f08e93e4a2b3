//! Helpers shared by the simulator integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Receiver;
use std::time::Duration;

use applevz::sim::{self, SimulatedGuest};
use applevz::{
    LinuxBootLoader, Operation, StateEvent, Timeouts, VirtualMachine, VmConfig, VmConfigBuilder,
};

/// How long a test waits for something that should happen at once (generous, so the
/// suite also passes under valgrind).
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A scratch directory, removed on drop.
pub struct TestDir(PathBuf);

impl TestDir {
    pub fn new(name: &str) -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "applevz-test-{name}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("create test dir");
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Creates a file with `contents` and returns its path.
    pub fn file(&self, name: &str, contents: &[u8]) -> PathBuf {
        let path = self.join(name);
        std::fs::write(&path, contents).expect("write test file");
        path
    }

    /// The names in the directory, sorted.
    pub fn entries(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.0)
            .expect("read test dir")
            .map(|entry| {
                entry
                    .expect("entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        names
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Records the simulator's live-object count at the start of a test; `finish`
/// asserts it came back (native objects are freed on the VM's queue, so it waits).
pub struct LeakCheck(i64);

impl LeakCheck {
    pub fn start() -> Self {
        Self(sim::live_objects())
    }

    pub fn finish(&self) {
        assert!(
            sim::wait_for_live_objects(self.0, PATIENCE),
            "simulator objects leaked: {} live, {} at the start",
            sim::live_objects(),
            self.0
        );
    }
}

/// Timeouts that never expire in a passing test.
pub fn patient_timeouts() -> Timeouts {
    Timeouts {
        start: PATIENCE,
        stop: PATIENCE,
        pause: PATIENCE,
        resume: PATIENCE,
        save: PATIENCE,
        restore: PATIENCE,
        graceful_shutdown: PATIENCE,
        vsock_connect: PATIENCE,
    }
}

/// A valid configuration builder: a kernel file, a saved-state path, patient
/// timeouts and the given simulated guest.
pub fn builder(dir: &TestDir, guest: SimulatedGuest) -> VmConfigBuilder {
    let kernel = dir.file("vmlinuz", b"not really a kernel");
    VmConfig::builder()
        .cpu_count(1)
        .memory_mib(256)
        .linux_boot_loader(LinuxBootLoader::new(kernel).command_line("console=hvc0"))
        .saved_state_path(dir.join("vm.state"))
        .timeouts(patient_timeouts())
        .simulated_guest(guest)
}

pub fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

/// Everything a subscription received so far.
pub fn drain(events: &Receiver<StateEvent>) -> Vec<StateEvent> {
    events.try_iter().collect()
}

/// Receives events until one satisfies `last` (waiting up to [`PATIENCE`] for each);
/// returns all of them, that one included.
pub fn events_until(
    events: &Receiver<StateEvent>,
    last: impl Fn(&StateEvent) -> bool,
) -> Vec<StateEvent> {
    let mut received = Vec::new();
    loop {
        let event = events
            .recv_timeout(PATIENCE)
            .unwrap_or_else(|error| panic!("no further event ({error}); got {received:?}"));
        let done = last(&event);
        received.push(event);
        if done {
            return received;
        }
    }
}

/// Waits (polling, with a deadline) until `holder` holds the VM and `waiting` wait
/// for it, in that order.
pub fn wait_for_line(vm: &VirtualMachine, holder: Option<Operation>, waiting: &[Operation]) {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let (now, line) = vm.operations_in_flight();
        if now == holder && line == waiting {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "expected {holder:?} then {waiting:?}, got {now:?} then {line:?}"
        );
        std::thread::sleep(ms(2));
    }
}
