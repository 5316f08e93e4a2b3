// The C API (include/applevz_vm.h) from C++17, through a class shaped like Multipass's
// AppleVirtualMachine backend: start, shutdown(policy), suspend, current_state, with
// Multipass's state names, driven through the simulator.
//
// Built and run by tests/capi.rs:
//   c++ -std=c++17 -Iinclude tests/c/multipass_vm.cpp target/debug/libapplevz.a -lpthread -ldl -lm
//   ./a.out SCRATCH_DIR
// It ends with "N passed, M failed"; the exit status is non-zero when anything failed.

#include "applevz_vm.h"

#include <sys/stat.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace mp {

// Multipass's VirtualMachine::State.
enum class State { off, stopped, starting, restarting, running, delayed_shutdown, suspending, suspended, unknown };

// Multipass's VirtualMachine::ShutdownPolicy.
enum class ShutdownPolicy { Powerdown, Halt, Poweroff };

const char* name(State state) {
    switch (state) {
    case State::off: return "off";
    case State::stopped: return "stopped";
    case State::starting: return "starting";
    case State::restarting: return "restarting";
    case State::running: return "running";
    case State::delayed_shutdown: return "delayed_shutdown";
    case State::suspending: return "suspending";
    case State::suspended: return "suspended";
    case State::unknown: return "unknown";
    }
    return "?";
}

// applevz's eleven states in Multipass's terms. `off`, `restarting` and
// `delayed_shutdown` are states the Multipass daemon sets itself (a VM never created, a
// restart, a shutdown scheduled for later); the backend reports the others.
State to_multipass(applevz_vm_state state) {
    switch (state) {
    case APPLEVZ_STATE_STOPPED: return State::stopped;
    case APPLEVZ_STATE_STARTING:
    case APPLEVZ_STATE_RESUMING:
    case APPLEVZ_STATE_RESTORING: return State::starting;  // on the way to running
    case APPLEVZ_STATE_RUNNING: return State::running;
    case APPLEVZ_STATE_PAUSING:
    case APPLEVZ_STATE_SAVING: return State::suspending;  // on the way to (suspended)
    // Multipass has no paused state; like suspended, start() resumes it.
    case APPLEVZ_STATE_PAUSED:
    case APPLEVZ_STATE_SUSPENDED: return State::suspended;
    // Going down: the guest still holds its resources until it is stopped.
    case APPLEVZ_STATE_STOPPING: return State::delayed_shutdown;
    case APPLEVZ_STATE_ERROR:  // the VM failed; start() boots it afresh
    default: return State::unknown;
    }
}

// An error from applevz, with its stable kind.
class VirtualMachineError : public std::runtime_error {
public:
    VirtualMachineError(applevz_error_kind kind, const std::string& message)
        : std::runtime_error(message), kind_(kind) {}
    applevz_error_kind kind() const { return kind_; }

private:
    applevz_error_kind kind_;
};

struct ErrorFree { void operator()(applevz_error* e) const { applevz_error_free(e); } };
struct VmFree { void operator()(applevz_vm* vm) const { applevz_vm_free(vm); } };
struct SubscriptionFree {
    void operator()(applevz_subscription* s) const { applevz_subscription_free(s); }
};

// Throws the error a failed call stored (owning it on the way).
[[noreturn]] void raise(const char* what, applevz_error* raw) {
    std::unique_ptr<applevz_error, ErrorFree> error{raw};
    throw VirtualMachineError(applevz_error_code(error.get()),
                              std::string(what) + ": " + applevz_error_message(error.get()));
}

class AppleVirtualMachine {
public:
    using StateObserver = std::function<void(State)>;

    explicit AppleVirtualMachine(const std::string& vm_toml) {
        applevz_error* error = nullptr;
        vm_.reset(applevz_vm_open(vm_toml.c_str(), &error));
        if (!vm_) raise("open", error);
        subscription_.reset(
            applevz_vm_subscribe(vm_.get(), &AppleVirtualMachine::on_event, this, &error));
        if (!subscription_) raise("subscribe", error);
    }

    // Ends the subscription before the VM: no callback runs once the destructor did.
    ~AppleVirtualMachine() {
        subscription_.reset();
        vm_.reset();  // forces a running VM off, without waiting
    }

    AppleVirtualMachine(const AppleVirtualMachine&) = delete;
    AppleVirtualMachine& operator=(const AppleVirtualMachine&) = delete;

    void start() { call("start", [this](applevz_error** e) { return applevz_vm_start(vm_.get(), e); }); }

    void shutdown(ShutdownPolicy policy = ShutdownPolicy::Powerdown) {
        applevz_shutdown_policy raw = APPLEVZ_SHUTDOWN_POWERDOWN;
        switch (policy) {
        case ShutdownPolicy::Powerdown: raw = APPLEVZ_SHUTDOWN_POWERDOWN; break;
        case ShutdownPolicy::Halt: raw = APPLEVZ_SHUTDOWN_HALT; break;
        case ShutdownPolicy::Poweroff: raw = APPLEVZ_SHUTDOWN_POWEROFF; break;
        }
        call("shutdown", [this, raw](applevz_error** e) { return applevz_vm_shutdown(vm_.get(), raw, e); });
    }

    void suspend() { call("suspend", [this](applevz_error** e) { return applevz_vm_suspend(vm_.get(), e); }); }

    State current_state() const { return to_multipass(applevz_vm_get_state(vm_.get())); }

    // Every state change, in Multipass's terms, on the subscription's thread.
    void on_state_change(StateObserver observer) {
        std::lock_guard<std::mutex> lock(mutex_);
        observer_ = std::move(observer);
    }

private:
    template <typename F>
    void call(const char* what, F f) {
        applevz_error* error = nullptr;
        if (!f(&error)) raise(what, error);
    }

    static void on_event(void* user_data, const applevz_event* event) {
        auto* self = static_cast<AppleVirtualMachine*>(user_data);
        try {  // nothing may be thrown into applevz
            StateObserver observer;
            {
                std::lock_guard<std::mutex> lock(self->mutex_);
                observer = self->observer_;
            }
            if (observer) observer(to_multipass(applevz_event_get_state(event)));
        } catch (...) {
        }
    }

    std::unique_ptr<applevz_vm, VmFree> vm_;
    std::unique_ptr<applevz_subscription, SubscriptionFree> subscription_;
    std::mutex mutex_;
    StateObserver observer_;
};

}  // namespace mp

// ---- the tests ----

static int passed = 0;
static int failed = 0;

static void check(bool ok, int line, const char* what, const std::string& detail = "") {
    if (ok) {
        ++passed;
        return;
    }
    ++failed;
    std::fprintf(stderr, "FAILED (line %d): %s%s%s\n", line, what, detail.empty() ? "" : ": ",
                 detail.c_str());
}
#define CHECK(cond) check((cond), __LINE__, #cond)

#define EXPECT_STATE(vm, expected)                                                          \
    do {                                                                                    \
        mp::State s_ = (vm).current_state();                                                \
        check(s_ == (expected), __LINE__, "state", std::string("expected ") +               \
              mp::name(expected) + ", got " + mp::name(s_));                                \
    } while (0)

#define EXPECT_OK(statement)                                                                \
    do {                                                                                    \
        try {                                                                               \
            statement;                                                                      \
            check(true, __LINE__, #statement);                                              \
        } catch (const std::exception& e_) {                                                \
            check(false, __LINE__, #statement, e_.what());                                  \
        }                                                                                   \
    } while (0)

#define EXPECT_THROW(statement, expected_kind, fragment)                                    \
    do {                                                                                    \
        try {                                                                               \
            statement;                                                                      \
            check(false, __LINE__, #statement, "did not throw");                            \
        } catch (const mp::VirtualMachineError& e_) {                                       \
            check(e_.kind() == (expected_kind), __LINE__, #statement " kind", e_.what());   \
            check(std::strstr(e_.what(), (fragment)) != nullptr, __LINE__,                  \
                  #statement " message", e_.what());                                        \
        }                                                                                   \
    } while (0)

static std::string scratch;

static bool exists(const std::string& path) {
    struct stat info;
    return stat(path.c_str(), &info) == 0;
}

static std::string make_vm(const std::string& name, const std::string& extra) {
    std::string dir = scratch + "/" + name;
    mkdir(dir.c_str(), 0700);
    std::ofstream(dir + "/vmlinuz") << "not really a kernel";
    std::ofstream(dir + "/vm.toml") << "memory = \"512MiB\"\n" << extra
                                    << "\n[boot]\nkernel = \"vmlinuz\"\n";
    return dir + "/vm.toml";
}

// States seen by an observer, in order, waited for from the test's thread. Deliveries
// lag behind the calls, so the checks locate states by their order, never by what was
// seen when a call returned.
class Seen {
public:
    void add(mp::State state) {
        std::lock_guard<std::mutex> lock(mutex_);
        states_.push_back(state);
        thread_ids_.push_back(std::this_thread::get_id());
        changed_.notify_all();
    }
    // The index of the first `state` at or after `from`, waiting up to 20 s; -1 if none.
    int wait_for(mp::State state, int from = 0) {
        std::unique_lock<std::mutex> lock(mutex_);
        int found = -1;
        changed_.wait_for(lock, std::chrono::seconds(20), [&] {
            for (size_t i = static_cast<size_t>(from < 0 ? 0 : from); i < states_.size(); ++i) {
                if (states_[i] == state) {
                    found = static_cast<int>(i);
                    return true;
                }
            }
            return false;
        });
        return found;
    }
    bool any_between(mp::State state, int from, int to) {
        std::lock_guard<std::mutex> lock(mutex_);
        for (int i = from; i < to && i < static_cast<int>(states_.size()); ++i) {
            if (states_[static_cast<size_t>(i)] == state) return true;
        }
        return false;
    }
    bool any_on(std::thread::id id) {
        std::lock_guard<std::mutex> lock(mutex_);
        for (auto t : thread_ids_) {
            if (t == id) return true;
        }
        return false;
    }

private:
    std::mutex mutex_;
    std::condition_variable changed_;
    std::vector<mp::State> states_;
    std::vector<std::thread::id> thread_ids_;
};

static void test_state_mapping() {
    using mp::State;
    CHECK(mp::to_multipass(APPLEVZ_STATE_STOPPED) == State::stopped);
    CHECK(mp::to_multipass(APPLEVZ_STATE_RUNNING) == State::running);
    CHECK(mp::to_multipass(APPLEVZ_STATE_PAUSED) == State::suspended);
    CHECK(mp::to_multipass(APPLEVZ_STATE_ERROR) == State::unknown);
    CHECK(mp::to_multipass(APPLEVZ_STATE_STARTING) == State::starting);
    CHECK(mp::to_multipass(APPLEVZ_STATE_PAUSING) == State::suspending);
    CHECK(mp::to_multipass(APPLEVZ_STATE_RESUMING) == State::starting);
    CHECK(mp::to_multipass(APPLEVZ_STATE_STOPPING) == State::delayed_shutdown);
    CHECK(mp::to_multipass(APPLEVZ_STATE_SAVING) == State::suspending);
    CHECK(mp::to_multipass(APPLEVZ_STATE_RESTORING) == State::starting);
    CHECK(mp::to_multipass(APPLEVZ_STATE_SUSPENDED) == State::suspended);
    CHECK(mp::to_multipass(APPLEVZ_STATE_INVALID) == State::unknown);
}

static void test_lifecycle() {
    const std::string toml = make_vm("multipass", "saved_state = \"vm.state\"");
    const std::string saved = scratch + "/multipass/vm.state";
    Seen seen;  // outlives the VM, whose observer refers to it
    mp::AppleVirtualMachine vm(toml);
    vm.on_state_change([&seen](mp::State state) { seen.add(state); });
    EXPECT_STATE(vm, mp::State::stopped);

    // Operations from another thread; observers run on neither thread.
    std::thread worker([&vm] { vm.start(); });
    worker.join();
    EXPECT_STATE(vm, mp::State::running);
    CHECK(seen.wait_for(mp::State::running, seen.wait_for(mp::State::starting)) > 0);
    CHECK(!seen.any_on(std::this_thread::get_id()));

    // Every policy.
    EXPECT_OK(vm.shutdown(mp::ShutdownPolicy::Powerdown));
    EXPECT_STATE(vm, mp::State::stopped);
    CHECK(seen.wait_for(mp::State::stopped) > 0);
    EXPECT_OK(vm.start());
    EXPECT_OK(vm.shutdown(mp::ShutdownPolicy::Halt));
    EXPECT_STATE(vm, mp::State::stopped);
    EXPECT_OK(vm.start());
    EXPECT_OK(vm.shutdown(mp::ShutdownPolicy::Poweroff));
    EXPECT_STATE(vm, mp::State::stopped);
    EXPECT_OK(vm.shutdown(mp::ShutdownPolicy::Poweroff));  // stopped: no-op

    // Suspend, then start restores.
    EXPECT_THROW(vm.suspend(), APPLEVZ_ERROR_INVALID_STATE,
                 "suspend: cannot suspend while the VM is stopped");
    EXPECT_OK(vm.start());
    EXPECT_OK(vm.suspend());
    EXPECT_STATE(vm, mp::State::suspended);
    CHECK(exists(saved));
    // The first `suspending` is this suspend's (nothing paused before): suspending
    // (pausing, saving), delayed_shutdown (stopping), suspended; never stopped.
    const int suspending = seen.wait_for(mp::State::suspending);
    const int going_down = seen.wait_for(mp::State::delayed_shutdown, suspending);
    const int suspended = seen.wait_for(mp::State::suspended, going_down);
    CHECK(suspending > 0 && going_down > suspending && suspended > going_down);
    CHECK(!seen.any_between(mp::State::stopped, suspending, suspended));
    EXPECT_THROW(vm.shutdown(mp::ShutdownPolicy::Powerdown), APPLEVZ_ERROR_INVALID_STATE,
                 "while the VM is suspended: applevz_vm_start restores it");
    EXPECT_OK(vm.shutdown(mp::ShutdownPolicy::Halt));  // keeps the saved state
    EXPECT_STATE(vm, mp::State::suspended);
    EXPECT_OK(vm.start());
    EXPECT_STATE(vm, mp::State::running);
    CHECK(!exists(saved));
    // restoring, resuming: starting; then running.
    CHECK(seen.wait_for(mp::State::running, seen.wait_for(mp::State::starting, suspended)) > suspended);
    // Suspended again, then Poweroff discards it.
    EXPECT_OK(vm.suspend());
    EXPECT_OK(vm.shutdown(mp::ShutdownPolicy::Poweroff));
    EXPECT_STATE(vm, mp::State::stopped);
    CHECK(!exists(saved));
    EXPECT_OK(vm.start());
    // Destroyed while running: forced off, no callback afterwards.
}

static void test_errors() {
    // A bad definition: the constructor throws with the file and the key.
    const std::string bad = make_vm("multipass-bad", "cpus = \"two\"");
    EXPECT_THROW(mp::AppleVirtualMachine vm(bad), APPLEVZ_ERROR_INVALID_CONFIG,
                 "vm.toml:2:8: cpus: invalid type");
    EXPECT_THROW(mp::AppleVirtualMachine vm(scratch + "/nowhere/vm.toml"), APPLEVZ_ERROR_IO,
                 "nowhere/vm.toml");

    // The guest ignores Powerdown: a timeout, then Poweroff.
    setenv("APPLEVZ_SIM_GUEST", "ignores_stop_request", 1);
    const std::string stubborn =
        make_vm("multipass-stubborn", "on_graceful_timeout = \"fail\"\n[timeouts]\ngraceful_shutdown = 0.2");
    mp::AppleVirtualMachine vm(stubborn);
    unsetenv("APPLEVZ_SIM_GUEST");
    EXPECT_OK(vm.start());
    EXPECT_THROW(vm.shutdown(mp::ShutdownPolicy::Powerdown), APPLEVZ_ERROR_TIMEOUT,
                 "shutdown: shut down with APPLEVZ_SHUTDOWN_POWERDOWN did not finish within");
    EXPECT_STATE(vm, mp::State::running);
    EXPECT_OK(vm.shutdown(mp::ShutdownPolicy::Poweroff));
    EXPECT_STATE(vm, mp::State::stopped);
}

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s SCRATCH_DIR\n", argv[0]);
        return 2;
    }
    scratch = argv[1];
    unsetenv("APPLEVZ_SIM_GUEST");
    test_state_mapping();
    test_lifecycle();
    test_errors();
    std::printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
