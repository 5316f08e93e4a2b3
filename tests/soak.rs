//! Soak: `applevz run` under 1,000 mixed control requests from several clients at once
//! (status, pause, resume, and suspends that end `run`, which is then started again),
//! through the control socket's protocol. Every request that reached `run` must be
//! answered exactly once (one `ok` or `error` line, then the end), and `run`'s threads
//! and memory must stay bounded.
//!
//! A few seconds; `cargo test --test soak -- --nocapture` shows what happened, and
//! `APPLEVZ_SOAK_REQUESTS` changes the number of requests (default 1,000).
#![cfg(applevz_simulator)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{PATIENCE, TestDir};

const APPLEVZ: &str = env!("CARGO_BIN_EXE_applevz");
const CLIENTS: usize = 6;

/// How one request went.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// No `run` to connect to (between two runs): not sent, not lost.
    NotRunning,
    /// One final line, `ok …` or `error …`, after any number of progress lines.
    Answered(String),
    /// The connection ended without a final line: lost.
    Lost(Vec<String>),
    /// More than one final line.
    AnsweredTwice(Vec<String>),
}

fn request(socket: &Path, line: &str) -> Outcome {
    let stream = match UnixStream::connect(socket) {
        Ok(stream) => stream,
        Err(error)
            if matches!(
                error.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Outcome::NotRunning;
        }
        Err(error) => panic!("connect: {error}"),
    };
    stream.set_read_timeout(Some(PATIENCE * 3)).unwrap();
    // A write into a connection `run` already answered and closed fails; its answer
    // is still there to read.
    let _ = (&stream).write_all(format!("{line}\n").as_bytes());
    let mut lines = Vec::new();
    for line in BufReader::new(&stream).lines() {
        match line {
            Ok(line) => lines.push(line),
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(error) => panic!("read: {error} after {lines:?}"),
        }
    }
    let finals: Vec<&String> = lines
        .iter()
        .filter(|line| line.starts_with("ok") || line.starts_with("error"))
        .collect();
    match finals.len() {
        0 => Outcome::Lost(lines),
        1 if lines.last() == Some(finals[0]) => Outcome::Answered(finals[0].clone()),
        _ => Outcome::AnsweredTwice(lines),
    }
}

/// A small deterministic random sequence per client.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn spawn_run(vm: &Path, round: usize) -> Child {
    Command::new(APPLEVZ)
        .args(["run", vm.to_str().unwrap(), "--console", "file"])
        .env("APPLEVZ_SIM_GUEST", "operation_delay_ms=5")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(vm.join(format!("run-{round}.stderr"))).unwrap())
        .spawn()
        .unwrap()
}

/// `Threads` and `VmRSS` (kB) of a process, from /proc (Linux).
fn threads_and_rss(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|value| value.split_whitespace().next())
            .and_then(|value| value.parse().ok())
    };
    Some((field("Threads:")?, field("VmRSS:")?))
}

#[test]
fn a_thousand_mixed_requests_are_each_answered_once_with_bounded_threads_and_memory() {
    let total: usize = std::env::var("APPLEVZ_SOAK_REQUESTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000);
    let dir = TestDir::new("soak");
    let vm: PathBuf = dir.join("vm");
    let init = Command::new(APPLEVZ)
        .args([
            "init",
            vm.to_str().unwrap(),
            "--memory",
            "512MiB",
            "--disk-size",
            "8MiB",
        ])
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let socket = vm.join("control.sock");

    let done = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let max_threads = Arc::new(AtomicU64::new(0));
    let max_rss = Arc::new(AtomicU64::new(0));
    let current_pid = Arc::new(AtomicU64::new(0));

    // The driver: keeps `run` running, starting it again after each suspend.
    let driver = std::thread::spawn({
        let (vm, done, current_pid) = (vm.clone(), Arc::clone(&done), Arc::clone(&current_pid));
        move || {
            let mut rounds = Vec::new();
            while !done.load(Ordering::SeqCst) {
                let mut run = spawn_run(&vm, rounds.len());
                current_pid.store(u64::from(run.id()), Ordering::SeqCst);
                let status = run.wait().unwrap();
                rounds.push(status.code());
            }
            rounds
        }
    });
    // The monitor: samples the current `run`'s threads and memory.
    let monitor = std::thread::spawn({
        let (done, pid) = (Arc::clone(&done), Arc::clone(&current_pid));
        let (threads, rss) = (Arc::clone(&max_threads), Arc::clone(&max_rss));
        move || {
            while !done.load(Ordering::SeqCst) {
                if let Some((t, r)) = u32::try_from(pid.load(Ordering::SeqCst))
                    .ok()
                    .and_then(threads_and_rss)
                {
                    threads.fetch_max(t, Ordering::SeqCst);
                    rss.fetch_max(r, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    });

    let began = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (socket, sent, outcomes) =
                (socket.clone(), Arc::clone(&sent), Arc::clone(&outcomes));
            std::thread::spawn(move || {
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (client as u64 + 1));
                while sent.fetch_add(1, Ordering::SeqCst) < total {
                    let line = match rng.next() % 100 {
                        0..=54 => "status",
                        55..=74 => "pause",
                        75..=94 => "resume",
                        _ => "suspend",
                    };
                    let outcome = request(&socket, line);
                    // Paced a little, so operations also succeed, not only collide.
                    std::thread::sleep(Duration::from_millis(rng.next() % 20));
                    outcomes.lock().unwrap().push((line, outcome));
                }
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap();
    }
    let elapsed = began.elapsed();
    done.store(true, Ordering::SeqCst);
    // End the last `run`: poweroff, or it was between rounds.
    let deadline = Instant::now() + PATIENCE;
    while !driver.is_finished() && Instant::now() < deadline {
        let _ = request(&socket, "stop poweroff");
        std::thread::sleep(Duration::from_millis(20));
    }
    let rounds = driver.join().unwrap();
    monitor.join().unwrap();

    let outcomes = outcomes.lock().unwrap();
    let count = |f: &dyn Fn(&Outcome) -> bool| outcomes.iter().filter(|(_, o)| f(o)).count();
    let answered = count(&|o| matches!(o, Outcome::Answered(_)));
    let not_running = count(&|o| *o == Outcome::NotRunning);
    let suspended = outcomes
        .iter()
        .filter(|(line, o)| *line == "suspend" && *o == Outcome::Answered("ok suspended".into()))
        .count();
    let bad: Vec<_> = outcomes
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Lost(_) | Outcome::AnsweredTwice(_)))
        .collect();
    let mut kinds = std::collections::BTreeMap::new();
    for (line, outcome) in outcomes.iter() {
        let what = match outcome {
            Outcome::Answered(reply) => reply.split(':').next().unwrap_or("").to_owned(),
            other => format!("{other:?}").chars().take(40).collect(),
        };
        *kinds.entry(format!("{line} -> {what}")).or_insert(0) += 1;
    }
    eprintln!("soak: outcomes {kinds:#?}");
    let threads = max_threads.load(Ordering::SeqCst);
    let rss = max_rss.load(Ordering::SeqCst);
    eprintln!(
        "soak: {} requests in {elapsed:.1?}: {answered} answered once, {not_running} found no \
         run, {suspended} suspends, {} runs ({:?}); at most {threads} threads, {rss} kB",
        outcomes.len(),
        rounds.len(),
        rounds
    );
    assert_eq!(outcomes.len(), total);
    assert!(bad.is_empty(), "lost or answered twice: {bad:?}");
    assert_eq!(answered + not_running, total);
    assert!(
        suspended > 0 && rounds.len() > 1,
        "suspend/run cycles happened"
    );
    // run's own threads, plus at most one per connection served (32) and a worker
    // per operation.
    assert!(threads < 48, "at most {threads} threads");
    assert!(rss < 64 * 1024, "at most {rss} kB");
}
