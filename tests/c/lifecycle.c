/*
 * The C API (include/applevz_vm.h) driven from C through the simulator: every row of
 * the lifecycle, errors with their kinds and messages, NULL arguments, and state
 * subscriptions made, used and freed from other threads.
 *
 * Built and run by tests/capi.rs (also under valgrind):
 *   cc -std=c11 -Iinclude tests/c/lifecycle.c target/debug/libapplevz.a -lpthread -ldl -lm
 *   ./a.out SCRATCH_DIR
 * It writes its VM definitions under SCRATCH_DIR and ends with "N passed, M failed";
 * the exit status is non-zero when anything failed.
 */
#define _POSIX_C_SOURCE 200809L

#include "applevz_vm.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

static int passed;
static int failed;

static void check(bool ok, int line, const char *what, const char *format, ...) {
    if (ok) {
        passed++;
        return;
    }
    failed++;
    fprintf(stderr, "FAILED (line %d): %s", line, what);
    if (format) {
        va_list args;
        va_start(args, format);
        fputs(": ", stderr);
        vfprintf(stderr, format, args);
        va_end(args);
    }
    fputc('\n', stderr);
}

#define CHECK(cond) check((cond), __LINE__, #cond, NULL)
#define CHECK_MSG(cond, ...) check((cond), __LINE__, #cond, __VA_ARGS__)

/* Checks a failed call's error: its kind, and a fragment of its message; frees it. */
static void expect_error(applevz_error *error, applevz_error_kind kind, const char *fragment,
                         int line) {
    const char *message = applevz_error_message(error);
    check(error != NULL, line, "an error was stored", NULL);
    check(applevz_error_code(error) == kind, line, "error kind", "expected %d, got %d (%s)",
          kind, applevz_error_code(error), message);
    if (fragment) {
        check(strstr(message, fragment) != NULL, line, "error message",
              "%s does not contain %s", message, fragment);
    }
    applevz_error_free(error);
}
#define EXPECT_ERROR(error, kind, fragment) expect_error((error), (kind), (fragment), __LINE__)

/* Runs a call that must succeed; reports its error otherwise. */
#define EXPECT_OK(call)                                                                   \
    do {                                                                                  \
        applevz_error *error_ = NULL;                                                     \
        applevz_error **out_ = &error_;                                                   \
        bool ok_ = (call);                                                                \
        check(ok_ && error_ == NULL, __LINE__, #call, "%s", applevz_error_message(error_)); \
        applevz_error_free(error_);                                                       \
    } while (0)
#define ERR out_

#define EXPECT_STATE(vm, expected)                                                        \
    do {                                                                                  \
        applevz_vm_state state_ = applevz_vm_get_state(vm);                               \
        check(state_ == (expected), __LINE__, "state of " #vm, "expected %s, got %s",     \
              applevz_state_name(expected), applevz_state_name(state_));                  \
    } while (0)

/* ---- files ---- */

static char scratch[1024];

static void write_file(const char *path, const char *contents) {
    FILE *file = fopen(path, "w");
    if (!file) {
        fprintf(stderr, "cannot write %s: %s\n", path, strerror(errno));
        exit(2);
    }
    fputs(contents, file);
    fclose(file);
}

static void sleep_ms(long ms) {
    struct timespec duration = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&duration, NULL);
}

static bool exists(const char *path) {
    struct stat info;
    return stat(path, &info) == 0;
}

/* A VM directory SCRATCH/name with a placeholder kernel and vm.toml = the base
 * definition followed by `extra`; returns the vm.toml path (static buffer per call
 * site: copy it). */
static void make_vm(const char *name, const char *extra, char *toml_path, size_t size) {
    char dir[2048], path[2200];
    snprintf(dir, sizeof dir, "%s/%s", scratch, name);
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        fprintf(stderr, "cannot create %s: %s\n", dir, strerror(errno));
        exit(2);
    }
    snprintf(path, sizeof path, "%s/vmlinuz", dir);
    write_file(path, "not really a kernel");
    char definition[4096];
    snprintf(definition, sizeof definition,
             "cpus = 1\nmemory = \"512MiB\"\n%s\n[boot]\nkernel = \"vmlinuz\"\n"
             "command_line = \"console=hvc0\"\n",
             extra);
    snprintf(toml_path, size, "%s/vm.toml", dir);
    write_file(toml_path, definition);
}

/* ---- event recording ---- */

#define MAX_EVENTS 256

typedef struct {
    pthread_mutex_t mutex;
    pthread_cond_t changed;
    applevz_vm_state states[MAX_EVENTS];
    applevz_event_kind kinds[MAX_EVENTS];
    int count;
    int on_caller_thread; /* callbacks that ran on the thread that started the VM */
    pthread_t caller;
    applevz_vm *vm;       /* re-entered from the callback */
    int reentrant_ok;     /* applevz_vm_get_state from inside the callback worked */
    int error_events;     /* events with an error, whose framework code was read */
    int64_t last_framework_code;
} recorder;

static void recorder_init(recorder *r, applevz_vm *vm) {
    memset(r, 0, sizeof *r);
    pthread_mutex_init(&r->mutex, NULL);
    pthread_cond_init(&r->changed, NULL);
    r->caller = pthread_self();
    r->vm = vm;
}

static void recorder_destroy(recorder *r) {
    pthread_mutex_destroy(&r->mutex);
    pthread_cond_destroy(&r->changed);
}

static void record(void *user_data, const applevz_event *event) {
    recorder *r = user_data;
    /* Calling back into the API from a callback does not deadlock. */
    applevz_vm_state now = applevz_vm_get_state(r->vm);
    pthread_mutex_lock(&r->mutex);
    if (r->count < MAX_EVENTS) {
        r->states[r->count] = applevz_event_get_state(event);
        r->kinds[r->count] = applevz_event_get_kind(event);
        r->count++;
    }
    if (pthread_equal(pthread_self(), r->caller)) r->on_caller_thread++;
    if (now != APPLEVZ_STATE_INVALID) r->reentrant_ok++;
    const applevz_error *error = applevz_event_get_error(event);
    if (error) {
        r->error_events++;
        r->last_framework_code = applevz_error_framework_code(error);
    }
    pthread_cond_broadcast(&r->changed);
    pthread_mutex_unlock(&r->mutex);
}

static int event_count(recorder *r) {
    pthread_mutex_lock(&r->mutex);
    int count = r->count;
    pthread_mutex_unlock(&r->mutex);
    return count;
}

/* Waits (up to 20 s) for an event of `kind` in `state` (-2: any state) at index >= from;
 * returns its index or -1. */
static int wait_event(recorder *r, int from, applevz_event_kind kind, applevz_vm_state state) {
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += 20;
    pthread_mutex_lock(&r->mutex);
    int found = -1;
    for (;;) {
        for (int i = from; i < r->count && found < 0; i++) {
            if (r->kinds[i] == kind && (state == -2 || r->states[i] == state)) found = i;
        }
        if (found >= 0) break;
        if (pthread_cond_timedwait(&r->changed, &r->mutex, &deadline) == ETIMEDOUT) break;
    }
    pthread_mutex_unlock(&r->mutex);
    return found;
}

/* Waits (up to 20 s) for the n-th (from 1) event of `kind` in `state` (-2: any state);
 * returns its index or -1. Deliveries lag behind the calls, so the tests locate events
 * by their order, never by a count taken when a call returned. */
static int nth_event(recorder *r, int n, applevz_event_kind kind, applevz_vm_state state) {
    int at = -1;
    for (int i = 0; i < n; i++) {
        at = wait_event(r, at + 1, kind, state);
        if (at < 0) return -1;
    }
    return at;
}

/* The index of an event of `kind` in `state` (-2: any) at index >= from that has
 * already arrived, or -1; does not wait. */
static int find_event(recorder *r, int from, applevz_event_kind kind, applevz_vm_state state) {
    pthread_mutex_lock(&r->mutex);
    int found = -1;
    for (int i = from; i < r->count && found < 0; i++) {
        if (r->kinds[i] == kind && (state == -2 || r->states[i] == state)) found = i;
    }
    pthread_mutex_unlock(&r->mutex);
    return found;
}

/* ---- subscriptions from other threads ---- */

typedef struct {
    applevz_vm *vm;
    recorder *recorder;
    applevz_subscription *subscription;
} subscribe_job;

static void *subscribe_on_thread(void *arg) {
    subscribe_job *job = arg;
    job->subscription = applevz_vm_subscribe(job->vm, record, job->recorder, NULL);
    return NULL;
}

static void *free_on_thread(void *arg) {
    applevz_subscription_free(arg);
    return NULL;
}

/* A callback that ends its own subscription at its first event. */
typedef struct {
    applevz_subscription *self;
    pthread_mutex_t mutex;
    pthread_cond_t called;
    int calls;
} one_shot;

static void free_self(void *user_data, const applevz_event *event) {
    one_shot *shot = user_data;
    (void)event;
    pthread_mutex_lock(&shot->mutex);
    shot->calls++;
    applevz_subscription *self = shot->self;
    shot->self = NULL;
    pthread_cond_broadcast(&shot->called);
    pthread_mutex_unlock(&shot->mutex);
    applevz_subscription_free(self); /* from inside its own callback: returns at once */
}

/* ---- the tests ---- */

static void test_library(void) {
    CHECK(strlen(applevz_version()) > 0);
    /* The header this program was built with and the library agree. */
    CHECK_MSG(applevz_version_number() == APPLEVZ_VERSION_NUMBER, "library %d, header %d",
              applevz_version_number(), APPLEVZ_VERSION_NUMBER);
    CHECK_MSG(strcmp(applevz_version(), APPLEVZ_VERSION_STRING) == 0, "library %s, header %s",
              applevz_version(), APPLEVZ_VERSION_STRING);
    CHECK(APPLEVZ_VERSION_NUMBER == APPLEVZ_VERSION_MAJOR * 1000000 +
                                        APPLEVZ_VERSION_MINOR * 1000 + APPLEVZ_VERSION_PATCH);
    CHECK(applevz_is_simulator());
    CHECK(strcmp(applevz_state_name(APPLEVZ_STATE_SUSPENDED), "suspended") == 0);
    CHECK(strcmp(applevz_state_name(APPLEVZ_STATE_RUNNING), "running") == 0);
    CHECK(strcmp(applevz_state_name(42), "invalid") == 0);
    CHECK(strcmp(applevz_state_name(APPLEVZ_STATE_INVALID), "invalid") == 0);
}

static void test_null_arguments(void) {
    applevz_error *error = NULL;
    CHECK(applevz_vm_open(NULL, &error) == NULL);
    EXPECT_ERROR(error, APPLEVZ_ERROR_INVALID_ARGUMENT, "vm_toml_path is NULL");
    error = NULL;
    CHECK(!applevz_vm_start(NULL, &error));
    EXPECT_ERROR(error, APPLEVZ_ERROR_INVALID_ARGUMENT, "applevz_vm_start: vm is NULL");
    error = NULL;
    CHECK(!applevz_vm_shutdown(NULL, APPLEVZ_SHUTDOWN_POWEROFF, &error));
    EXPECT_ERROR(error, APPLEVZ_ERROR_INVALID_ARGUMENT, "vm is NULL");
    /* No error wanted: still a clean failure. */
    CHECK(!applevz_vm_pause(NULL, NULL));
    CHECK(!applevz_vm_resume(NULL, NULL));
    CHECK(!applevz_vm_suspend(NULL, NULL));
    CHECK(!applevz_vm_wait_for_state(NULL, APPLEVZ_STATE_RUNNING, 1, NULL));
    CHECK(applevz_vm_open(NULL, NULL) == NULL);
    CHECK(applevz_vm_get_state(NULL) == APPLEVZ_STATE_INVALID);
    CHECK(applevz_vm_subscribe(NULL, record, NULL, NULL) == NULL);
    error = NULL;
    CHECK(applevz_vm_subscribe(NULL, record, NULL, &error) == NULL);
    EXPECT_ERROR(error, APPLEVZ_ERROR_INVALID_ARGUMENT, "applevz_vm_subscribe: vm is NULL");
    CHECK(applevz_event_get_state(NULL) == APPLEVZ_STATE_INVALID);
    CHECK(applevz_event_get_kind(NULL) == APPLEVZ_EVENT_INVALID);
    CHECK(applevz_event_get_error(NULL) == NULL);
    CHECK(applevz_error_code(NULL) == APPLEVZ_ERROR_NONE);
    CHECK(strcmp(applevz_error_message(NULL), "no error") == 0);
    CHECK(applevz_error_framework_domain(NULL) == NULL);
    CHECK(applevz_error_framework_code(NULL) == 0);
    applevz_vm_free(NULL);
    applevz_error_free(NULL);
    applevz_subscription_free(NULL);
}

static void test_bad_definitions(void) {
    char path[4200];
    applevz_error *error = NULL;

    make_vm("unknown-key", "bogus = 1", path, sizeof path);
    CHECK(applevz_vm_open(path, &error) == NULL);
    EXPECT_ERROR(error, APPLEVZ_ERROR_INVALID_CONFIG, "vm.toml:3:1: bogus: unknown field `bogus`");

    make_vm("bad-memory", "", path, sizeof path);
    write_file(path, "memory = \"lots\"\n[boot]\nkernel = \"vmlinuz\"\n");
    error = NULL;
    CHECK(applevz_vm_open(path, &error) == NULL);
    EXPECT_ERROR(error, APPLEVZ_ERROR_INVALID_CONFIG, "vm.toml: memory: ");

    make_vm("no-kernel", "", path, sizeof path);
    write_file(path, "memory = \"512MiB\"\n[boot]\nkernel = \"missing-kernel\"\n");
    error = NULL;
    CHECK(applevz_vm_open(path, &error) == NULL);
    EXPECT_ERROR(error, APPLEVZ_ERROR_INVALID_CONFIG, "boot.kernel");

    make_vm("broken-toml", "", path, sizeof path);
    write_file(path, "memory = \n");
    error = NULL;
    CHECK(applevz_vm_open(path, &error) == NULL);
    EXPECT_ERROR(error, APPLEVZ_ERROR_INVALID_CONFIG, "vm.toml");

    snprintf(path, sizeof path, "%s/does-not-exist/vm.toml", scratch);
    error = NULL;
    CHECK(applevz_vm_open(path, &error) == NULL);
    EXPECT_ERROR(error, APPLEVZ_ERROR_IO, "does-not-exist/vm.toml");

    /* A simulator script it cannot use is a configuration error too. */
    make_vm("bad-script", "", path, sizeof path);
    setenv("APPLEVZ_SIM_GUEST", "fly_ms=3", 1);
    error = NULL;
    CHECK(applevz_vm_open(path, &error) == NULL);
    EXPECT_ERROR(error, APPLEVZ_ERROR_INVALID_CONFIG, "APPLEVZ_SIM_GUEST: cannot use \"fly_ms=3\"");
    unsetenv("APPLEVZ_SIM_GUEST");
}

static void test_lifecycle(void) {
    char path[4200], saved[4200];
    make_vm("lifecycle", "saved_state = \"vm.state\"", path, sizeof path);
    snprintf(saved, sizeof saved, "%s/lifecycle/vm.state", scratch);

    applevz_error *error = NULL;
    applevz_vm *vm = applevz_vm_open(path, &error);
    CHECK_MSG(vm != NULL, "%s", applevz_error_message(error));
    applevz_error_free(error);
    if (!vm) return;
    EXPECT_STATE(vm, APPLEVZ_STATE_STOPPED);

    /* Subscribed from another thread; callbacks run on the subscription's own thread. */
    recorder events;
    recorder_init(&events, vm);
    subscribe_job job = {vm, &events, NULL};
    pthread_t thread;
    pthread_create(&thread, NULL, subscribe_on_thread, &job);
    pthread_join(thread, NULL);
    CHECK(job.subscription != NULL);

    /* Not running yet: pause and resume are refused, with the way out. */
    error = NULL;
    CHECK(!applevz_vm_pause(vm, &error));
    EXPECT_ERROR(error, APPLEVZ_ERROR_INVALID_STATE,
                 "cannot pause while the VM is stopped: the VM is not running");
    error = NULL;
    CHECK(!applevz_vm_suspend(vm, &error));
    EXPECT_ERROR(error, APPLEVZ_ERROR_INVALID_STATE, "cannot suspend while the VM is stopped");
    /* Every policy is a no-op on a stopped VM. */
    EXPECT_OK(applevz_vm_shutdown(vm, APPLEVZ_SHUTDOWN_POWERDOWN, ERR));
    EXPECT_OK(applevz_vm_shutdown(vm, APPLEVZ_SHUTDOWN_HALT, ERR));
    EXPECT_OK(applevz_vm_shutdown(vm, APPLEVZ_SHUTDOWN_POWEROFF, ERR));
    error = NULL;
    CHECK(!applevz_vm_shutdown(vm, 42, &error));
    EXPECT_ERROR(error, APPLEVZ_ERROR_INVALID_ARGUMENT, "42 is not an applevz_shutdown_policy");
    error = NULL;
    CHECK(!applevz_vm_wait_for_state(vm, APPLEVZ_STATE_RUNNING, 50, &error));
    EXPECT_ERROR(error, APPLEVZ_ERROR_TIMEOUT, "did not finish within");
    error = NULL;
    CHECK(!applevz_vm_wait_for_state(vm, 99, 50, &error));
    EXPECT_ERROR(error, APPLEVZ_ERROR_INVALID_ARGUMENT, "99 is not an applevz_vm_state");

    /* start, pause/resume, start on running and pause on paused are no-ops. */
    EXPECT_OK(applevz_vm_start(vm, ERR));
    EXPECT_STATE(vm, APPLEVZ_STATE_RUNNING);
    CHECK(wait_event(&events, 0, APPLEVZ_EVENT_STATE_CHANGED, APPLEVZ_STATE_RUNNING) >= 0);
    EXPECT_OK(applevz_vm_start(vm, ERR));
    EXPECT_OK(applevz_vm_wait_for_state(vm, APPLEVZ_STATE_RUNNING, 1000, ERR));
    EXPECT_OK(applevz_vm_pause(vm, ERR));
    EXPECT_STATE(vm, APPLEVZ_STATE_PAUSED);
    EXPECT_OK(applevz_vm_pause(vm, ERR));
    EXPECT_OK(applevz_vm_resume(vm, ERR));
    EXPECT_STATE(vm, APPLEVZ_STATE_RUNNING);
    EXPECT_OK(applevz_vm_resume(vm, ERR));
    /* start resumes a paused VM. */
    EXPECT_OK(applevz_vm_pause(vm, ERR));
    EXPECT_OK(applevz_vm_start(vm, ERR));
    EXPECT_STATE(vm, APPLEVZ_STATE_RUNNING);

    /* Powerdown: the guest obeys (the first GUEST_STOPPED event). */
    EXPECT_OK(applevz_vm_shutdown(vm, APPLEVZ_SHUTDOWN_POWERDOWN, ERR));
    EXPECT_STATE(vm, APPLEVZ_STATE_STOPPED);
    int first_powerdown = nth_event(&events, 1, APPLEVZ_EVENT_GUEST_STOPPED, -2);
    CHECK(first_powerdown >= 0);
    /* Powerdown from paused resumes first: between the first and the second
     * GUEST_STOPPED, only this Powerdown resumes. */
    EXPECT_OK(applevz_vm_start(vm, ERR));
    EXPECT_OK(applevz_vm_pause(vm, ERR));
    EXPECT_OK(applevz_vm_shutdown(vm, APPLEVZ_SHUTDOWN_POWERDOWN, ERR));
    EXPECT_STATE(vm, APPLEVZ_STATE_STOPPED);
    int second_powerdown = nth_event(&events, 2, APPLEVZ_EVENT_GUEST_STOPPED, -2);
    int resumed = wait_event(&events, first_powerdown + 1, APPLEVZ_EVENT_STATE_CHANGED,
                             APPLEVZ_STATE_RESUMING);
    CHECK(second_powerdown > first_powerdown && resumed > first_powerdown &&
          resumed < second_powerdown);
    /* Halt and Poweroff, from running and from paused. */
    EXPECT_OK(applevz_vm_start(vm, ERR));
    EXPECT_OK(applevz_vm_shutdown(vm, APPLEVZ_SHUTDOWN_HALT, ERR));
    EXPECT_STATE(vm, APPLEVZ_STATE_STOPPED);
    EXPECT_OK(applevz_vm_start(vm, ERR));
    EXPECT_OK(applevz_vm_pause(vm, ERR));
    EXPECT_OK(applevz_vm_shutdown(vm, APPLEVZ_SHUTDOWN_HALT, ERR));
    EXPECT_STATE(vm, APPLEVZ_STATE_STOPPED);
    EXPECT_OK(applevz_vm_start(vm, ERR));
    EXPECT_OK(applevz_vm_shutdown(vm, APPLEVZ_SHUTDOWN_POWEROFF, ERR));
    EXPECT_STATE(vm, APPLEVZ_STATE_STOPPED);
    EXPECT_OK(applevz_vm_start(vm, ERR));
    EXPECT_OK(applevz_vm_pause(vm, ERR));
    EXPECT_OK(applevz_vm_shutdown(vm, APPLEVZ_SHUTDOWN_POWEROFF, ERR));
    EXPECT_STATE(vm, APPLEVZ_STATE_STOPPED);

    /* Suspend, then start restores it and deletes the saved state. */
    EXPECT_OK(applevz_vm_start(vm, ERR));
    EXPECT_OK(applevz_vm_suspend(vm, ERR));
    EXPECT_STATE(vm, APPLEVZ_STATE_SUSPENDED);
    CHECK(exists(saved));
    int suspended_at = nth_event(&events, 1, APPLEVZ_EVENT_SUSPENDED, APPLEVZ_STATE_SUSPENDED);
    CHECK(suspended_at >= 0);
    /* A suspending VM is never reported stopped: nothing but the suspend's own events
     * between the start's RUNNING and SUSPENDED. */
    int started_at = -1;
    for (int i = 0; i < suspended_at; i++) {
        if (find_event(&events, i, APPLEVZ_EVENT_STATE_CHANGED, APPLEVZ_STATE_RUNNING) == i)
            started_at = i;
    }
    CHECK(started_at >= 0);
    int stopped_at = find_event(&events, started_at, APPLEVZ_EVENT_STATE_CHANGED,
                                APPLEVZ_STATE_STOPPED);
    CHECK_MSG(stopped_at < 0 || stopped_at > suspended_at, "stopped at %d, suspended at %d",
              stopped_at, suspended_at);
    error = NULL;
    CHECK(!applevz_vm_shutdown(vm, APPLEVZ_SHUTDOWN_POWERDOWN, &error));
    EXPECT_ERROR(error, APPLEVZ_ERROR_INVALID_STATE,
                 "cannot shut down with APPLEVZ_SHUTDOWN_POWERDOWN while the VM is suspended");
    error = NULL;
    CHECK(!applevz_vm_pause(vm, &error));
    EXPECT_ERROR(error, APPLEVZ_ERROR_INVALID_STATE,
                 "while the VM is suspended: applevz_vm_start restores it, "
                 "applevz_vm_shutdown with APPLEVZ_SHUTDOWN_POWEROFF discards the saved state");
    EXPECT_OK(applevz_vm_shutdown(vm, APPLEVZ_SHUTDOWN_HALT, ERR)); /* keeps it */
    EXPECT_STATE(vm, APPLEVZ_STATE_SUSPENDED);
    CHECK(exists(saved));
    EXPECT_OK(applevz_vm_start(vm, ERR));
    EXPECT_STATE(vm, APPLEVZ_STATE_RUNNING);
    CHECK(!exists(saved));
    CHECK(nth_event(&events, 1, APPLEVZ_EVENT_STATE_CHANGED, APPLEVZ_STATE_RESTORING) >
          suspended_at);
    CHECK(nth_event(&events, 1, APPLEVZ_EVENT_SAVED_STATE_REMOVED, -2) > suspended_at);
    /* Suspended from paused, then Poweroff discards the saved state. */
    EXPECT_OK(applevz_vm_pause(vm, ERR));
    EXPECT_OK(applevz_vm_suspend(vm, ERR));
    EXPECT_STATE(vm, APPLEVZ_STATE_SUSPENDED);
    CHECK(exists(saved));
    EXPECT_OK(applevz_vm_shutdown(vm, APPLEVZ_SHUTDOWN_POWEROFF, ERR));
    EXPECT_STATE(vm, APPLEVZ_STATE_STOPPED);
    CHECK(!exists(saved));

    /* Events arrived in order on another thread, and the callback could call in. */
    pthread_mutex_lock(&events.mutex);
    CHECK(events.count > 20);
    CHECK(events.on_caller_thread == 0);
    CHECK(events.reentrant_ok == events.count);
    pthread_mutex_unlock(&events.mutex);

    /* A subscription without a callback fails like any call. */
    applevz_error *no_callback = NULL;
    CHECK(applevz_vm_subscribe(vm, NULL, NULL, &no_callback) == NULL);
    EXPECT_ERROR(no_callback, APPLEVZ_ERROR_INVALID_ARGUMENT, "callback is NULL");

    /* A callback that frees its own subscription gets exactly one event. */
    one_shot shot = {NULL, PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0};
    pthread_mutex_lock(&shot.mutex);
    shot.self = applevz_vm_subscribe(vm, free_self, &shot, NULL);
    CHECK(shot.self != NULL);
    pthread_mutex_unlock(&shot.mutex);

    /* Freed from another thread: after it returns, no callback runs. */
    pthread_create(&thread, NULL, free_on_thread, job.subscription);
    pthread_join(thread, NULL);
    int after_free = event_count(&events);
    EXPECT_OK(applevz_vm_start(vm, ERR));
    EXPECT_OK(applevz_vm_shutdown(vm, APPLEVZ_SHUTDOWN_POWEROFF, ERR));
    /* A fresh subscription sees these events, so the freed one had its chance. */
    recorder later;
    recorder_init(&later, vm);
    applevz_subscription *witness = applevz_vm_subscribe(vm, record, &later, NULL);
    EXPECT_OK(applevz_vm_start(vm, ERR));
    CHECK(wait_event(&later, 0, APPLEVZ_EVENT_STATE_CHANGED, APPLEVZ_STATE_RUNNING) >= 0);
    CHECK(event_count(&events) == after_free);
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += 20;
    pthread_mutex_lock(&shot.mutex);
    while (shot.calls == 0 &&
           pthread_cond_timedwait(&shot.called, &shot.mutex, &deadline) != ETIMEDOUT) {
    }
    pthread_mutex_unlock(&shot.mutex);
    sleep_ms(100); /* room for a wrong second call */
    pthread_mutex_lock(&shot.mutex);
    CHECK(shot.calls == 1);
    CHECK(shot.self == NULL);
    pthread_mutex_unlock(&shot.mutex);

    /* Freeing a running VM forces it off without waiting, and ends its subscriptions
     * first: `record` calls applevz_vm_get_state(vm), which would touch a freed VM
     * (valgrind would say so). The subscription handle outlives the VM. */
    applevz_vm_free(vm);
    int after_vm_free = event_count(&later);
    sleep_ms(200);
    CHECK(event_count(&later) == after_vm_free);
    applevz_subscription_free(witness);
    recorder_destroy(&events);
    recorder_destroy(&later);
    pthread_mutex_destroy(&shot.mutex);
    pthread_cond_destroy(&shot.called);
}

typedef struct {
    applevz_vm *vm;
    bool ok;
    applevz_error *error;
} shutdown_job;

static void *powerdown_on_thread(void *arg) {
    shutdown_job *job = arg;
    job->ok = applevz_vm_shutdown(job->vm, APPLEVZ_SHUTDOWN_POWERDOWN, &job->error);
    return NULL;
}

static void test_guest_ignores_powerdown(void) {
    char path[4200];
    applevz_error *error = NULL;
    setenv("APPLEVZ_SIM_GUEST", "ignores_stop_request", 1);

    /* The graceful timeout expires: a TIMEOUT error, the VM keeps running. */
    make_vm("stubborn", "on_graceful_timeout = \"fail\"\n[timeouts]\ngraceful_shutdown = 0.3",
            path, sizeof path);
    applevz_vm *vm = applevz_vm_open(path, &error);
    CHECK_MSG(vm != NULL, "%s", applevz_error_message(error));
    applevz_error_free(error);
    if (vm) {
        EXPECT_OK(applevz_vm_start(vm, ERR));
        error = NULL;
        CHECK(!applevz_vm_shutdown(vm, APPLEVZ_SHUTDOWN_POWERDOWN, &error));
        EXPECT_ERROR(error, APPLEVZ_ERROR_TIMEOUT, "the guest ignored the stop request");
        EXPECT_STATE(vm, APPLEVZ_STATE_RUNNING);
        EXPECT_OK(applevz_vm_shutdown(vm, APPLEVZ_SHUTDOWN_POWEROFF, ERR));
        EXPECT_STATE(vm, APPLEVZ_STATE_STOPPED);
        applevz_vm_free(vm);
    }

    /* A Poweroff from another thread cuts a long Powerdown short. */
    make_vm("cut-short", "[timeouts]\ngraceful_shutdown = 120", path, sizeof path);
    error = NULL;
    vm = applevz_vm_open(path, &error);
    CHECK_MSG(vm != NULL, "%s", applevz_error_message(error));
    applevz_error_free(error);
    if (vm) {
        EXPECT_OK(applevz_vm_start(vm, ERR));
        shutdown_job job = {vm, false, NULL};
        pthread_t thread;
        struct timespec begin, end;
        clock_gettime(CLOCK_MONOTONIC, &begin);
        pthread_create(&thread, NULL, powerdown_on_thread, &job);
        /* Give the Powerdown time to start waiting for the guest (probing with a second
         * Powerdown would run one itself if it came first). Should the Poweroff still
         * come first, the Powerdown finds the VM stopped: a no-op, no false failure. */
        sleep_ms(500);
        EXPECT_OK(applevz_vm_shutdown(vm, APPLEVZ_SHUTDOWN_POWEROFF, ERR));
        pthread_join(thread, NULL);
        clock_gettime(CLOCK_MONOTONIC, &end);
        CHECK_MSG(job.ok, "%s", applevz_error_message(job.error));
        applevz_error_free(job.error);
        CHECK(end.tv_sec - begin.tv_sec < 60);
        EXPECT_STATE(vm, APPLEVZ_STATE_STOPPED);
        applevz_vm_free(vm);
    }
    unsetenv("APPLEVZ_SIM_GUEST");
}

static void test_framework_errors(void) {
    char path[4200];
    applevz_error *error = NULL;

    /* Suspend not supported here: NOT_SUPPORTED with the framework's code, still running. */
    setenv("APPLEVZ_SIM_GUEST", "save_restore_unsupported", 1);
    make_vm("intel", "saved_state = \"vm.state\"", path, sizeof path);
    applevz_vm *vm = applevz_vm_open(path, &error);
    unsetenv("APPLEVZ_SIM_GUEST");
    CHECK_MSG(vm != NULL, "%s", applevz_error_message(error));
    applevz_error_free(error);
    if (vm) {
        EXPECT_OK(applevz_vm_start(vm, ERR));
        error = NULL;
        CHECK(!applevz_vm_suspend(vm, &error));
        CHECK(error && strcmp(applevz_error_framework_domain(error), "VZErrorDomain") == 0);
        CHECK(applevz_error_framework_code(error) == 10);
        EXPECT_ERROR(error, APPLEVZ_ERROR_NOT_SUPPORTED, "cannot be suspended here");
        EXPECT_STATE(vm, APPLEVZ_STATE_RUNNING);
        applevz_vm_free(vm); /* running: forced off */
    }

    /* No saved_state in the definition. */
    make_vm("no-saved-state", "", path, sizeof path);
    error = NULL;
    vm = applevz_vm_open(path, &error);
    CHECK_MSG(vm != NULL, "%s", applevz_error_message(error));
    applevz_error_free(error);
    if (vm) {
        EXPECT_OK(applevz_vm_start(vm, ERR));
        error = NULL;
        CHECK(!applevz_vm_suspend(vm, &error));
        CHECK(applevz_error_framework_domain(error) == NULL);
        EXPECT_ERROR(error, APPLEVZ_ERROR_NO_SAVED_STATE_PATH, "saved-state");
        EXPECT_OK(applevz_vm_shutdown(vm, APPLEVZ_SHUTDOWN_HALT, ERR));
        applevz_vm_free(vm);
    }

    /* The guest crashes: an event carries the framework's error; start boots afresh. */
    setenv("APPLEVZ_SIM_GUEST", "crash_after_ms=100", 1);
    make_vm("crash", "", path, sizeof path);
    error = NULL;
    vm = applevz_vm_open(path, &error);
    unsetenv("APPLEVZ_SIM_GUEST");
    CHECK_MSG(vm != NULL, "%s", applevz_error_message(error));
    applevz_error_free(error);
    if (vm) {
        recorder events;
        recorder_init(&events, vm);
        applevz_subscription *subscription = applevz_vm_subscribe(vm, record, &events, NULL);
        EXPECT_OK(applevz_vm_start(vm, ERR));
        CHECK(wait_event(&events, 0, APPLEVZ_EVENT_STOPPED_WITH_ERROR, APPLEVZ_STATE_ERROR) >= 0);
        EXPECT_STATE(vm, APPLEVZ_STATE_ERROR);
        pthread_mutex_lock(&events.mutex);
        CHECK(events.error_events == 1);
        CHECK(events.last_framework_code == 1);
        pthread_mutex_unlock(&events.mutex);
        EXPECT_OK(applevz_vm_shutdown(vm, APPLEVZ_SHUTDOWN_POWEROFF, ERR)); /* no-op */
        EXPECT_OK(applevz_vm_start(vm, ERR));                               /* afresh */
        applevz_subscription_free(subscription);
        applevz_vm_free(vm);
        recorder_destroy(&events);
    }
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s SCRATCH_DIR\n", argv[0]);
        return 2;
    }
    snprintf(scratch, sizeof scratch, "%s", argv[1]);
    unsetenv("APPLEVZ_SIM_GUEST");

    test_library();
    test_null_arguments();
    test_bad_definitions();
    test_lifecycle();
    test_guest_ignores_powerdown();
    test_framework_errors();

    printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
