//! The simulator's controls: script a guest, trigger guest behaviour at run time, and
//! count live native objects. Available on every target that uses the simulator
//! (every non-Apple target), so code that manages VMs can be tested on Linux CI.

use std::marker::PhantomData;
use std::time::Duration;

use crate::native::NativeVm;
use crate::sys::sim_bindings as sim;

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
    /// This configuration cannot be saved.
    pub not_savable: bool,
    /// Guest vsock ports with an echo service listening.
    pub guest_vsock_ports: Vec<u32>,
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
    let raw = match host {
        SimulatedHost::AppleSilicon => sim::AVZ_SIM_HOST_APPLE_SILICON,
        SimulatedHost::Intel => sim::AVZ_SIM_HOST_INTEL,
    };
    // SAFETY: a plain value; the knob is an atomic on the native side.
    unsafe { sim::avz_sim_set_host_architecture(raw as i32) }
}

/// Whether Rosetta is installed on the simulated Apple-silicon host (default: yes).
pub fn set_rosetta_installed(installed: bool) {
    // SAFETY: a plain value; the knob is an atomic on the native side.
    unsafe { sim::avz_sim_set_rosetta_installed(installed) }
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
    fn raw(self) -> i32 {
        (match self {
            Self::Start => sim::AVZ_SIM_OP_START,
            Self::Stop => sim::AVZ_SIM_OP_STOP,
            Self::Pause => sim::AVZ_SIM_OP_PAUSE,
            Self::Resume => sim::AVZ_SIM_OP_RESUME,
            Self::Save => sim::AVZ_SIM_OP_SAVE,
            Self::Restore => sim::AVZ_SIM_OP_RESTORE,
            Self::RequestStop => sim::AVZ_SIM_OP_REQUEST_STOP,
        }) as i32
    }
}

/// Runtime controls of one simulated VM; from [`crate::VirtualMachine::simulator`].
///
/// It acts on the native VM object the VM drives when the control is made: after a
/// `suspend()` (the VM restores into a fresh native object) take a new one.
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
        // SAFETY: the control holds a reference to the VM; plain values.
        unsafe { sim::avz_sim_vm_fail_next(self.vm.raw_for_simulator(), op.raw(), code) }
    }

    /// Pause, resume, save and restore begun from now on take `delay`.
    pub fn set_operation_delay(&self, delay: Duration) {
        let ms = u32::try_from(delay.as_millis()).unwrap_or(u32::MAX);
        // SAFETY: the control holds a reference to the VM; plain value.
        unsafe { sim::avz_sim_vm_set_operation_delay_ms(self.vm.raw_for_simulator(), ms) }
    }

    /// The guest powers itself off now.
    pub fn guest_power_off(&self) {
        // SAFETY: the control holds a reference to the VM.
        unsafe { sim::avz_sim_vm_guest_power_off(self.vm.raw_for_simulator()) }
    }

    /// The guest opens a vsock connection to host `port`; a listener there accepts it
    /// and first receives `hello from guest port <port>\n`, then an echo.
    pub fn guest_vsock_connect(&self, port: u32) {
        // SAFETY: the control holds a reference to the VM; plain value.
        unsafe { sim::avz_sim_vm_guest_vsock_connect(self.vm.raw_for_simulator(), port) }
    }

    /// The attachment of network device `device_index` (in the order the configuration
    /// added network devices) disconnects with `code` (`VZErrorDomain`): subscribers
    /// get [`crate::EventKind::NetworkDisconnected`] while the VM is running or paused;
    /// ignored otherwise.
    pub fn network_disconnect(&self, device_index: u32, code: i64) {
        // SAFETY: the control holds a reference to the VM; plain values.
        unsafe {
            sim::avz_sim_vm_network_disconnect(self.vm.raw_for_simulator(), device_index, code)
        }
    }

    /// The VM fails now with `code` (`VZErrorDomain`).
    pub fn crash(&self, code: i64) {
        // SAFETY: the control holds a reference to the VM; plain value.
        unsafe { sim::avz_sim_vm_crash(self.vm.raw_for_simulator(), code) }
    }
}

/// Live simulator objects (configurations, VMs, errors, strings) in this process.
pub fn live_objects() -> i64 {
    // SAFETY: no arguments; thread-safe.
    unsafe { sim::avz_sim_live_objects() }
}

/// Waits (event-driven) until [`live_objects`] equals `count`; false after `timeout`.
/// Native objects are freed on the VM's queue once their last operation completed,
/// so a count can lag a `drop` briefly.
pub fn wait_for_live_objects(count: i64, timeout: Duration) -> bool {
    let ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
    // SAFETY: plain values; thread-safe.
    unsafe { sim::avz_sim_wait_live_objects(count, ms) }
}
