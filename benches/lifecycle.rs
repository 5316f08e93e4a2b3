//! `cargo bench --bench lifecycle`: what the lifecycle costs, measured against the
//! simulator (every non-Apple target). A plain binary (`harness = false`) that prints
//! its own tables:
//!
//! 1. the safe wrapper against the raw C ABI for the same sequence (start → pause →
//!    resume → stop, each waited), interleaved in one run;
//! 2. how long a state change takes to reach a subscriber, and a completion the caller;
//! 3. time per operation, threads and RSS with 1 … 10,000 live VMs;
//! 4. 1,000,000 operations: live native objects and RSS before and after.
//!
//! `cargo bench --bench lifecycle -- --quick` runs a shorter version of each; naming
//! sections (`ratio`, `latency`, `scaling`, `soak`) runs only those; `--counts 1,2,1000`
//! picks the VM counts of `scaling`; `profile-raw` and `profile-wrapper` run nothing but
//! cycles, for a profiler.

#[cfg(applevz_simulator)]
// Statistics in f64 over counts, microseconds and nanoseconds far below 2^52, and a
// quantile's index rounded from a fraction of a length: no cast here loses anything.
#[allow(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]
mod bench {
    use std::ffi::{CString, c_char, c_void};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc;
    use std::sync::{Condvar, Mutex, PoisonError};
    use std::time::{Duration, Instant};

    use applevz::sim::{self, SimulatedGuest};
    use applevz::{LinuxBootLoader, ShutdownPolicy, VirtualMachine, VmConfig, VmState, probe};

    type Completion = unsafe extern "C" fn(context: *mut c_void, error: *mut c_void);
    type Observer =
        unsafe extern "C" fn(context: *mut c_void, state: i32, event: i32, error: *mut c_void);
    type Operation = unsafe extern "C" fn(vm: *mut c_void, Completion, *mut c_void);

    // The raw ABI (include/applevz.h), as a C caller uses it; the symbols come from the
    // simulator linked into the crate.
    unsafe extern "C" {
        fn avz_config_create() -> *mut c_void;
        fn avz_config_set_cpu_count(config: *mut c_void, cpu_count: u32);
        fn avz_config_set_memory_size(config: *mut c_void, memory_size: u64);
        fn avz_config_set_linux_boot_loader(
            config: *mut c_void,
            kernel_path: *const c_char,
            initrd_path: *const c_char,
            command_line: *const c_char,
            error: *mut *mut c_void,
        ) -> bool;
        fn avz_vm_create(
            config: *mut c_void,
            observer: Option<Observer>,
            observer_context: *mut c_void,
            observer_release: Option<unsafe extern "C" fn(*mut c_void)>,
            error: *mut *mut c_void,
        ) -> *mut c_void;
        fn avz_vm_start(vm: *mut c_void, completion: Completion, context: *mut c_void);
        fn avz_vm_stop(vm: *mut c_void, completion: Completion, context: *mut c_void);
        fn avz_vm_pause(vm: *mut c_void, completion: Completion, context: *mut c_void);
        fn avz_vm_resume(vm: *mut c_void, completion: Completion, context: *mut c_void);
        fn CFRelease(cf: *const c_void);
    }

    const AVZ_STATE_RUNNING: i32 = 1;
    const AVZ_STATE_PAUSED: i32 = 2;

    fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        mutex.lock().unwrap_or_else(PoisonError::into_inner)
    }

    // ---------------------------------------------------------------------------
    // The raw side: a completion that signals a condition variable.

    #[derive(Default)]
    struct Signal {
        done: Mutex<bool>,
        cv: Condvar,
        failed: AtomicBool,
        /// Take a timestamp when the completion runs (latency section only).
        stamp: AtomicBool,
        stamped_ns: std::sync::atomic::AtomicU64,
    }

    unsafe extern "C" fn raw_completion(context: *mut c_void, error: *mut c_void) {
        // SAFETY: `context` is the `Signal` the waiting caller keeps alive until `done`.
        let signal = unsafe { &*context.cast_const().cast::<Signal>() };
        if signal.stamp.load(Ordering::Relaxed) {
            signal.stamped_ns.store(probe::now_ns(), Ordering::Relaxed);
        }
        if !error.is_null() {
            signal.failed.store(true, Ordering::Relaxed);
            // SAFETY: the completion's error is +1 and ours to release.
            unsafe { CFRelease(error) };
        }
        *lock(&signal.done) = true;
        signal.cv.notify_one();
    }

    /// One raw operation, waited for.
    fn raw_op(vm: *mut c_void, operation: Operation, signal: &Signal) {
        *lock(&signal.done) = false;
        // SAFETY: a live VM; the completion is called exactly once with `signal`, which
        // outlives the wait below.
        unsafe {
            operation(
                vm,
                raw_completion,
                std::ptr::from_ref(signal).cast_mut().cast(),
            );
        };
        let mut done = lock(&signal.done);
        while !*done {
            done = signal.cv.wait(done).unwrap_or_else(PoisonError::into_inner);
        }
        drop(done);
        assert!(
            !signal.failed.load(Ordering::Relaxed),
            "a raw operation failed"
        );
    }

    /// A raw VM built like the wrapper's (1 CPU, 256 MiB, the same kernel file).
    struct RawVm(*mut c_void);

    impl RawVm {
        fn new(kernel: &CString, observer: Option<Observer>, context: *mut c_void) -> Self {
            // SAFETY: plain calls on a configuration this function owns; strings
            // borrowed for the call; NULL error pointers are allowed.
            unsafe {
                let config = avz_config_create();
                avz_config_set_cpu_count(config, 1);
                avz_config_set_memory_size(config, 256 << 20);
                let command_line = c"console=hvc0";
                assert!(avz_config_set_linux_boot_loader(
                    config,
                    kernel.as_ptr(),
                    std::ptr::null(),
                    command_line.as_ptr(),
                    std::ptr::null_mut()
                ));
                let vm = avz_vm_create(config, observer, context, None, std::ptr::null_mut());
                CFRelease(config);
                assert!(!vm.is_null(), "avz_vm_create failed");
                Self(vm)
            }
        }

        fn cycle(&self, signal: &Signal) {
            raw_op(self.0, avz_vm_start, signal);
            raw_op(self.0, avz_vm_pause, signal);
            raw_op(self.0, avz_vm_resume, signal);
            raw_op(self.0, avz_vm_stop, signal);
        }
    }

    impl Drop for RawVm {
        fn drop(&mut self) {
            // SAFETY: our one reference.
            unsafe { CFRelease(self.0) };
        }
    }

    // ---------------------------------------------------------------------------
    // Statistics and process figures.

    fn sorted(mut values: Vec<f64>) -> Vec<f64> {
        values.sort_by(f64::total_cmp);
        values
    }

    fn quantile(sorted: &[f64], q: f64) -> f64 {
        let index = ((sorted.len() - 1) as f64 * q).round() as usize;
        sorted[index]
    }

    /// "min / median / max".
    fn mmm(values: &[f64], unit: &str) -> String {
        let s = sorted(values.to_vec());
        format!(
            "{:>8.2} / {:>8.2} / {:>8.2} {unit}",
            s[0],
            quantile(&s, 0.5),
            s[s.len() - 1]
        )
    }

    fn median(values: &[f64]) -> f64 {
        quantile(&sorted(values.to_vec()), 0.5)
    }

    fn status_field(name: &str) -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    fn threads() -> u64 {
        status_field("Threads:")
    }

    fn rss_mib() -> f64 {
        status_field("VmRSS:") as f64 / 1024.0
    }

    // ---------------------------------------------------------------------------

    struct Setup {
        dir: std::path::PathBuf,
        kernel: CString,
        config: VmConfig,
    }

    impl Setup {
        fn new() -> Self {
            let dir = std::env::temp_dir().join(format!("applevz-bench-{}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("bench dir");
            let kernel_path = dir.join("vmlinuz");
            std::fs::write(&kernel_path, b"not really a kernel").expect("kernel file");
            let config = VmConfig::builder()
                .cpu_count(1)
                .memory_mib(256)
                .linux_boot_loader(LinuxBootLoader::new(&kernel_path).command_line("console=hvc0"))
                .simulated_guest(SimulatedGuest::default())
                .build()
                .expect("config");
            let kernel = CString::new(kernel_path.to_str().expect("UTF-8 path")).expect("path");
            Self {
                dir,
                kernel,
                config,
            }
        }

        fn vm(&self) -> VirtualMachine {
            VirtualMachine::new(&self.config).expect("VirtualMachine::new")
        }
    }

    impl Drop for Setup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn wrapper_cycle(vm: &VirtualMachine) {
        vm.start().expect("start");
        vm.pause().expect("pause");
        vm.resume().expect("resume");
        vm.shutdown(ShutdownPolicy::Halt).expect("shutdown(Halt)");
    }

    /// Section 1: Wrapper against raw ABI, interleaved cycle by cycle (alternating
    /// which goes first), so that both see the same machine: on a VM the cost of a
    /// thread wake-up swings by an order of magnitude as the scheduler moves threads
    /// between CPUs. Per cycle = 4 operations. A round's figure is the median of its
    /// cycles.
    fn wrapper_vs_raw(setup: &Setup, rounds: usize, cycles: usize) {
        println!("\n## 1. Wrapper vs raw ABI: start → pause → resume → stop, each waited");
        println!(
            "{rounds} rounds of {cycles} cycles of each, interleaved cycle by cycle; time per cycle (4 ops)\n"
        );
        let vm = setup.vm();
        let raw = RawVm::new(&setup.kernel, None, std::ptr::null_mut());
        let signal = Signal::default();
        for _ in 0..cycles {
            wrapper_cycle(&vm);
            raw.cycle(&signal);
        }
        let time = |f: &dyn Fn()| {
            let began = Instant::now();
            f();
            began.elapsed().as_secs_f64() * 1e6
        };
        let (mut wrapper_us, mut raw_us, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        let (mut all_wrapper, mut all_raw) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            let (mut w, mut r) = (Vec::with_capacity(cycles), Vec::with_capacity(cycles));
            for i in 0..cycles {
                if i % 2 == 0 {
                    r.push(time(&|| raw.cycle(&signal)));
                    w.push(time(&|| wrapper_cycle(&vm)));
                } else {
                    w.push(time(&|| wrapper_cycle(&vm)));
                    r.push(time(&|| raw.cycle(&signal)));
                }
            }
            let (mw, mr) = (median(&w), median(&r));
            wrapper_us.push(mw);
            raw_us.push(mr);
            ratios.push(mw / mr);
            all_wrapper.extend(w);
            all_raw.extend(r);
        }
        println!(
            "| per cycle | min / median / max of the rounds' medians | every cycle: p10 / p50 / p90 |"
        );
        println!("|---|---|---|");
        let spread = |v: Vec<f64>| {
            let s = sorted(v);
            format!(
                "{:.1} / {:.1} / {:.1} µs",
                quantile(&s, 0.1),
                quantile(&s, 0.5),
                quantile(&s, 0.9)
            )
        };
        println!("| raw ABI | {} | {} |", mmm(&raw_us, "µs"), spread(all_raw));
        println!(
            "| wrapper | {} | {} |",
            mmm(&wrapper_us, "µs"),
            spread(all_wrapper)
        );
        println!("| wrapper / raw | {} | |", mmm(&ratios, "×"));
        println!(
            "\nwrapper / raw: {:.3}× (median of the rounds' ratios)",
            median(&ratios)
        );
    }

    fn percentiles(name: &str, values_ns: Vec<f64>) {
        let s = sorted(values_ns.into_iter().map(|ns| ns / 1000.0).collect());
        println!(
            "| {name} | {:>7.1} | {:>7.1} | {:>8.1} |",
            quantile(&s, 0.5),
            quantile(&s, 0.99),
            s[s.len() - 1]
        );
    }

    /// The raw observer's mailbox: the last state and when it was reported, and
    /// whether the waiter should stop.
    #[derive(Default)]
    struct Mailbox {
        last: Mutex<(Option<(i32, u64)>, bool)>,
        cv: Condvar,
    }

    unsafe extern "C" fn raw_observer(
        context: *mut c_void,
        state: i32,
        _event: i32,
        _error: *mut c_void,
    ) {
        let at = probe::now_ns();
        // SAFETY: the mailbox outlives the raw VM (the bench drops the VM and waits for
        // the live-object count before the mailbox goes).
        let mailbox = unsafe { &*context.cast_const().cast::<Mailbox>() };
        lock(&mailbox.last).0 = Some((state, at));
        mailbox.cv.notify_one();
    }

    /// Section 2: Latencies: from the native observer call to the subscriber's thread,
    /// and from the native completion to the caller's return; the raw ABI's equivalents
    /// (an observer that wakes a thread through a condition variable; a completion that
    /// wakes the caller) for comparison.
    fn latencies(setup: &Setup, ops: usize) {
        println!("\n## 2. Latencies ({ops} operations: pause, resume alternately)\n");
        probe::enable(true);
        let vm = setup.vm();
        vm.start().expect("start");
        let events = vm.subscribe();
        let (ack, acked) = mpsc::channel::<()>();
        let subscriber = std::thread::spawn(move || {
            let mut latencies = Vec::new();
            for event in events {
                if matches!(event.state, VmState::Paused | VmState::Running) {
                    latencies.push((probe::now_ns() - probe::last_observer_call_ns()) as f64);
                    if ack.send(()).is_err() {
                        break;
                    }
                }
            }
            latencies
        });
        let mut completion = Vec::new();
        for i in 0..ops {
            if i % 2 == 0 {
                vm.pause().expect("pause");
            } else {
                vm.resume().expect("resume");
            }
            completion.push((probe::now_ns() - probe::last_completion_ns()) as f64);
            acked.recv().expect("subscriber");
        }
        drop(acked);
        drop(vm); // ends the subscription
        let subscriber = subscriber.join().expect("subscriber thread");

        // The raw equivalents.
        let mailbox = Box::new(Mailbox::default());
        let raw = RawVm::new(
            &setup.kernel,
            Some(raw_observer),
            std::ptr::from_ref(&*mailbox).cast_mut().cast(),
        );
        let signal = Signal::default();
        signal.stamp.store(true, Ordering::Relaxed);
        raw_op(raw.0, avz_vm_start, &signal);
        let (raw_events, raw_completion) = std::thread::scope(|scope| {
            let (ack, acked) = mpsc::channel::<()>();
            let mailbox = &*mailbox;
            let waiter = scope.spawn(move || {
                let mut latencies = Vec::new();
                let mut last = lock(&mailbox.last);
                loop {
                    if let Some((state, at)) = last.0.take() {
                        if state == AVZ_STATE_PAUSED || state == AVZ_STATE_RUNNING {
                            latencies.push((probe::now_ns() - at) as f64);
                            let _ = ack.send(());
                        }
                        continue;
                    }
                    if last.1 {
                        return latencies;
                    }
                    last = mailbox
                        .cv
                        .wait(last)
                        .unwrap_or_else(PoisonError::into_inner);
                }
            });
            let mut completion = Vec::new();
            for i in 0..ops {
                let operation: Operation = if i % 2 == 0 {
                    avz_vm_pause
                } else {
                    avz_vm_resume
                };
                raw_op(raw.0, operation, &signal);
                completion
                    .push((probe::now_ns() - signal.stamped_ns.load(Ordering::Relaxed)) as f64);
                acked.recv().expect("raw waiter");
            }
            lock(&mailbox.last).1 = true;
            mailbox.cv.notify_one();
            (waiter.join().expect("waiter thread"), completion)
        });
        raw_op(raw.0, avz_vm_stop, &signal);
        drop(raw);
        probe::enable(false);
        // The raw VM calls its observer until it is freed; keep the mailbox until then.
        assert!(sim::wait_for_live_objects(0, Duration::from_secs(10)));
        drop(mailbox);

        println!("| µs | p50 | p99 | max |");
        println!("|---|---|---|---|");
        percentiles("state change → subscriber (wrapper)", subscriber);
        percentiles("state change → observer's waiter (raw)", raw_events);
        percentiles("completion → caller (wrapper)", completion);
        percentiles("completion → caller (raw)", raw_completion);
    }

    /// CPU time of the whole process (every thread), in µs.
    fn process_cpu_us() -> f64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a valid timespec to write; CLOCK_PROCESS_CPUTIME_ID exists on Linux.
        unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &raw mut ts) };
        ts.tv_sec as f64 * 1e6 + ts.tv_nsec as f64 / 1e3
    }

    /// Section 3: N live (running) VMs: time per operation (pause, resume on the VMs in
    /// turn), threads and RSS. Each round builds every N once, in a rotating order, so
    /// that a slow spell of the machine does not land on one N only.
    fn scaling(setup: &Setup, counts: &[usize], ops: usize, rounds: usize) {
        println!("\n## 3. Live VMs: time per operation, threads, RSS\n");
        println!(
            "N wrapper VMs, all running; {ops} operations (pause, resume) on the VMs in turn, in each of {rounds} rounds (every N once per round, in a rotating order)\n"
        );
        let base_threads = threads();
        let mut wall: Vec<Vec<f64>> = vec![Vec::new(); counts.len()];
        let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); counts.len()];
        let mut threads_at = vec![0u64; counts.len()];
        let mut rss_at = vec![0f64; counts.len()];
        let rss_before = rss_mib();
        let mut create = vec![0f64; counts.len()];
        for round in 0..rounds {
            for k in 0..counts.len() {
                let i = (k + round) % counts.len();
                let n = counts[i];
                let began = Instant::now();
                let vms: Vec<VirtualMachine> = (0..n).map(|_| setup.vm()).collect();
                for vm in &vms {
                    vm.start().expect("start");
                }
                create[i] = create[i].max(began.elapsed().as_secs_f64());
                if round == 0 {
                    // Round 0 builds them in increasing order; later rounds reuse memory
                    // the larger ones left behind, so their RSS says nothing.
                    threads_at[i] = threads();
                    rss_at[i] = rss_mib();
                }
                let (began, cpu_began) = (Instant::now(), process_cpu_us());
                for j in 0..ops / 2 {
                    let vm = &vms[j % n];
                    vm.pause().expect("pause");
                    vm.resume().expect("resume");
                }
                let done = (ops / 2 * 2) as f64;
                wall[i].push(began.elapsed().as_secs_f64() * 1e6 / done);
                cpu[i].push((process_cpu_us() - cpu_began) / done);
                drop(vms);
                assert!(
                    sim::wait_for_live_objects(0, Duration::from_secs(120)),
                    "VMs not freed"
                );
            }
        }
        println!(
            "| live VMs | per op, min / median / max | vs first row | CPU per op (all threads), median | vs first row | threads | RSS ({rss_before:.0} MiB before) | create + start all |"
        );
        println!("|---|---|---|---|---|---|---|---|");
        let (first_wall, first_cpu) = (median(&wall[0]), median(&cpu[0]));
        for (i, n) in counts.iter().enumerate() {
            println!(
                "| {n} | {} | {:.2}× | {:.2} µs | {:.2}× | {} ({base_threads} before) | {:.0} MiB | {:.2} s |",
                mmm(&wall[i], "µs"),
                median(&wall[i]) / first_wall,
                median(&cpu[i]),
                median(&cpu[i]) / first_cpu,
                threads_at[i],
                rss_at[i],
                create[i]
            );
        }
    }

    /// Section 4: A million operations on one VM: nothing leaks, RSS stays flat.
    fn soak(setup: &Setup, ops: usize) {
        println!("\n## 4. {ops} operations (start, pause, resume, shutdown(Halt) cycles)\n");
        let live_before = sim::live_objects();
        let vm = setup.vm();
        let live_with_vm = sim::live_objects();
        let cycles = ops / 4;
        let warm = cycles / 10;
        for _ in 0..warm {
            wrapper_cycle(&vm);
        }
        let rss_warm = rss_mib();
        let began = Instant::now();
        let mut checkpoints = Vec::new();
        for i in warm..cycles {
            wrapper_cycle(&vm);
            if (i + 1) % (cycles / 4) == 0 {
                checkpoints.push(((i + 1) * 4, rss_mib()));
            }
        }
        let elapsed = began.elapsed();
        let live_after_ops = sim::live_objects();
        let rss_end = rss_mib();
        drop(vm);
        let freed = sim::wait_for_live_objects(live_before, Duration::from_secs(30));
        let live_after = sim::live_objects();
        println!("| | |");
        println!("|---|---|");
        println!(
            "| live native objects | {live_before} before, {live_with_vm} with the VM, {live_after_ops} after the operations, {live_after} once it is dropped{} |",
            if freed { "" } else { " (NOT back)" }
        );
        println!(
            "| RSS | {rss_warm:.1} MiB after {} warm-up ops, {rss_end:.1} MiB at the end: drift {:+.1} MiB |",
            warm * 4,
            rss_end - rss_warm
        );
        let marks: Vec<String> = checkpoints
            .iter()
            .map(|(ops, rss)| format!("{ops} ops: {rss:.1} MiB"))
            .collect();
        println!("| RSS along the way | {} |", marks.join(", "));
        println!(
            "| time | {:.1} s, {:.2} µs per op |",
            elapsed.as_secs_f64(),
            elapsed.as_secs_f64() * 1e6 / ((cycles - warm) * 4) as f64
        );
    }

    /// `profile-raw` / `profile-wrapper`: nothing but cycles of one kind, for a
    /// profiler (`valgrind --tool=callgrind`, `strace -c -f`, `perf`).
    fn profile(setup: &Setup, wrapper: bool, cycles: usize) {
        let began = Instant::now();
        if wrapper {
            let vm = setup.vm();
            for _ in 0..cycles {
                wrapper_cycle(&vm);
            }
        } else {
            let raw = RawVm::new(&setup.kernel, None, std::ptr::null_mut());
            let signal = Signal::default();
            for _ in 0..cycles {
                raw.cycle(&signal);
            }
        }
        println!(
            "{cycles} {} cycles: {:.2} µs per cycle",
            if wrapper { "wrapper" } else { "raw" },
            began.elapsed().as_secs_f64() * 1e6 / cycles as f64
        );
    }

    pub fn main() {
        let quick = std::env::args().any(|a| a == "--quick");
        let only: Vec<String> = std::env::args()
            .skip(1)
            .scan(false, |after_counts, a| {
                let value = *after_counts;
                *after_counts = a == "--counts";
                Some((value, a))
            })
            .filter(|(value, a)| !value && !a.starts_with("--"))
            .map(|(_, a)| a)
            .collect();
        let run = |section: &str| only.iter().any(|o| o == section);
        let profiling = ["profile-raw", "profile-wrapper"];
        if profiling.iter().any(|p| run(p)) {
            let setup = Setup::new();
            let cycles = if quick { 2_000 } else { 20_000 };
            for (i, name) in profiling.iter().enumerate() {
                if run(name) {
                    profile(&setup, i == 1, cycles);
                }
            }
            return;
        }
        let run = |section: &str| only.is_empty() || run(section);
        let setup = Setup::new();
        println!("# applevz lifecycle benchmark (simulator)");
        println!(
            "{} CPUs online; {}",
            std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
            if quick { "--quick" } else { "full run" }
        );
        if run("ratio") {
            wrapper_vs_raw(
                &setup,
                if quick { 5 } else { 21 },
                if quick { 200 } else { 500 },
            );
        }
        if run("latency") {
            latencies(&setup, if quick { 2_000 } else { 20_000 });
        }
        if run("scaling") {
            // `--counts 1,1000` measures only those.
            let counts: Vec<usize> = std::env::args()
                .skip_while(|a| a != "--counts")
                .nth(1)
                .map_or_else(
                    || vec![1, 10, 100, 1_000, 10_000],
                    |list| list.split(',').filter_map(|n| n.parse().ok()).collect(),
                );
            let counts = counts.as_slice();
            scaling(
                &setup,
                counts,
                if quick { 2_000 } else { 6_000 },
                if quick { 3 } else { 11 },
            );
        }
        if run("soak") {
            soak(&setup, if quick { 100_000 } else { 1_000_000 });
        }
    }
}

#[cfg(applevz_simulator)]
fn main() {
    bench::main();
}

#[cfg(not(applevz_simulator))]
fn main() {
    eprintln!("the lifecycle benchmark runs against the simulator (non-Apple targets) only");
}
