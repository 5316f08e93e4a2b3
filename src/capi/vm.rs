//! `applevz_vm`: a [`VirtualMachine`] opened from a definition file, its lifecycle
//! calls and its states.

use std::ffi::{CStr, OsStr, c_char, c_void};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

use crate::config::definition::VmDefinition;
use crate::error::Error;
use crate::state::ShutdownPolicy;
use crate::vm::VirtualMachine;

use super::error::{applevz_error, finish, run};
use super::guard;
use super::states::{APPLEVZ_STATE_INVALID, applevz_vm_state, state_from_c, state_to_c};
use super::subscription::{self, Subscribers, applevz_event_callback, applevz_subscription};

/// `applevz_vm`: an open VM (+1 from `applevz_vm_open`, freed with `applevz_vm_free`).
pub struct applevz_vm {
    pub(super) vm: VirtualMachine,
    /// Stopped by `applevz_vm_free` before the VM is dropped.
    pub(super) subscriptions: Subscribers,
}

/// `applevz_shutdown_policy`: how `applevz_vm_shutdown` stops the VM.
pub type applevz_shutdown_policy = i32;

/// [`ShutdownPolicy::Powerdown`]: ask the guest, wait up to the graceful timeout.
pub const APPLEVZ_SHUTDOWN_POWERDOWN: applevz_shutdown_policy = 0;
/// [`ShutdownPolicy::Halt`]: force the VM off (refused while another operation is under
/// way); a suspended VM keeps its saved state.
pub const APPLEVZ_SHUTDOWN_HALT: applevz_shutdown_policy = 1;
/// [`ShutdownPolicy::Poweroff`]: force the VM off once an operation under way has
/// settled; a VM that was already suspended has its saved state discarded.
pub const APPLEVZ_SHUTDOWN_POWEROFF: applevz_shutdown_policy = 2;

fn policy_from_c(value: applevz_shutdown_policy) -> Option<ShutdownPolicy> {
    match value {
        APPLEVZ_SHUTDOWN_POWERDOWN => Some(ShutdownPolicy::Powerdown),
        APPLEVZ_SHUTDOWN_HALT => Some(ShutdownPolicy::Halt),
        APPLEVZ_SHUTDOWN_POWEROFF => Some(ShutdownPolicy::Poweroff),
        _ => None,
    }
}

/// Opens the definition at `path` exactly as the command-line tool does (relative
/// paths resolved against the file's directory), and creates the VM.
fn open(path: &Path) -> Result<VirtualMachine, applevz_error> {
    let c_error = |error: Error| applevz_error::from_error(&error);
    let definition = VmDefinition::load(path).map_err(c_error)?;
    #[allow(unused_mut)] // changed on the simulator only
    let mut builder = definition.to_builder(path).map_err(c_error)?;
    #[cfg(applevz_simulator)]
    {
        builder = builder.simulated_guest(super::sim_guest::from_env(path)?);
    }
    let config = definition.finish(path, builder).map_err(c_error)?;
    VirtualMachine::new(&config).map_err(c_error)
}

/// `applevz_vm_open(vm_toml_path, error)`: a new VM from a definition file (+1, freed
/// with `applevz_vm_free`), or NULL and an error.
///
/// # Safety
/// `vm_toml_path` is NULL or a NUL-terminated string; `error` is NULL or valid for
/// writing one pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn applevz_vm_open(
    vm_toml_path: *const c_char,
    error: *mut *mut applevz_error,
) -> *mut applevz_vm {
    let what = "applevz_vm_open";
    let result = run(what, || {
        if vm_toml_path.is_null() {
            return Err(applevz_error::invalid_argument(format!(
                "{what}: vm_toml_path is NULL"
            )));
        }
        // SAFETY: non-NULL and NUL-terminated, by this function's contract.
        let bytes = unsafe { CStr::from_ptr(vm_toml_path) }.to_bytes();
        let vm = open(Path::new(OsStr::from_bytes(bytes)))?;
        Ok(wrap(vm))
    });
    // SAFETY: `error` is NULL or writable, by this function's contract.
    unsafe { finish(result, error, std::ptr::null_mut()) }
}

/// `vm` as a C caller holds it (+1, freed with `applevz_vm_free`).
pub(super) fn wrap(vm: VirtualMachine) -> *mut applevz_vm {
    Box::into_raw(Box::new(applevz_vm {
        vm,
        subscriptions: Subscribers::default(),
    }))
}

/// `applevz_vm_free(vm)`: frees the VM; NULL is ignored. A running or paused VM is
/// forced off without waiting, as dropping a `VirtualMachine` does. Its subscriptions
/// are stopped first (waiting for callbacks under way on other threads), so no
/// callback runs once this returns.
///
/// # Safety
/// `vm` is NULL or a VM from `applevz_vm_open` not yet freed, and no other call on it
/// is under way or follows.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn applevz_vm_free(vm: *mut applevz_vm) {
    if vm.is_null() {
        return;
    }
    // SAFETY: a pointer from `Box::into_raw` in `applevz_vm_open`, freed exactly once
    // and no longer used by anyone, by this function's contract.
    let vm = unsafe { Box::from_raw(vm) };
    guard(
        move || {
            vm.subscriptions.stop_all();
            drop(vm);
        },
        |_| (),
    );
}

/// Runs `operation` on the VM behind `vm`, the shape of every lifecycle export.
///
/// # Safety
/// `vm` is NULL or a live VM from `applevz_vm_open`; `error` is NULL or valid for
/// writing one pointer.
unsafe fn lifecycle(
    what: &str,
    vm: *const applevz_vm,
    error: *mut *mut applevz_error,
    operation: impl FnOnce(&VirtualMachine) -> Result<(), applevz_error>,
) -> bool {
    let result = run(what, || {
        // SAFETY: NULL or a live VM, by this function's contract; shared access is
        // fine, VirtualMachine is Sync.
        let Some(vm) = (unsafe { vm.as_ref() }) else {
            return Err(applevz_error::invalid_argument(format!(
                "{what}: vm is NULL"
            )));
        };
        operation(&vm.vm).map(|()| true)
    });
    // SAFETY: `error` is NULL or writable, by this function's contract.
    unsafe { finish(result, error, false) }
}

fn c_result(result: Result<(), Error>) -> Result<(), applevz_error> {
    result.map_err(|error| applevz_error::from_error(&error))
}

/// `applevz_vm_start(vm, error)`: boots a stopped VM (or one in the error state),
/// resumes a paused one, restores a suspended one; nothing for a running one.
///
/// # Safety
/// `vm` is NULL or a live VM; `error` is NULL or valid for writing one pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn applevz_vm_start(
    vm: *mut applevz_vm,
    error: *mut *mut applevz_error,
) -> bool {
    // SAFETY: forwarded from this function's contract.
    unsafe { lifecycle("applevz_vm_start", vm, error, |vm| c_result(vm.start())) }
}

/// `applevz_vm_shutdown(vm, policy, error)`: stops the VM under `policy`.
///
/// # Safety
/// `vm` is NULL or a live VM; `error` is NULL or valid for writing one pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn applevz_vm_shutdown(
    vm: *mut applevz_vm,
    policy: applevz_shutdown_policy,
    error: *mut *mut applevz_error,
) -> bool {
    let what = "applevz_vm_shutdown";
    // SAFETY: forwarded from this function's contract.
    unsafe {
        lifecycle(what, vm, error, |vm| {
            let policy = policy_from_c(policy).ok_or_else(|| {
                applevz_error::invalid_argument(format!(
                    "{what}: {policy} is not an applevz_shutdown_policy"
                ))
            })?;
            c_result(vm.shutdown(policy))
        })
    }
}

/// `applevz_vm_suspend(vm, error)`: saves a running or paused VM to its saved-state
/// file and stops it.
///
/// # Safety
/// `vm` is NULL or a live VM; `error` is NULL or valid for writing one pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn applevz_vm_suspend(
    vm: *mut applevz_vm,
    error: *mut *mut applevz_error,
) -> bool {
    // SAFETY: forwarded from this function's contract.
    unsafe { lifecycle("applevz_vm_suspend", vm, error, |vm| c_result(vm.suspend())) }
}

/// `applevz_vm_pause(vm, error)`: pauses a running VM.
///
/// # Safety
/// `vm` is NULL or a live VM; `error` is NULL or valid for writing one pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn applevz_vm_pause(
    vm: *mut applevz_vm,
    error: *mut *mut applevz_error,
) -> bool {
    // SAFETY: forwarded from this function's contract.
    unsafe { lifecycle("applevz_vm_pause", vm, error, |vm| c_result(vm.pause())) }
}

/// `applevz_vm_resume(vm, error)`: resumes a paused VM.
///
/// # Safety
/// `vm` is NULL or a live VM; `error` is NULL or valid for writing one pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn applevz_vm_resume(
    vm: *mut applevz_vm,
    error: *mut *mut applevz_error,
) -> bool {
    // SAFETY: forwarded from this function's contract.
    unsafe { lifecycle("applevz_vm_resume", vm, error, |vm| c_result(vm.resume())) }
}

/// `applevz_vm_wait_for_state(vm, state, timeout_ms, error)`: waits until the VM is in
/// `state`, up to `timeout_ms` milliseconds.
///
/// # Safety
/// `vm` is NULL or a live VM; `error` is NULL or valid for writing one pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn applevz_vm_wait_for_state(
    vm: *const applevz_vm,
    state: applevz_vm_state,
    timeout_ms: u64,
    error: *mut *mut applevz_error,
) -> bool {
    let what = "applevz_vm_wait_for_state";
    // SAFETY: forwarded from this function's contract.
    unsafe {
        lifecycle(what, vm, error, |vm| {
            let target = state_from_c(state).ok_or_else(|| {
                applevz_error::invalid_argument(format!(
                    "{what}: {state} is not an applevz_vm_state"
                ))
            })?;
            c_result(vm.wait_for_state(target, Duration::from_millis(timeout_ms)))
        })
    }
}

/// `applevz_vm_get_state(vm)`: the VM's state; `APPLEVZ_STATE_INVALID` for NULL.
///
/// # Safety
/// `vm` is NULL or a live VM.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn applevz_vm_get_state(vm: *const applevz_vm) -> applevz_vm_state {
    // SAFETY: NULL or a live VM, by this function's contract.
    let Some(vm) = (unsafe { vm.as_ref() }) else {
        return APPLEVZ_STATE_INVALID;
    };
    guard(|| state_to_c(vm.vm.state()), |_| APPLEVZ_STATE_INVALID)
}

/// `applevz_vm_subscribe(vm, callback, user_data, error)`: a new subscription (+1,
/// freed with `applevz_subscription_free`), or NULL and an error: `INVALID_ARGUMENT`
/// when `vm` or `callback` is NULL, `IO` when no thread could be started.
///
/// # Safety
/// `vm` is NULL or a live VM; `callback` and `user_data` may be used from another
/// thread until the subscription is freed; `error` is NULL or valid for writing one
/// pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn applevz_vm_subscribe(
    vm: *mut applevz_vm,
    callback: applevz_event_callback,
    user_data: *mut c_void,
    error: *mut *mut applevz_error,
) -> *mut applevz_subscription {
    let what = "applevz_vm_subscribe";
    let result = run(what, || {
        // SAFETY: NULL or a live VM, by this function's contract.
        let Some(vm) = (unsafe { vm.as_ref() }) else {
            return Err(applevz_error::invalid_argument(format!(
                "{what}: vm is NULL"
            )));
        };
        let Some(callback) = callback else {
            return Err(applevz_error::invalid_argument(format!(
                "{what}: callback is NULL"
            )));
        };
        subscription::subscribe(
            vm.vm.subscribe_keyed(),
            &vm.subscriptions,
            callback,
            user_data,
        )
    });
    // SAFETY: `error` is NULL or writable, by this function's contract.
    unsafe { finish(result, error, std::ptr::null_mut()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_arguments_fail_cleanly() {
        let mut error: *mut applevz_error = std::ptr::null_mut();
        // SAFETY: NULL VM and path are what is tested; `error` is writable.
        unsafe {
            assert!(applevz_vm_open(std::ptr::null(), &raw mut error).is_null());
            assert_eq!(
                super::super::error::applevz_error_code(error),
                super::super::error::APPLEVZ_ERROR_INVALID_ARGUMENT
            );
            super::super::error::applevz_error_free(error);
            assert!(!applevz_vm_start(
                std::ptr::null_mut(),
                std::ptr::null_mut()
            ));
            assert_eq!(
                applevz_vm_get_state(std::ptr::null()),
                APPLEVZ_STATE_INVALID
            );
            applevz_vm_free(std::ptr::null_mut());
        }
    }
}
