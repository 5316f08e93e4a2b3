//! The native configuration: one method per `avz_config_*` function, with the
//! ownership rules of `include/applevz.h` applied once, here.

use std::ffi::{CStr, c_char};
use std::marker::PhantomData;
use std::ptr;

use crate::ffi::cf::{CfHandle, call_with_error};
use crate::ffi::sys;
use crate::framework_error::FrameworkError;

/// A configuration being built. Not `Send`: the native configuration object is not
/// thread-safe, so it is built and consumed on one thread.
pub(crate) struct NativeConfig {
    handle: CfHandle,
    _single_thread: PhantomData<*const ()>,
}

/// The directories of one virtio file-system device.
#[derive(Debug, Clone, Copy)]
pub(crate) enum SharedDirectories<'a> {
    /// One directory, the root of the tag (`VZSingleDirectoryShare`).
    Single { path: &'a CStr, read_only: bool },
    /// Named directories under the tag (`VZMultipleDirectoryShare`): name, path,
    /// read-only.
    Multiple(&'a [(&'a CStr, &'a CStr, bool)]),
}

/// A finished configuration, kept to create further native VMs from (one for each
/// restore). Only [`NativeVm::create`](super::native_vm::NativeVm::create) reads it,
/// under the owner's mutex.
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

    pub(super) fn raw(&self) -> *mut sys::avz_config {
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
        // The ABI takes these enums as C ints; every AVZ_* value fits.
        let c_int = |value: u32| i32::try_from(value).expect("an AVZ_* constant fits in an int");
        call_with_error("adding a disk failed", |error| {
            // SAFETY: live configuration; borrowed NUL-terminated strings (or NULL);
            // valid out-param.
            unsafe {
                sys::avz_config_add_storage_device(
                    self.raw(),
                    c_int(interface),
                    path.as_ptr(),
                    read_only,
                    c_int(caching_mode),
                    c_int(sync_mode),
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

    /// A virtio file-system device sharing `directories` under `tag`.
    pub(crate) fn add_directory_share(
        &mut self,
        tag: &CStr,
        directories: SharedDirectories<'_>,
    ) -> Result<(), FrameworkError> {
        // One array per field, all of the same length by construction.
        let (names, paths, read_only): (Option<Vec<*const c_char>>, Vec<_>, Vec<_>) =
            match directories {
                SharedDirectories::Single { path, read_only } => {
                    (None, vec![path.as_ptr()], vec![read_only])
                }
                SharedDirectories::Multiple(directories) => (
                    Some(
                        directories
                            .iter()
                            .map(|(name, _, _)| name.as_ptr())
                            .collect(),
                    ),
                    directories
                        .iter()
                        .map(|(_, path, _)| path.as_ptr())
                        .collect(),
                    directories
                        .iter()
                        .map(|(_, _, read_only)| *read_only)
                        .collect(),
                ),
            };
        call_with_error("adding a shared directory failed", |error| {
            // SAFETY: live configuration; `tag` and every string behind the pointer
            // arrays are borrowed and outlive the call; `paths` and `read_only` (and
            // `names`, when present) hold `paths.len()` entries each, as built above;
            // valid out-param.
            unsafe {
                sys::avz_config_add_directory_share(
                    self.raw(),
                    tag.as_ptr(),
                    names.as_ref().map_or(ptr::null(), Vec::as_ptr),
                    paths.as_ptr(),
                    read_only.as_ptr(),
                    paths.len(),
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
