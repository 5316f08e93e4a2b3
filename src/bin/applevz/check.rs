//! `applevz check`: what this machine can do.

use applevz::{Limits, RosettaAvailability};

use crate::failure::exit;
use crate::out::outln;

/// Prints the report; it cannot fail, so it always ends with `exit::OK`.
pub(crate) fn check() -> u8 {
    let row = |name: &str, value: &str| outln!("{name:<24} {value}");
    if applevz::is_simulator() {
        outln!(
            "applevz is running the simulator: {} has no Virtualization.framework, so every VM here is simulated",
            std::env::consts::OS
        );
    }
    let simulated = applevz::is_simulator();
    row("host", &host_description());
    row(
        "virtualization",
        match (simulated, applevz::is_supported()) {
            (true, _) => "simulated (no guest runs: the simulator models the framework's contract)",
            (false, true) => "supported",
            (false, false) => {
                "NOT supported: this Mac (or the VM it runs in) offers no hardware virtualization"
            }
        },
    );
    row("entitlement", &entitlement());
    let limits = Limits::host();
    let modelled = if simulated {
        " (the simulator's limits, from this host)"
    } else {
        ""
    };
    row(
        "CPUs",
        &format!(
            "{} to {}{modelled}",
            limits.min_cpu_count, limits.max_cpu_count
        ),
    );
    row(
        "memory",
        &format!(
            "{} to {}{modelled}",
            applevz::definition::format_memory(limits.min_memory_size),
            applevz::definition::format_memory(
                limits.max_memory_size - limits.max_memory_size % (1 << 20)
            ),
        ),
    );
    // On the simulator these rows say what it emulates, never that this host has a
    // Mac's feature.
    let save_restore = applevz::save_restore_supported();
    row(
        "suspend (save/restore)",
        match (simulated, save_restore) {
            (true, true) => {
                "simulated: the simulator saves and restores (a Mac needs Apple silicon with macOS 14 or later)"
            }
            (true, false) => "simulated as not available on this host",
            (false, true) => "available",
            (false, false) => "not available: needs Apple silicon with macOS 14 or later",
        },
    );
    let rosetta = match applevz::rosetta_availability() {
        RosettaAvailability::Installed => "installed",
        RosettaAvailability::NotInstalled => {
            "not installed: run `softwareupdate --install-rosetta`"
        }
        RosettaAvailability::NotSupported => {
            "not supported here (needs Apple silicon with macOS 13)"
        }
    };
    if simulated {
        row(
            "Rosetta for Linux",
            &format!(
                "simulated as {rosetta} (this host has no Rosetta; a Mac needs Apple silicon with macOS 13)"
            ),
        );
    } else {
        row("Rosetta for Linux", rosetta);
    }
    exit::OK
}

fn host_description() -> String {
    let arch = std::env::consts::ARCH;
    if cfg!(target_os = "macos") {
        let version = command_output("sw_vers", &["-productVersion"])
            .unwrap_or_else(|| "(unknown version)".into());
        format!("macOS {} on {arch}", version.trim())
    } else {
        let kernel =
            command_output("uname", &["-sr"]).unwrap_or_else(|| std::env::consts::OS.into());
        format!("{} on {arch} (not a Mac)", kernel.trim())
    }
}

/// Whether this executable carries the virtualization entitlement, and how to fix it.
fn entitlement() -> String {
    if applevz::is_simulator() {
        return "not needed (simulator)".into();
    }
    let exe =
        std::env::current_exe().map_or_else(|_| "applevz".into(), |p| p.display().to_string());
    let entitlements = command_output("codesign", &["-d", "--entitlements", "-", "--xml", &exe])
        .unwrap_or_default();
    if entitlements.contains("com.apple.security.virtualization") {
        "present (com.apple.security.virtualization)".into()
    } else {
        format!(
            "MISSING: every VM start will fail; fix with `codesign --force --sign - --entitlements applevz.entitlements {exe}`"
        )
    }
}

fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let output = std::process::Command::new(program)
        .args(args)
        .output()
        .ok()?;
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    output.status.success().then_some(text)
}
