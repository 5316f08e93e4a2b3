//! The simulator's controls: script a guest, trigger guest behaviour at run time, and
//! count live native objects. Available on every target that uses the simulator
//! (every non-Apple target), so code that manages VMs can be tested on Linux CI.

use std::marker::PhantomData;
use std::time::Duration;

use crate::ffi::knobs;
use crate::ffi::native_config::NativeConfig;
use crate::ffi::native_vm::NativeVm;

/// How the simulated guest behaves; set with
/// [`crate::VmConfigBuilder::simulated_guest`]. The default guest boots, pauses and
/// stops at once and obeys stop requests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimulatedGuest {
    /// Starting → Running takes this long.
    pub boot_delay: Duration,
    /// A forced stop, and the guest's own power-off after a stop request, take this
    /// long.
    pub stop_delay: Duration,
    /// Pause, resume, save and restore each take this long.
    pub operation_delay: Duration,
    /// The guest ignores stop requests (no ACPI power-button handling).
    pub ignores_stop_request: bool,
    /// The guest powers itself off this long after it reached Running.
    pub power_off_after: Option<Duration>,
    /// The VM fails with this `VZErrorDomain` code this long after Running.
    pub crash_after: Option<(Duration, i64)>,
    /// The simulated host cannot save or restore (an Intel Mac, macOS < 14).
    pub save_restore_unsupported: bool,
    /// This configuration cannot be saved or restored, for a reason the simulator cannot
    /// derive from its devices (console and directory-sharing devices already make a
    /// configuration unsavable, as on a Mac).
    pub not_savable: bool,
    /// What a vsock connect to a guest port nobody listens on gets.
    pub unlistened_vsock_port: UnlistenedVsockPort,
    /// Guest vsock ports with an echo service listening.
    pub guest_vsock_ports: Vec<u32>,
}

impl SimulatedGuest {
    /// The guest a comma-separated script describes, as `APPLEVZ_SIM_GUEST` spells it
    /// for the command-line tool and the C API, e.g.
    /// `boot_delay_ms=500,ignores_stop_request,power_off_after_ms=2000`. Keys:
    /// `boot_delay_ms`, `stop_delay_ms`, `operation_delay_ms`, `power_off_after_ms`,
    /// `crash_after_ms` (the VM fails with `VZErrorDomain` code 1), and the flags
    /// `ignores_stop_request`, `save_restore_unsupported`, `not_savable`.
    ///
    /// # Errors
    /// The first item it cannot use, as written.
    pub fn from_script(script: &str) -> Result<Self, String> {
        let mut guest = Self::default();
        for item in script.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (key, value) = item.split_once('=').unwrap_or((item, ""));
            let ms = || {
                value
                    .parse::<u64>()
                    .map(Duration::from_millis)
                    .map_err(|_| item.to_owned())
            };
            let flag = || {
                if value.is_empty() {
                    Ok(true)
                } else {
                    Err(item.to_owned())
                }
            };
            match key {
                "boot_delay_ms" => guest.boot_delay = ms()?,
                "stop_delay_ms" => guest.stop_delay = ms()?,
                "operation_delay_ms" => guest.operation_delay = ms()?,
                "power_off_after_ms" => guest.power_off_after = Some(ms()?),
                "crash_after_ms" => guest.crash_after = Some((ms()?, 1)),
                "ignores_stop_request" => guest.ignores_stop_request = flag()?,
                "save_restore_unsupported" => guest.save_restore_unsupported = flag()?,
                "not_savable" => guest.not_savable = flag()?,
                _ => return Err(item.to_owned()),
            }
        }
        Ok(guest)
    }

    /// Scripts the guest of the configuration being built.
    pub(crate) fn apply_to(&self, config: &mut NativeConfig) {
        config.sim_boot_delay(self.boot_delay);
        config.sim_stop_delay(self.stop_delay);
        config.sim_operation_delay(self.operation_delay);
        config.sim_ignores_stop_request(self.ignores_stop_request);
        config.sim_power_off_after(self.power_off_after);
        config.sim_crash_after(self.crash_after);
        config.sim_save_restore_unsupported(self.save_restore_unsupported);
        config.sim_not_savable(self.not_savable);
        config.sim_vsock_unanswered(self.unlistened_vsock_port == UnlistenedVsockPort::NoAnswer);
        for port in &self.guest_vsock_ports {
            config.sim_add_guest_vsock_listener(*port);
        }
    }
}

/// What a host vsock connect to a guest port nobody listens on gets, for
/// [`SimulatedGuest::unlistened_vsock_port`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnlistenedVsockPort {
    /// POSIX `ECONNRESET`: what Macs are observed to report (the default).
    #[default]
    ConnectionReset,
    /// No answer at all: Apple documents that `connectToPort:` then does nothing. The
    /// connect's timeout ends the wait; the native handler is released with the VM.
    NoAnswer,
}

/// The simulated host's architecture (process-wide).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SimulatedHost {
    /// Apple silicon: save/restore and Rosetta available (the default).
    #[default]
    AppleSilicon,
    /// An Intel Mac: no save/restore, no Rosetta.
    Intel,
}

/// Makes the whole process simulate `host` (tests that change it should run serially
/// and set it back).
pub fn set_host(host: SimulatedHost) {
    knobs::set_host_architecture(match host {
        SimulatedHost::AppleSilicon => knobs::AVZ_SIM_HOST_APPLE_SILICON,
        SimulatedHost::Intel => knobs::AVZ_SIM_HOST_INTEL,
    });
}

/// Whether Rosetta is installed on the simulated Apple-silicon host (default: yes).
pub fn set_rosetta_installed(installed: bool) {
    knobs::set_rosetta_installed(installed);
}

/// A native operation kind, for [`SimulatorControl::fail_next`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimOperation {
    /// `start`.
    Start,
    /// The forced `stop`.
    Stop,
    /// `pause`.
    Pause,
    /// `resume`.
    Resume,
    /// `saveMachineState`.
    Save,
    /// `restoreMachineState`.
    Restore,
    /// `requestStop`.
    RequestStop,
}

impl SimOperation {
    fn raw(self) -> u32 {
        match self {
            Self::Start => knobs::AVZ_SIM_OP_START,
            Self::Stop => knobs::AVZ_SIM_OP_STOP,
            Self::Pause => knobs::AVZ_SIM_OP_PAUSE,
            Self::Resume => knobs::AVZ_SIM_OP_RESUME,
            Self::Save => knobs::AVZ_SIM_OP_SAVE,
            Self::Restore => knobs::AVZ_SIM_OP_RESTORE,
            Self::RequestStop => knobs::AVZ_SIM_OP_REQUEST_STOP,
        }
    }
}

/// Runtime controls of one simulated VM; from [`crate::VirtualMachine::simulator`].
///
/// It acts on the native VM object the VM drives when the control is made: after a
/// `suspend()` (the VM restores into a fresh native object) take a new one.
///
/// Each control returns once the simulator has acted on it and the VM has heard of
/// what it caused: after `crash(1)` on a running VM, `state()` is already
/// [`crate::VmState::Error`], so a `start()` that follows boots the guest afresh
/// rather than finding it still running; after `guest_vsock_connect` the listener
/// holds the connection. Like the native triggers they wrap, controls are not for the
/// VM's own callbacks (a subscriber on the framework's queue).
pub struct SimulatorControl<'vm> {
    vm: NativeVm,
    _borrows: PhantomData<&'vm ()>,
}

impl SimulatorControl<'_> {
    pub(crate) fn new(vm: NativeVm) -> Self {
        Self {
            vm,
            _borrows: PhantomData,
        }
    }

    /// The next operation of kind `op` fails with `code` (`VZErrorDomain`).
    pub fn fail_next(&self, op: SimOperation, code: i64) {
        self.vm.sim_fail_next(op.raw(), code);
        self.applied();
    }

    /// Pause, resume, save and restore begun from now on take `delay`.
    pub fn set_operation_delay(&self, delay: Duration) {
        self.vm.sim_set_operation_delay(delay);
        self.applied();
    }

    /// The guest powers itself off now.
    pub fn guest_power_off(&self) {
        self.vm.sim_guest_power_off();
        self.applied();
    }

    /// The guest opens a vsock connection to host `port`; a listener there accepts it
    /// and first receives `hello from guest port <port>\n`, then an echo.
    pub fn guest_vsock_connect(&self, port: u32) {
        self.vm.sim_guest_vsock_connect(port);
        self.applied();
    }

    /// The attachment of network device `device_index` (in the order the configuration
    /// added network devices) disconnects with `code` (`VZErrorDomain`): subscribers
    /// get [`crate::EventKind::NetworkDisconnected`] while the VM is starting (an
    /// interface that fails to come up at boot), running or paused; ignored otherwise.
    pub fn network_disconnect(&self, device_index: u32, code: i64) {
        self.vm.sim_network_disconnect(device_index, code);
        self.applied();
    }

    /// The VM fails now with `code` (`VZErrorDomain`).
    pub fn crash(&self, code: i64) {
        self.vm.sim_crash(code);
        self.applied();
    }

    /// Waits until the VM's queue has handled the trigger just posted and made its
    /// callbacks. The native triggers only queue their work; a synchronous call runs
    /// on the same serial queue behind it (`shim/sim/README.md`, worker pool), so
    /// reading the state is that wait.
    fn applied(&self) {
        self.vm.state();
    }

    /// The next accepted operation of kind `op` runs as usual (its state changes happen,
    /// a save writes its file) but the framework keeps its completion handler and never
    /// calls it: the wait for it ends with its timeout. When the native VM is freed the
    /// handler is dropped and the completion gets the shim's error for that
    /// (`VZErrorDomain` code 1). [`SimOperation::RequestStop`] has no completion and is
    /// ignored.
    pub fn withhold_next_completion(&self, op: SimOperation) {
        if op != SimOperation::RequestStop {
            self.vm.sim_withhold_next_completion(op.raw());
        }
    }

    /// The next accepted operation of kind `op` runs as usual, but the framework
    /// releases its completion handler without calling it: the operation reports the
    /// shim's error for a dropped handler (`VZErrorDomain` code 1, "the framework
    /// dropped the operation without completing it") after its state changes.
    /// [`SimOperation::RequestStop`] is ignored.
    pub fn drop_next_completion(&self, op: SimOperation) {
        if op != SimOperation::RequestStop {
            self.vm.sim_drop_next_completion(op.raw());
        }
    }

    /// The framework's notification of the state the next operation ends in comes
    /// `delay` late: the state changes on time, but the shim holds the completion and
    /// every event after it until the notification comes, or for at most 2 s (its hold
    /// limit, after which it reads the state itself).
    pub fn delay_next_notification(&self, delay: Duration) {
        self.vm.sim_delay_next_notification(delay);
    }
}

/// Live simulator objects (configurations, VMs, errors, strings) in this process.
#[must_use]
pub fn live_objects() -> i64 {
    knobs::live_objects()
}

/// Waits (event-driven) until [`live_objects`] equals `count`; false after `timeout`.
/// Native objects are freed on the VM's queue once their last operation completed,
/// so a count can lag a `drop` briefly.
#[must_use]
pub fn wait_for_live_objects(count: i64, timeout: Duration) -> bool {
    knobs::wait_for_live_objects(count, timeout)
}
