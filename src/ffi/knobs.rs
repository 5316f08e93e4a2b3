//! The simulator's knobs (`shim/sim/avz_sim.h`): one safe function per native one,
//! with the same ownership rules as the rest of the native wrappers. Simulator
//! targets only; the public face is `crate::sim`, which builds on these.

use std::time::Duration;

use crate::ffi::native_config::NativeConfig;
use crate::ffi::native_vm::NativeVm;
use crate::ffi::sys::sim_bindings as sim;

pub(crate) use crate::ffi::sys::sim_bindings::{
    AVZ_SIM_HOST_APPLE_SILICON, AVZ_SIM_HOST_INTEL, AVZ_SIM_OP_PAUSE, AVZ_SIM_OP_REQUEST_STOP,
    AVZ_SIM_OP_RESTORE, AVZ_SIM_OP_RESUME, AVZ_SIM_OP_SAVE, AVZ_SIM_OP_START, AVZ_SIM_OP_STOP,
};

/// Milliseconds for a knob (saturating: a longer delay is "forever" to a test).
fn ms(duration: Duration) -> u32 {
    u32::try_from(duration.as_millis()).unwrap_or(u32::MAX)
}

/// Live simulator objects (configurations, VMs, errors, strings) in this process.
pub(crate) fn live_objects() -> i64 {
    // SAFETY: no arguments; thread-safe.
    unsafe { sim::avz_sim_live_objects() }
}

/// Waits (event-driven) until [`live_objects`] equals `count`; false after `timeout`.
pub(crate) fn wait_for_live_objects(count: i64, timeout: Duration) -> bool {
    // SAFETY: plain values; thread-safe.
    unsafe { sim::avz_sim_wait_live_objects(count, ms(timeout)) }
}

/// Makes the whole process simulate the host `architecture` (`AVZ_SIM_HOST_*`).
pub(crate) fn set_host_architecture(architecture: u32) {
    let architecture = i32::try_from(architecture).expect("AVZ_SIM_HOST_* fits in an int");
    // SAFETY: a plain value; the knob is an atomic on the native side.
    unsafe { sim::avz_sim_set_host_architecture(architecture) }
}

/// Whether Rosetta is installed on the simulated Apple-silicon host.
pub(crate) fn set_rosetta_installed(installed: bool) {
    // SAFETY: a plain value; the knob is an atomic on the native side.
    unsafe { sim::avz_sim_set_rosetta_installed(installed) }
}

/// The scripted guest of a configuration being built.
impl NativeConfig {
    pub(crate) fn sim_boot_delay(&mut self, delay: Duration) {
        // SAFETY: live configuration, used on this thread only; plain value.
        unsafe { sim::avz_sim_config_set_boot_delay_ms(self.raw(), ms(delay)) }
    }

    pub(crate) fn sim_stop_delay(&mut self, delay: Duration) {
        // SAFETY: as for sim_boot_delay.
        unsafe { sim::avz_sim_config_set_stop_delay_ms(self.raw(), ms(delay)) }
    }

    pub(crate) fn sim_operation_delay(&mut self, delay: Duration) {
        // SAFETY: as for sim_boot_delay.
        unsafe { sim::avz_sim_config_set_operation_delay_ms(self.raw(), ms(delay)) }
    }

    pub(crate) fn sim_ignores_stop_request(&mut self, ignores: bool) {
        // SAFETY: as for sim_boot_delay.
        unsafe { sim::avz_sim_config_set_ignores_stop_request(self.raw(), ignores) }
    }

    /// `None`: the guest never powers off by itself.
    pub(crate) fn sim_power_off_after(&mut self, after: Option<Duration>) {
        // SAFETY: as for sim_boot_delay.
        unsafe { sim::avz_sim_config_set_power_off_after_ms(self.raw(), after.map_or(0, ms)) }
    }

    /// `None`: the guest never crashes by itself.
    pub(crate) fn sim_crash_after(&mut self, crash: Option<(Duration, i64)>) {
        let (after, code) = crash.map_or((0, 0), |(after, code)| (ms(after), code));
        // SAFETY: as for sim_boot_delay.
        unsafe { sim::avz_sim_config_set_crash_after_ms(self.raw(), after, code) }
    }

    pub(crate) fn sim_save_restore_unsupported(&mut self, unsupported: bool) {
        // SAFETY: as for sim_boot_delay.
        unsafe { sim::avz_sim_config_set_save_restore_unsupported(self.raw(), unsupported) }
    }

    pub(crate) fn sim_not_savable(&mut self, not_savable: bool) {
        // SAFETY: as for sim_boot_delay.
        unsafe { sim::avz_sim_config_set_not_savable(self.raw(), not_savable) }
    }

    pub(crate) fn sim_vsock_unanswered(&mut self, unanswered: bool) {
        // SAFETY: as for sim_boot_delay.
        unsafe { sim::avz_sim_config_set_vsock_unanswered(self.raw(), unanswered) }
    }

    pub(crate) fn sim_add_guest_vsock_listener(&mut self, port: u32) {
        // SAFETY: as for sim_boot_delay.
        unsafe { sim::avz_sim_config_add_guest_vsock_listener(self.raw(), port) }
    }
}

/// Guest and host behaviour of a running simulated VM.
impl NativeVm {
    /// The next operation `op` (`AVZ_SIM_OP_*`) fails with `code`.
    pub(crate) fn sim_fail_next(&self, op: u32, code: i64) {
        let op = i32::try_from(op).expect("AVZ_SIM_OP_* fits in an int");
        // SAFETY: `self` holds a reference to a live VM; plain values.
        unsafe { sim::avz_sim_vm_fail_next(self.raw(), op, code) }
    }

    /// The next accepted operation `op` (an asynchronous `AVZ_SIM_OP_*`, not
    /// `AVZ_SIM_OP_REQUEST_STOP`) never completes while the VM lives.
    pub(crate) fn sim_withhold_next_completion(&self, op: u32) {
        debug_assert_ne!(op, AVZ_SIM_OP_REQUEST_STOP, "no completion to withhold");
        let op = i32::try_from(op).expect("AVZ_SIM_OP_* fits in an int");
        // SAFETY: as for sim_fail_next; `op` is an asynchronous kind (the native side
        // aborts on any other).
        unsafe { sim::avz_sim_vm_withhold_next_completion(self.raw(), op) }
    }

    /// The next accepted operation `op` (asynchronous, as above) gets the shim's error for
    /// a completion handler the framework dropped.
    pub(crate) fn sim_drop_next_completion(&self, op: u32) {
        debug_assert_ne!(op, AVZ_SIM_OP_REQUEST_STOP, "no completion to drop");
        let op = i32::try_from(op).expect("AVZ_SIM_OP_* fits in an int");
        // SAFETY: as for sim_withhold_next_completion.
        unsafe { sim::avz_sim_vm_drop_next_completion(self.raw(), op) }
    }

    pub(crate) fn sim_delay_next_notification(&self, delay: Duration) {
        // SAFETY: as for sim_fail_next.
        unsafe { sim::avz_sim_vm_delay_next_notification(self.raw(), ms(delay)) }
    }

    pub(crate) fn sim_set_operation_delay(&self, delay: Duration) {
        // SAFETY: as for sim_fail_next.
        unsafe { sim::avz_sim_vm_set_operation_delay_ms(self.raw(), ms(delay)) }
    }

    pub(crate) fn sim_guest_power_off(&self) {
        // SAFETY: `self` holds a reference to a live VM.
        unsafe { sim::avz_sim_vm_guest_power_off(self.raw()) }
    }

    pub(crate) fn sim_guest_vsock_connect(&self, port: u32) {
        // SAFETY: as for sim_fail_next.
        unsafe { sim::avz_sim_vm_guest_vsock_connect(self.raw(), port) }
    }

    pub(crate) fn sim_crash(&self, code: i64) {
        // SAFETY: as for sim_fail_next.
        unsafe { sim::avz_sim_vm_crash(self.raw(), code) }
    }

    pub(crate) fn sim_network_disconnect(&self, device_index: u32, code: i64) {
        // SAFETY: as for sim_fail_next.
        unsafe { sim::avz_sim_vm_network_disconnect(self.raw(), device_index, code) }
    }
}
