//! Safe wrappers over the raw C ABI: one method per native function, with the
//! ownership rules of `include/applevz.h` applied once, here.

use std::ffi::{CStr, c_char, c_void};
use std::marker::PhantomData;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::ptr;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use crate::callback::{
    self, AcceptFn, CompletionSlot, ObserverFn, accept_trampoline, box_into_raw,
    completion_trampoline, connect_trampoline, observer_trampoline, release_box,
};
use crate::cf::{CfError, CfHandle};
use crate::framework_error::FrameworkError;
use crate::state::VmState;
use crate::sys;
use crate::sys::cf::CFErrorRef;

/// Runs a native call that reports failure through a `CFErrorRef *` out-parameter.
fn call_with_error(
    what: &str,
    call: impl FnOnce(*mut CFErrorRef) -> bool,
) -> Result<(), FrameworkError> {
    let mut error: CFErrorRef = ptr::null_mut();
    let succeeded = call(&mut error);
    // SAFETY: the ABI stores a +1 error (or nothing) in the out-parameter; we take it
    // over whatever `succeeded` says, so it is released exactly once.
    let error = unsafe { CfError::from_create_rule(error) };
    match (succeeded, error) {
        (true, _) => Ok(()),
        (false, Some(error)) => Err(error.into()),
        (false, None) => Err(FrameworkError::missing(what)),
    }
}

/// Host capabilities and limits.
pub(crate) mod host {
    use super::*;

    /// The host's configuration limits.
    pub(crate) fn limits() -> sys::avz_limits {
        let mut limits = sys::avz_limits {
            min_cpu_count: 0,
            max_cpu_count: 0,
            min_memory_size: 0,
            max_memory_size: 0,
        };
        // SAFETY: `limits` is a valid, writable avz_limits for the call (borrowed).
        unsafe { sys::avz_get_limits(&mut limits) };
        limits
    }

    /// Whether this host supports virtualization.
    pub(crate) fn is_supported() -> bool {
        // SAFETY: no arguments; safe from any thread.
        unsafe { sys::avz_is_supported() }
    }

    /// Whether this host can save and restore VM state at all.
    pub(crate) fn save_restore_supported() -> bool {
        // SAFETY: no arguments; safe from any thread.
        unsafe { sys::avz_save_restore_supported() }
    }

    /// Whether the framework accepts `tag` for a virtio file-system device.
    pub(crate) fn validate_directory_share_tag(tag: &CStr) -> Result<(), FrameworkError> {
        call_with_error("the tag is invalid", |error| {
            // SAFETY: borrowed NUL-terminated tag; valid out-param.
            unsafe { sys::avz_validate_directory_share_tag(tag.as_ptr(), error) }
        })
    }

    /// `VZLinuxRosettaDirectoryShare.availability` (raw `AVZ_ROSETTA_*`).
    pub(crate) fn rosetta_availability() -> u32 {
        // SAFETY: no arguments; safe from any thread.
        unsafe { sys::avz_rosetta_availability() as u32 }
    }

    /// A new machine identifier's data representation.
    pub(crate) fn new_machine_identifier() -> Result<Vec<u8>, FrameworkError> {
        let mut buffer = vec![0u8; sys::AVZ_MACHINE_IDENTIFIER_MAX as usize];
        let mut length = 0usize;
        call_with_error("creating a machine identifier failed", |error| {
            // SAFETY: `buffer` is writable for its length; `length` and `error` are
            // valid out-parameters for the duration of the call.
            unsafe {
                sys::avz_machine_identifier_create(
                    buffer.as_mut_ptr(),
                    buffer.len(),
                    &mut length,
                    error,
                )
            }
        })?;
        buffer.truncate(length.min(buffer.len()));
        Ok(buffer)
    }
}

/// A configuration being built. Not `Send`: the native configuration object is not
/// thread-safe, so it is built and consumed on one thread.
pub(crate) struct NativeConfig {
    handle: CfHandle,
    _single_thread: PhantomData<*const ()>,
}

/// A finished configuration, kept to create further native VMs from (one for each
/// restore). Only [`NativeVm::create`] reads it, under the owner's mutex.
pub(crate) struct BuiltConfig(NativeConfig);

impl BuiltConfig {
    pub(crate) fn new(config: NativeConfig) -> Self {
        Self(config)
    }

    pub(crate) fn config(&self) -> &NativeConfig {
        &self.0
    }
}

// SAFETY: the configuration is finished: no setter runs on it any more, and
// avz_vm_create only reads it (it copies the configuration). The native object is not
// bound to the thread that built it (an Objective-C object / a simulator object with
// an atomic reference count), and the owner keeps it in a mutex, so no two threads
// use it at once.
unsafe impl Send for BuiltConfig {}

impl NativeConfig {
    pub(crate) fn new() -> Self {
        // SAFETY: avz_config_create returns +1 (create rule) and never NULL.
        let handle =
            unsafe { CfHandle::from_create_rule(sys::avz_config_create().cast_const().cast()) }
                .expect("avz_config_create never returns NULL");
        Self {
            handle,
            _single_thread: PhantomData,
        }
    }

    pub(crate) fn raw(&self) -> *mut sys::avz_config {
        self.handle.as_ptr().cast_mut().cast()
    }

    pub(crate) fn set_cpu_count(&mut self, count: u32) {
        // SAFETY: `self` owns a live configuration, used on this thread only.
        unsafe { sys::avz_config_set_cpu_count(self.raw(), count) }
    }

    pub(crate) fn set_memory_size(&mut self, bytes: u64) {
        // SAFETY: as for set_cpu_count.
        unsafe { sys::avz_config_set_memory_size(self.raw(), bytes) }
    }

    pub(crate) fn set_linux_boot_loader(
        &mut self,
        kernel: &CStr,
        initrd: Option<&CStr>,
        command_line: &CStr,
    ) -> Result<(), FrameworkError> {
        call_with_error("setting the Linux boot loader failed", |error| {
            // SAFETY: live configuration; the strings are NUL-terminated and borrowed
            // for the call; `error` is a valid out-parameter.
            unsafe {
                sys::avz_config_set_linux_boot_loader(
                    self.raw(),
                    kernel.as_ptr(),
                    initrd.map_or(ptr::null(), CStr::as_ptr),
                    command_line.as_ptr(),
                    error,
                )
            }
        })
    }

    pub(crate) fn set_efi_boot_loader(
        &mut self,
        variable_store: &CStr,
        create: bool,
    ) -> Result<(), FrameworkError> {
        call_with_error("setting the EFI boot loader failed", |error| {
            // SAFETY: live configuration; borrowed NUL-terminated path; valid out-param.
            unsafe {
                sys::avz_config_set_efi_boot_loader(
                    self.raw(),
                    variable_store.as_ptr(),
                    create,
                    error,
                )
            }
        })
    }

    pub(crate) fn set_generic_platform(
        &mut self,
        machine_identifier: Option<&[u8]>,
    ) -> Result<(), FrameworkError> {
        let (bytes, length) =
            machine_identifier.map_or((ptr::null(), 0), |id| (id.as_ptr(), id.len()));
        call_with_error("setting the generic platform failed", |error| {
            // SAFETY: live configuration; `bytes` is NULL or readable for `length`
            // bytes during the call; valid out-param.
            unsafe { sys::avz_config_set_generic_platform(self.raw(), bytes, length, error) }
        })
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn add_storage_device(
        &mut self,
        interface: u32,
        path: &CStr,
        read_only: bool,
        caching_mode: u32,
        sync_mode: u32,
        block_device_identifier: Option<&CStr>,
    ) -> Result<(), FrameworkError> {
        call_with_error("adding a disk failed", |error| {
            // SAFETY: live configuration; borrowed NUL-terminated strings (or NULL);
            // valid out-param.
            unsafe {
                sys::avz_config_add_storage_device(
                    self.raw(),
                    interface as i32,
                    path.as_ptr(),
                    read_only,
                    caching_mode as i32,
                    sync_mode as i32,
                    block_device_identifier.map_or(ptr::null(), CStr::as_ptr),
                    error,
                )
            }
        })
    }

    pub(crate) fn add_file_handle_network_device(
        &mut self,
        socket: i32,
        mac_address: Option<&CStr>,
        mtu: u32,
    ) -> Result<(), FrameworkError> {
        call_with_error("adding a network device failed", |error| {
            // SAFETY: live configuration; the socket is borrowed (the native side
            // duplicates it); the address is NULL or borrowed; valid out-param.
            unsafe {
                sys::avz_config_add_file_handle_network_device(
                    self.raw(),
                    socket,
                    mac_address.map_or(ptr::null(), CStr::as_ptr),
                    mtu,
                    error,
                )
            }
        })
    }

    pub(crate) fn add_entropy_device(&mut self) -> Result<(), FrameworkError> {
        call_with_error("adding the entropy device failed", |error| {
            // SAFETY: live configuration; valid out-param.
            unsafe { sys::avz_config_add_entropy_device(self.raw(), error) }
        })
    }

    pub(crate) fn add_memory_balloon_device(&mut self) -> Result<(), FrameworkError> {
        call_with_error("adding the memory balloon failed", |error| {
            // SAFETY: live configuration; valid out-param.
            unsafe { sys::avz_config_add_memory_balloon_device(self.raw(), error) }
        })
    }

    pub(crate) fn add_socket_device(&mut self) -> Result<(), FrameworkError> {
        call_with_error("adding the vsock device failed", |error| {
            // SAFETY: live configuration; valid out-param.
            unsafe { sys::avz_config_add_socket_device(self.raw(), error) }
        })
    }

    /// `names` is `None` for a single-directory share.
    pub(crate) fn add_directory_share(
        &mut self,
        tag: &CStr,
        names: Option<&[&CStr]>,
        paths: &[&CStr],
        read_only: &[bool],
    ) -> Result<(), FrameworkError> {
        let name_ptrs: Option<Vec<*const c_char>> =
            names.map(|n| n.iter().map(|c| c.as_ptr()).collect());
        let path_ptrs: Vec<*const c_char> = paths.iter().map(|c| c.as_ptr()).collect();
        call_with_error("adding a shared directory failed", |error| {
            // SAFETY: live configuration; `tag` and every string behind the pointer
            // arrays are borrowed and outlive the call; the arrays hold `paths.len()`
            // entries each (the caller passes equal lengths); valid out-param.
            unsafe {
                sys::avz_config_add_directory_share(
                    self.raw(),
                    tag.as_ptr(),
                    name_ptrs.as_ref().map_or(ptr::null(), |n| n.as_ptr()),
                    path_ptrs.as_ptr(),
                    read_only.as_ptr(),
                    path_ptrs.len(),
                    error,
                )
            }
        })
    }

    pub(crate) fn add_rosetta_share(&mut self, tag: &CStr) -> Result<(), FrameworkError> {
        call_with_error("adding the Rosetta share failed", |error| {
            // SAFETY: live configuration; borrowed tag; valid out-param.
            unsafe { sys::avz_config_add_rosetta_share(self.raw(), tag.as_ptr(), error) }
        })
    }

    pub(crate) fn add_console_port(
        &mut self,
        name: &CStr,
        is_console: bool,
        read_fd: i32,
        write_fd: i32,
    ) -> Result<(), FrameworkError> {
        call_with_error("adding a console port failed", |error| {
            // SAFETY: live configuration; borrowed name; the descriptors are borrowed
            // (the native side duplicates them); valid out-param.
            unsafe {
                sys::avz_config_add_console_port(
                    self.raw(),
                    name.as_ptr(),
                    is_console,
                    read_fd,
                    write_fd,
                    error,
                )
            }
        })
    }

    pub(crate) fn add_nat_network_device(
        &mut self,
        mac_address: Option<&CStr>,
    ) -> Result<(), FrameworkError> {
        call_with_error("adding a network device failed", |error| {
            // SAFETY: live configuration; the address is NULL or a borrowed
            // NUL-terminated string; valid out-param.
            unsafe {
                sys::avz_config_add_nat_network_device(
                    self.raw(),
                    mac_address.map_or(ptr::null(), CStr::as_ptr),
                    error,
                )
            }
        })
    }

    pub(crate) fn add_serial_port_file(
        &mut self,
        path: &CStr,
        append: bool,
    ) -> Result<(), FrameworkError> {
        call_with_error("adding a serial port failed", |error| {
            // SAFETY: live configuration; borrowed NUL-terminated path; valid out-param.
            unsafe {
                sys::avz_config_add_serial_port_file(self.raw(), path.as_ptr(), append, error)
            }
        })
    }

    pub(crate) fn add_serial_port_fds(
        &mut self,
        read_fd: i32,
        write_fd: i32,
    ) -> Result<(), FrameworkError> {
        call_with_error("adding a serial port failed", |error| {
            // SAFETY: live configuration; the descriptors are borrowed (the native
            // side duplicates them); valid out-param.
            unsafe { sys::avz_config_add_serial_port_fds(self.raw(), read_fd, write_fd, error) }
        })
    }

    pub(crate) fn validate(&self) -> Result<(), FrameworkError> {
        call_with_error("validation failed", |error| {
            // SAFETY: live configuration; valid out-param.
            unsafe { sys::avz_config_validate(self.raw(), error) }
        })
    }

    pub(crate) fn validate_save_restore(&self) -> Result<(), FrameworkError> {
        call_with_error("save/restore validation failed", |error| {
            // SAFETY: live configuration; valid out-param.
            unsafe { sys::avz_config_validate_save_restore(self.raw(), error) }
        })
    }
}

/// A native VM. `Send + Sync` through [`CfHandle`]: the native side serializes every
/// call on the VM's own queue.
#[derive(Clone)]
pub(crate) struct NativeVm {
    handle: CfHandle,
}

/// The native VM a [`crate::VirtualMachine`] drives now. The VM restores a saved state
/// into a fresh native VM object (Apple does not document restoring into one that has
/// already run), so holders that outlive a restore (vsock listeners, simulator
/// controls) reach the VM through this slot rather than a fixed object.
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
        observer: ObserverFn,
    ) -> Result<Self, FrameworkError> {
        let context = box_into_raw::<ObserverFn>(observer);
        let mut vm: *mut sys::avz_vm = ptr::null_mut();
        call_with_error("creating the VM failed", |error| {
            // SAFETY: live configuration (borrowed); the observer context's ownership
            // passes to the native side, which calls `release_box` exactly once
            // (also when creation fails); valid out-param.
            vm = unsafe {
                sys::avz_vm_create(
                    config.raw(),
                    Some(observer_trampoline),
                    context,
                    Some(release_box::<ObserverFn>),
                    error,
                )
            };
            !vm.is_null()
        })?;
        // SAFETY: avz_vm_create returned a +1 VM (create rule), non-NULL as checked.
        let handle = unsafe { CfHandle::from_create_rule(vm.cast_const().cast()) }
            .expect("checked non-NULL");
        Ok(Self { handle })
    }

    pub(crate) fn raw(&self) -> *mut sys::avz_vm {
        self.handle.as_ptr().cast_mut().cast()
    }

    /// Starts `op` and waits up to `timeout` for its completion. `None` means the wait
    /// timed out; the completion may still arrive later and is then discarded.
    pub(crate) fn run(
        &self,
        op: AsyncOp<'_>,
        timeout: Duration,
    ) -> Option<Result<(), FrameworkError>> {
        let (slot, context) = CompletionSlot::new();
        self.begin(op, Some(completion_trampoline), context);
        let outcome = slot.wait(timeout);
        if outcome.is_none() {
            if let AsyncOp::Save(path) = op {
                // A save that completes after we gave up must not leave its file behind.
                let path = std::path::PathBuf::from(std::ffi::OsStr::from_bytes(path.to_bytes()));
                slot.abandon_with_cleanup(path);
            }
        }
        outcome
    }

    /// Starts a forced stop without waiting for it.
    pub(crate) fn stop_detached(&self) {
        self.begin(
            AsyncOp::Stop,
            Some(callback::ignore_completion),
            ptr::null_mut(),
        );
    }

    fn begin(&self, op: AsyncOp<'_>, completion: sys::avz_completion_fn, context: *mut c_void) {
        let vm = self.raw();
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
                    sys::avz_vm_save_state(vm, path.as_ptr(), completion, context)
                }
                AsyncOp::Restore(path) => {
                    sys::avz_vm_restore_state(vm, path.as_ptr(), completion, context)
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
            unsafe { sys::avz_vm_balloon_target(self.raw(), &mut bytes, error) }
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
        let (slot, context) = CompletionSlot::<OwnedFd>::new();
        // SAFETY: live VM; `connect_trampoline` is called exactly once with `context`,
        // which it then owns.
        unsafe { sys::avz_vm_vsock_connect(self.raw(), port, Some(connect_trampoline), context) };
        slot.wait(timeout)
    }

    /// Hands every guest connection to host `port` to `accept` until removed.
    pub(crate) fn vsock_listen(&self, port: u32, accept: AcceptFn) -> Result<(), FrameworkError> {
        let context = box_into_raw::<AcceptFn>(accept);
        call_with_error("listening failed", |error| {
            // SAFETY: live VM; the context's ownership passes to the native side, which
            // calls `release_box::<AcceptFn>` exactly once (also on failure); valid
            // out-param; not called from a callback.
            unsafe {
                sys::avz_vm_vsock_listen(
                    self.raw(),
                    port,
                    Some(accept_trampoline),
                    context,
                    Some(release_box::<AcceptFn>),
                    error,
                )
            }
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
