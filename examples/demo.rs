//! A walk through the whole lifecycle: create, start, pause, resume, suspend to a
//! file, start from that file, and shut down gracefully, printing every state change.
//!
//! On Linux (and every non-Apple target) it runs against the simulator. On a Mac it
//! boots a real Linux guest: pass the kernel (and optionally the initrd) as arguments:
//!
//! ```text
//! cargo run --example demo -- path/to/vmlinuz [path/to/initrd]
//! ```

use std::path::PathBuf;
use std::time::Instant;

use applevz::{LinuxBootLoader, ShutdownPolicy, VirtualMachine, VmConfig};

fn main() {
    env_logger::init();
    if let Err(error) = run() {
        // The message, then each cause (the framework's or the system's reason).
        let mut message = error.to_string();
        let mut cause = error.source();
        while let Some(source) = cause {
            message = format!("{message}: {source}");
            cause = source.source();
        }
        eprintln!("error: {message}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let work_dir = std::env::temp_dir().join(format!("applevz-demo-{}", std::process::id()));
    std::fs::create_dir_all(&work_dir)?;
    let mut args = std::env::args_os().skip(1).map(PathBuf::from);
    let kernel = match args.next() {
        Some(kernel) => kernel,
        None if applevz::is_simulator() => {
            // The simulator checks that the kernel exists, not what it contains.
            let kernel = work_dir.join("vmlinuz");
            std::fs::write(&kernel, b"simulated kernel")?;
            kernel
        }
        None => return Err("usage: demo KERNEL [INITRD] (a Linux kernel for this Mac)".into()),
    };
    let mut boot_loader = LinuxBootLoader::new(kernel).command_line("console=hvc0");
    if let Some(initrd) = args.next() {
        boot_loader = boot_loader.initrd(initrd);
    }

    if applevz::is_simulator() {
        println!(
            "applevz demo: no Virtualization.framework on this OS, running against the simulator"
        );
    }
    println!("virtualization supported: {}", applevz::is_supported());
    println!(
        "save/restore supported:   {}",
        applevz::save_restore_supported()
    );

    let builder = VmConfig::builder()
        .cpu_count(1)
        .memory_mib(512)
        .linux_boot_loader(boot_loader)
        .nat_network(None)
        .saved_state_path(work_dir.join("vm.state"));
    // On the simulator, give the guest a real guest's pace so the timings mean something.
    #[cfg(applevz_simulator)]
    let builder = builder.simulated_guest(applevz::sim::SimulatedGuest {
        boot_delay: std::time::Duration::from_millis(400),
        stop_delay: std::time::Duration::from_millis(200),
        operation_delay: std::time::Duration::from_millis(100),
        ..Default::default()
    });
    let config = builder.build()?;
    let vm = VirtualMachine::new(&config)?;
    let events = vm.subscribe();
    let started = Instant::now();
    let print_events = std::thread::spawn(move || {
        for event in events {
            let at = started.elapsed().as_secs_f64() * 1e3;
            println!("  [{at:>7.1} ms] {}  ({:?})", event.state, event.kind);
        }
    });

    // A step's state events arrive before the step returns; the thread above prints
    // them as they come, so each step's line is printed before it runs.
    let step = |name: &str, operation: &dyn Fn() -> applevz::Result<()>| {
        println!("{name}");
        operation()
    };
    step("start()", &|| vm.start())?;
    step("pause()", &|| vm.pause())?;
    step("resume()", &|| vm.resume())?;
    if applevz::save_restore_supported() {
        step("suspend()", &|| vm.suspend())?;
        step("start() (restores the saved state)", &|| vm.start())?;
    }
    step("shutdown(Powerdown)", &|| {
        vm.shutdown(ShutdownPolicy::Powerdown)
    })?;
    drop(vm);
    print_events.join().ok();
    std::fs::remove_dir_all(&work_dir)?;
    Ok(())
}
