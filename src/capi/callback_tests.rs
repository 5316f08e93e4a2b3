//! The C API called back into from a subscription's callback, and subscriptions freed
//! on an idle VM: the two ways a C caller met the lifecycle's timing (issue 15, items
//! 3 and 5). Unit tests, so that they can build the VM without a definition file.

use std::ffi::{CStr, c_void};
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::mpsc::{self, Sender};
use std::time::Duration;

use super::error::{applevz_error, applevz_error_free, applevz_error_message};
use super::event::{applevz_event, applevz_event_get_state};
use super::states::{APPLEVZ_STATE_RUNNING, APPLEVZ_STATE_STOPPED};
use super::subscription::applevz_subscription_free;
use super::vm::{
    APPLEVZ_SHUTDOWN_HALT, applevz_vm, applevz_vm_get_state, applevz_vm_shutdown, applevz_vm_start,
    applevz_vm_subscribe, applevz_vm_wait_for_state,
};
use crate::config::{LinuxBootLoader, VmConfig};
use crate::sim::SimulatedGuest;
use crate::vm::VirtualMachine;
use serial_test::serial;

/// A private scratch directory with a placeholder kernel, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "applevz-capi-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("scratch directory");
        std::fs::write(path.join("vmlinuz"), b"not really a kernel").expect("kernel");
        Self(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn open(dir: &Scratch, guest: SimulatedGuest) -> *mut applevz_vm {
    let config = VmConfig::builder()
        .cpu_count(1)
        .memory_mib(256)
        .linux_boot_loader(LinuxBootLoader::new(dir.0.join("vmlinuz")))
        .simulated_guest(guest)
        .build()
        .expect("a valid configuration");
    super::vm::wrap(VirtualMachine::new(&config).expect("a VM"))
}

/// What the callback of `halt_on_running` reports: the outcome of its own call.
struct HaltOnRunning {
    vm: *mut applevz_vm,
    outcome: Mutex<Option<Sender<Result<(), String>>>>,
}

unsafe extern "C" fn halt_on_running(user_data: *mut c_void, event: *const applevz_event) {
    // SAFETY: `user_data` is the `HaltOnRunning` the test keeps alive until the
    // subscription is freed; `event` is valid during the call.
    let (context, state) = unsafe {
        (
            &*user_data.cast::<HaltOnRunning>(),
            applevz_event_get_state(event),
        )
    };
    if state != APPLEVZ_STATE_RUNNING {
        return;
    }
    let Some(report) = context.outcome.lock().unwrap().take() else {
        return; // reacted once already
    };
    let mut error: *mut applevz_error = std::ptr::null_mut();
    // SAFETY: the VM is live until the test frees it, after freeing this subscription.
    let halted = unsafe { applevz_vm_shutdown(context.vm, APPLEVZ_SHUTDOWN_HALT, &raw mut error) };
    let outcome = if halted {
        Ok(())
    } else {
        // SAFETY: a failed call set `error` (+1), freed here once.
        let message = unsafe {
            let message = CStr::from_ptr(applevz_error_message(error))
                .to_string_lossy()
                .into_owned();
            applevz_error_free(error);
            message
        };
        Err(message)
    };
    let _ = report.send(outcome);
}

/// A C caller halting the VM from its callback on the RUNNING event is served, not
/// refused because the start has not returned yet (it waits for it).
#[test]
#[serial(subscription_threads)]
fn a_callback_can_halt_the_vm_on_the_running_event() {
    for round in 0..20 {
        let dir = Scratch::new("halt-on-running");
        let vm = open(
            &dir,
            SimulatedGuest {
                boot_delay: Duration::from_millis(5),
                ..SimulatedGuest::default()
            },
        );
        let (report, outcome) = mpsc::channel();
        let context = Box::new(HaltOnRunning {
            vm,
            outcome: Mutex::new(Some(report)),
        });
        let user_data = std::ptr::from_ref::<HaltOnRunning>(&context)
            .cast_mut()
            .cast();
        // SAFETY: `vm` is live; the callback and `context` outlive the subscription.
        unsafe {
            let subscription =
                applevz_vm_subscribe(vm, Some(halt_on_running), user_data, std::ptr::null_mut());
            assert!(!subscription.is_null());
            assert!(
                applevz_vm_start(vm, std::ptr::null_mut()),
                "round {round}: start"
            );
            let outcome = outcome
                .recv_timeout(Duration::from_secs(20))
                .expect("the callback saw RUNNING and called back");
            assert_eq!(outcome, Ok(()), "round {round}: the halt from the callback");
            assert!(applevz_vm_wait_for_state(
                vm,
                APPLEVZ_STATE_STOPPED,
                20_000,
                std::ptr::null_mut()
            ));
            assert_eq!(applevz_vm_get_state(vm), APPLEVZ_STATE_STOPPED);
            applevz_subscription_free(subscription);
            super::vm::applevz_vm_free(vm);
        }
        drop(context);
    }
}

unsafe extern "C" fn ignore(_: *mut c_void, _: *const applevz_event) {}

/// Threads of this process named as a subscription's (`comm` keeps 15 bytes).
fn subscription_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(Result::ok)
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|name| name.trim_end() == "applevz-subscri")
        })
        .count()
}

/// A freed subscription's thread ends with it, on a VM that sends no event.
#[test]
#[serial(subscription_threads)]
fn freed_subscriptions_leave_no_thread_on_an_idle_vm() {
    let dir = Scratch::new("subscribe-free");
    let vm = open(&dir, SimulatedGuest::default());
    for round in 0..200 {
        // SAFETY: `vm` is live; `ignore` touches nothing.
        unsafe {
            let subscription =
                applevz_vm_subscribe(vm, Some(ignore), std::ptr::null_mut(), std::ptr::null_mut());
            assert!(!subscription.is_null());
            applevz_subscription_free(subscription);
        }
        // Only this test makes subscription threads in this binary, and each is joined
        // by its free: none may be left, at any round. A joined thread's /proc entry
        // can outlive the join for a moment (the kernel wakes the joiner before it
        // releases the task), hence the short poll.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while subscription_threads() > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(subscription_threads(), 0, "round {round}");
    }
    // SAFETY: live, freed once.
    unsafe { super::vm::applevz_vm_free(vm) };
}
