//! `applevz init DIR`: a new VM directory.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use applevz::definition::{DiskDefinition, NetworkDefinition, format_memory, parse_memory};
use applevz::{VirtualMachine, VmDefinition};

use crate::failure::{Failure, exit};
use crate::out::{errln, outln};
use crate::vmdir;

#[derive(clap::Args)]
pub(crate) struct InitArgs {
    /// The directory to create (or an empty one to fill).
    dir: PathBuf,
    /// The Linux kernel to boot (an uncompressed Image on Apple silicon, a bzImage on
    /// Intel). On the simulator a placeholder is written when none is given.
    #[arg(long, conflicts_with = "efi")]
    kernel: Option<PathBuf>,
    /// The initial RAM disk.
    #[arg(long, conflicts_with = "efi")]
    initrd: Option<PathBuf>,
    /// The kernel command line (also for the simulator's placeholder kernel).
    #[arg(long, default_value = "console=hvc0", conflicts_with = "efi")]
    cmdline: String,
    /// Boot through EFI (the variable store is created in DIR) instead of a kernel.
    #[arg(long)]
    efi: bool,
    /// Virtual CPUs.
    #[arg(long, default_value_t = 2)]
    cpus: u32,
    /// Memory, with a unit.
    #[arg(long, default_value = "2GiB")]
    memory: String,
    /// Size of the sparse root disk, with a unit.
    #[arg(long, default_value = "8GiB")]
    disk_size: String,
}

const MIB: u64 = 1 << 20;

/// The placeholder kernel written on the simulator when no --kernel is given.
const PLACEHOLDER_KERNEL: &str = "vmlinuz";

pub(crate) fn init(args: &InitArgs) -> Result<u8, Failure> {
    let dir = &args.dir;
    let writes_placeholder = args.kernel.is_none() && !args.efi;
    if dir.symlink_metadata().is_ok_and(|found| !found.is_dir()) && !dir.is_dir() {
        return Err(Failure::new(
            exit::EXISTS,
            format!(
                "{} exists and is not a directory: init needs a new or empty directory; \
                 nothing was changed",
                dir.display()
            ),
        ));
    }
    if dir.join(vmdir::DEFINITION).symlink_metadata().is_ok() {
        return Err(Failure::new(
            exit::EXISTS,
            format!(
                "{} already holds a VM ({}); nothing was changed",
                dir.display(),
                vmdir::DEFINITION
            ),
        ));
    }
    let placeholder = writes_placeholder.then_some(PLACEHOLDER_KERNEL);
    for name in [
        vmdir::DISK,
        vmdir::MACHINE_IDENTIFIER,
        vmdir::EFI_VARIABLES,
        vmdir::SAVED_STATE,
    ]
    .into_iter()
    .chain(placeholder)
    {
        // symlink_metadata: a dangling link is something init must not write through.
        if dir.join(name).symlink_metadata().is_ok() {
            return Err(Failure::new(
                exit::EXISTS,
                format!(
                    "{} already has {name}; refusing to overwrite it",
                    dir.display()
                ),
            ));
        }
    }
    refuse_a_directory_that_is_not_empty(dir)?;
    let usage = |message: String| Failure::new(exit::USAGE, message);
    // vm.toml is UTF-8 text: a path it cannot hold is refused before anything exists.
    for (option, path) in [("--kernel", &args.kernel), ("--initrd", &args.initrd)] {
        if let Some(path) = path.as_deref().filter(|p| p.to_str().is_none()) {
            return Err(usage(format!(
                "{option}: {} is not valid UTF-8, which vm.toml cannot hold; rename it",
                path.display()
            )));
        }
    }
    // Every flag is checked here, naming the flag: once vm.toml exists, a bad value
    // would be blamed on the file.
    for (option, path) in [("--kernel", &args.kernel), ("--initrd", &args.initrd)] {
        if let Some(path) = path.as_deref().filter(|p| !p.is_file()) {
            return Err(usage(format!("{option}: {} is not a file", path.display())));
        }
    }
    let limits = applevz::Limits::host();
    if !(limits.min_cpu_count..=limits.max_cpu_count).contains(&args.cpus) {
        return Err(usage(format!(
            "--cpus: {} is outside this host's range {} to {}",
            args.cpus, limits.min_cpu_count, limits.max_cpu_count
        )));
    }
    let memory =
        parse_memory(&args.memory).map_err(|reason| usage(format!("--memory: {reason}")))?;
    if memory % MIB != 0 {
        return Err(usage(format!(
            "--memory: {} is not a whole number of MiB",
            args.memory
        )));
    }
    if !(limits.min_memory_size..=limits.max_memory_size).contains(&memory) {
        return Err(usage(format!(
            "--memory: {} is outside this host's range {} to {}",
            args.memory,
            format_memory(limits.min_memory_size),
            format_memory(limits.max_memory_size - limits.max_memory_size % MIB)
        )));
    }
    let disk_size =
        parse_memory(&args.disk_size).map_err(|reason| usage(format!("--disk-size: {reason}")))?;
    if disk_size == 0 || disk_size % MIB != 0 {
        return Err(usage(format!(
            "--disk-size: {} is not a whole number of MiB, at least 1MiB",
            args.disk_size
        )));
    }
    if args.kernel.is_none() && !args.efi && !applevz::is_simulator() {
        return Err(usage(
            "give --kernel PATH (a Linux kernel for this Mac) or --efi".into(),
        ));
    }

    log::debug!("creating a VM in {}", dir.display());
    let created_dir = !dir.exists();
    let cannot_create =
        |error: std::io::Error| Failure::error(format!("cannot create {}: {error}", dir.display()));
    if let Some(parent) = dir.parent().filter(|parent| !parent.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(cannot_create)?;
    }
    // The directory will hold the guest's disk and saved memory: the owner's only,
    // whatever the umask (and an empty one given to fill is made so too).
    if created_dir {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(dir)
            .map_err(cannot_create)?;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|error| Failure::error(format!("cannot restrict {}: {error}", dir.display())))?;
    let mut created = Created {
        files: Vec::new(),
        dir: created_dir.then(|| dir.clone()),
        keep: false,
    };
    let outcome = fill(dir, args, memory, disk_size, &mut created);
    if outcome.is_ok() {
        created.keep = true;
    }
    outcome
}

/// `init` fills a new or empty directory only: anything in it may be someone's.
fn refuse_a_directory_that_is_not_empty(dir: &Path) -> Result<(), Failure> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(()); // absent (created below), or not a directory (reported there)
    };
    let mut names: Vec<String> = entries
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    if names.is_empty() {
        return Ok(());
    }
    names.sort();
    let shown = names.iter().take(3).cloned().collect::<Vec<_>>().join(", ");
    let more = if names.len() > 3 { ", …" } else { "" };
    Err(Failure::new(
        exit::EXISTS,
        format!(
            "{} is not empty ({shown}{more}): init needs a new or empty directory; nothing was changed",
            dir.display()
        ),
    ))
}

/// What this `init` created, removed again if it fails (and only that).
struct Created {
    files: Vec<PathBuf>,
    dir: Option<PathBuf>,
    keep: bool,
}

impl Drop for Created {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        for file in self.files.iter().rev() {
            let _ = std::fs::remove_file(file);
        }
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

fn fill(
    dir: &Path,
    args: &InitArgs,
    memory: u64,
    disk_size: u64,
    created: &mut Created,
) -> Result<u8, Failure> {
    let io = |what: &str, error: std::io::Error| Failure::error(format!("{what}: {error}"));
    let mut definition = if args.efi {
        let mut definition = VmDefinition::linux("unused", memory);
        definition.boot.kernel = None;
        definition.boot.efi_variable_store = Some(vmdir::EFI_VARIABLES.into());
        created.files.push(dir.join(vmdir::EFI_VARIABLES));
        definition
    } else {
        let kernel = if let Some(kernel) = &args.kernel {
            absolute(kernel)?
        } else {
            let placeholder = dir.join(PLACEHOLDER_KERNEL);
            // create_new: only a file this init wrote is ever removed again.
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&placeholder)
                .map_err(|e| io("write the placeholder kernel", e))?;
            created.files.push(placeholder);
            std::io::Write::write_all(&mut file, b"simulated kernel\n")
                .map_err(|e| io("write the placeholder kernel", e))?;
            errln!(
                "applevz: simulator: wrote a placeholder kernel (vmlinuz); pass --kernel on a Mac"
            );
            PathBuf::from(PLACEHOLDER_KERNEL)
        };
        let mut definition = VmDefinition::linux(kernel, memory);
        definition.boot.initrd = args.initrd.as_deref().map(absolute).transpose()?;
        definition.boot.command_line.clone_from(&args.cmdline);
        definition
    };
    definition.cpus = args.cpus;
    definition.machine_identifier = Some(vmdir::MACHINE_IDENTIFIER.into());
    definition.saved_state = Some(vmdir::SAVED_STATE.into());
    definition.entropy = true;
    definition.memory_balloon = true;
    definition.vsock = true;
    definition.disks.push(DiskDefinition {
        path: vmdir::DISK.into(),
        read_only: false,
        interface: None,
        caching: None,
        sync: None,
        identifier: Some("root".into()),
    });
    definition.networks.push(NetworkDefinition {
        mac: Some("stable".into()),
    });

    let disk = dir.join(vmdir::DISK);
    // The guest's disk is the owner's only, whatever the umask.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&disk)
        .map_err(|e| io("create the disk image", e))?;
    created.files.push(disk);
    file.set_len(disk_size)
        .map_err(|e| io("size the disk image", e))?;

    let definition_path = dir.join(vmdir::DEFINITION);
    let text = definition
        .try_to_toml(&definition_path)
        .map_err(|error| Failure::error(error.to_string()))?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&definition_path)
        .map_err(|e| io("write vm.toml", e))?;
    created.files.push(definition_path.clone());
    std::io::Write::write_all(&mut file, (header() + &text).as_bytes())
        .map_err(|e| io("write vm.toml", e))?;
    drop(file);
    created.files.push(dir.join(vmdir::MACHINE_IDENTIFIER));

    // Building the VM once checks the definition end to end and creates the machine
    // identity (and the EFI variable store) now, not on first run.
    let config = VmDefinition::load_config(&definition_path)?;
    drop(VirtualMachine::new(&config)?);
    outln!(
        "created {}: {} CPUs, {}, {} sparse disk; run it with `applevz run {}`",
        dir.display(),
        definition.cpus,
        definition.memory,
        args.disk_size,
        dir.display()
    );
    Ok(exit::OK)
}

fn header() -> String {
    "# applevz VM definition. Relative paths are relative to this file.\n\
     # Keys: see the applevz README (\"Definition files\").\n\n"
        .to_owned()
}

fn absolute(path: &Path) -> Result<PathBuf, Failure> {
    std::path::absolute(path)
        .map_err(|error| Failure::error(format!("{}: {error}", path.display())))
}
