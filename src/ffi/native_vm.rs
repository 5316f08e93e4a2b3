//! The native VM: one method per `avz_vm_*` function, with the ownership rules of
//! `include/applevz.h` applied once, here.

use std::ffi::CStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::ptr;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use crate::ffi::callback::{self, CompletionSlot, NativeCallback, NativeEvent, SpareSlots};
use crate::ffi::cf::{CfHandle, call_with_error};
use crate::ffi::native_config::NativeConfig;
use crate::ffi::sys;
use crate::framework_error::FrameworkError;
use crate::state::VmState;

/// A native VM (one reference to it).
#[derive(Clone)]
pub(crate) struct NativeVm {
    handle: CfHandle,
}

// SAFETY: the native VM object is not bound to a thread: the shim (and the simulator)
// hop onto the VM's own serial queue for every call and property read, and
// CFRetain/CFRelease are atomic. A reference may therefore move to another thread.
unsafe impl Send for NativeVm {}
// SAFETY: as for Send: every method reaches only native functions that serialize on
// the VM's queue, so calls from several threads at once are safe.
unsafe impl Sync for NativeVm {}

/// The native VM a [`crate::VirtualMachine`] drives now. The VM restores a saved state
/// into a fresh native VM object (Apple does not document restoring into one that has
/// already run), so holders that outlive a restore (vsock listeners) reach the VM
/// through this slot rather than a fixed object. A simulator control does not: it
/// takes the object current when it is made (`applevz::sim::SimulatorControl`).
#[derive(Clone)]
pub(crate) struct NativeSlot(Arc<RwLock<NativeVm>>);

impl NativeSlot {
    pub(crate) fn new(vm: NativeVm) -> Self {
        Self(Arc::new(RwLock::new(vm)))
    }

    /// The current native VM (one more reference to it).
    pub(crate) fn get(&self) -> NativeVm {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Runs `f` on the current native VM without taking a reference of its own. The VM
    /// cannot be replaced meanwhile, so `f` must not call [`NativeSlot::replace`]; the
    /// lifecycle replaces it only while it holds the VM for an operation, and runs its
    /// operations through here under that same hold.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&NativeVm) -> R) -> R {
        f(&self.0.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Makes `vm` the current native VM; returns the one it replaces.
    pub(crate) fn replace(&self, vm: NativeVm) -> NativeVm {
        std::mem::replace(
            &mut *self.0.write().unwrap_or_else(PoisonError::into_inner),
            vm,
        )
    }
}

/// The asynchronous native operations.
#[derive(Debug, Clone, Copy)]
pub(crate) enum AsyncOp<'a> {
    Start,
    Stop,
    Pause,
    Resume,
    Save(&'a CStr),
    Restore(&'a CStr),
}

impl NativeVm {
    /// Creates a VM from `config`; `observer` receives every event until the VM is
    /// destroyed.
    pub(crate) fn create(
        config: &NativeConfig,
        observer: impl Fn(NativeEvent) + Send + Sync + 'static,
    ) -> Result<Self, FrameworkError> {
        let observer = callback::observer(observer);
        let mut vm: *mut sys::avz_vm = ptr::null_mut();
        call_with_error("creating the VM failed", |error| {
            let (function, context, release) = observer.into_raw();
            // SAFETY: live configuration (borrowed); the observer context's ownership
            // passes to the native side, which calls `release` exactly once (also when
            // creation fails); valid out-param.
            vm = unsafe { sys::avz_vm_create(config.raw(), function, context, release, error) };
            !vm.is_null()
        })?;
        // SAFETY: avz_vm_create returned a +1 VM (create rule), non-NULL as checked.
        let handle = unsafe { CfHandle::from_create_rule(vm.cast_const().cast()) }
            .expect("checked non-NULL");
        Ok(Self { handle })
    }

    pub(super) fn raw(&self) -> *mut sys::avz_vm {
        self.handle.as_ptr().cast_mut().cast()
    }

    /// Starts `op` and waits up to `timeout` for its completion. `None` means the wait
    /// timed out; the completion may still arrive later and is then discarded.
    pub(crate) fn run(
        &self,
        op: AsyncOp<'_>,
        timeout: Duration,
    ) -> Option<Result<(), FrameworkError>> {
        self.run_reusing(op, timeout, &mut SpareSlots::default())
    }

    /// As [`NativeVm::run`], taking the completion slot from `spares` and giving it back
    /// once the completion arrived.
    pub(crate) fn run_reusing(
        &self,
        op: AsyncOp<'_>,
        timeout: Duration,
        spares: &mut SpareSlots,
    ) -> Option<Result<(), FrameworkError>> {
        let (slot, completion) = spares.take();
        self.begin(op, completion);
        let outcome = slot.wait(timeout);
        match outcome {
            Some(_) => spares.give_back(slot),
            None => {
                if let AsyncOp::Save(path) = op {
                    // A save that completes after we gave up must not leave its file
                    // behind.
                    let path =
                        std::path::PathBuf::from(std::ffi::OsStr::from_bytes(path.to_bytes()));
                    slot.abandon_with_cleanup(path);
                }
            }
        }
        outcome
    }

    /// Starts a forced stop without waiting for it.
    pub(crate) fn stop_detached(&self) {
        self.begin(AsyncOp::Stop, callback::ignored_completion());
    }

    fn begin(&self, op: AsyncOp<'_>, completion: NativeCallback<sys::avz_completion_fn>) {
        let vm = self.raw();
        let (completion, context, _) = completion.into_raw();
        // SAFETY: `self` owns a live VM; paths are borrowed NUL-terminated strings the
        // native side copies before returning; `completion` is called exactly once
        // with `context`, which it then owns.
        unsafe {
            match op {
                AsyncOp::Start => sys::avz_vm_start(vm, completion, context),
                AsyncOp::Stop => sys::avz_vm_stop(vm, completion, context),
                AsyncOp::Pause => sys::avz_vm_pause(vm, completion, context),
                AsyncOp::Resume => sys::avz_vm_resume(vm, completion, context),
                AsyncOp::Save(path) => {
                    sys::avz_vm_save_state(vm, path.as_ptr(), completion, context);
                }
                AsyncOp::Restore(path) => {
                    sys::avz_vm_restore_state(vm, path.as_ptr(), completion, context);
                }
            }
        }
    }

    /// Asks the guest to power off.
    pub(crate) fn request_stop(&self) -> Result<(), FrameworkError> {
        call_with_error("the stop request failed", |error| {
            // SAFETY: live VM; valid out-param; not called from a callback.
            unsafe { sys::avz_vm_request_stop(self.raw(), error) }
        })
    }

    /// The framework's current state.
    pub(crate) fn state(&self) -> VmState {
        // SAFETY: live VM; not called from a callback.
        callback::state_from_raw(unsafe { sys::avz_vm_state(self.raw()) })
    }

    /// The memory balloon's target size in bytes.
    pub(crate) fn balloon_target(&self) -> Result<u64, FrameworkError> {
        let mut bytes = 0u64;
        call_with_error("reading the balloon target failed", |error| {
            // SAFETY: live VM; valid out-params; not called from a callback.
            unsafe { sys::avz_vm_balloon_target(self.raw(), &raw mut bytes, error) }
        })?;
        Ok(bytes)
    }

    /// Sets the memory balloon's target size in bytes.
    pub(crate) fn set_balloon_target(&self, bytes: u64) -> Result<(), FrameworkError> {
        call_with_error("setting the balloon target failed", |error| {
            // SAFETY: live VM; valid out-param; not called from a callback.
            unsafe { sys::avz_vm_set_balloon_target(self.raw(), bytes, error) }
        })
    }

    /// Connects to guest vsock `port`; `None` when the wait timed out (a late
    /// connection is closed when it arrives).
    pub(crate) fn vsock_connect(
        &self,
        port: u32,
        timeout: Duration,
    ) -> Option<Result<OwnedFd, FrameworkError>> {
        let (slot, completion) = CompletionSlot::for_connection();
        let (completion, context, _) = completion.into_raw();
        // SAFETY: live VM; `completion` is called exactly once with `context`, which it
        // then owns.
        unsafe { sys::avz_vm_vsock_connect(self.raw(), port, completion, context) };
        slot.wait(timeout)
    }

    /// Hands every guest connection to host `port` to `accept` until removed.
    pub(crate) fn vsock_listen(
        &self,
        port: u32,
        accept: impl Fn(OwnedFd, u32, u32) + Send + Sync + 'static,
    ) -> Result<(), FrameworkError> {
        let accept = callback::vsock_accept(accept);
        call_with_error("listening failed", |error| {
            let (function, context, release) = accept.into_raw();
            // SAFETY: live VM; the context's ownership passes to the native side, which
            // calls `release` exactly once (also on failure); valid out-param; not
            // called from a callback.
            unsafe { sys::avz_vm_vsock_listen(self.raw(), port, function, context, release, error) }
        })
    }

    /// Stops listening on host `port`.
    pub(crate) fn vsock_remove_listener(&self, port: u32) -> Result<(), FrameworkError> {
        call_with_error("removing the listener failed", |error| {
            // SAFETY: live VM; valid out-param; not called from a callback.
            unsafe { sys::avz_vm_vsock_remove_listener(self.raw(), port, error) }
        })
    }
}
