/*
 * Every kind of error the C API reports, produced through the C API on the simulator,
 * printed for tests/capi_install.rs to check that each message is worded for a C
 * caller (this API's functions and constants, the definition file's keys; no Rust
 * names, no doubled words). APPLEVZ_ERROR_INTERNAL (a caught panic) cannot be
 * provoked from C; src/capi/error.rs tests it.
 *
 *   ./errors SCRATCH_DIR
 * Prints one line per error, "error<TAB>KIND<TAB>what<TAB>message", then
 * "N passed, M failed"; the exit status is non-zero when anything failed.
 */
#define _POSIX_C_SOURCE 200809L

#include "applevz_vm.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static int passed;
static int failed;
static char scratch[1024];

/* Prints `error` (which must be of `kind`) and frees it. */
static void report(const char *what, applevz_error *error, applevz_error_kind kind) {
    if (error == NULL) {
        failed++;
        fprintf(stderr, "FAILED: %s: no error\n", what);
        return;
    }
    if (applevz_error_code(error) != kind) {
        failed++;
        fprintf(stderr, "FAILED: %s: kind %d, expected %d: %s\n", what, applevz_error_code(error),
                kind, applevz_error_message(error));
    } else {
        passed++;
    }
    printf("error\t%d\t%s\t%s\n", applevz_error_code(error), what, applevz_error_message(error));
    applevz_error_free(error);
}

static void expect(bool ok, const char *what) {
    if (ok) {
        passed++;
    } else {
        failed++;
        fprintf(stderr, "FAILED: %s\n", what);
    }
}

static void write_file(const char *path, const char *contents) {
    FILE *file = fopen(path, "w");
    if (!file) {
        fprintf(stderr, "cannot write %s: %s\n", path, strerror(errno));
        exit(2);
    }
    fputs(contents, file);
    fclose(file);
}

/* SCRATCH/name/vm.toml with a placeholder kernel and `extra` in front of [boot]. */
static void make_vm(const char *name, const char *extra, char *toml, size_t size) {
    char dir[2048], path[2200], definition[4096];
    snprintf(dir, sizeof dir, "%s/%s", scratch, name);
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        fprintf(stderr, "cannot create %s: %s\n", dir, strerror(errno));
        exit(2);
    }
    snprintf(path, sizeof path, "%s/vmlinuz", dir);
    write_file(path, "not really a kernel");
    snprintf(definition, sizeof definition,
             "cpus = 1\nmemory = \"512MiB\"\n%s\n[boot]\nkernel = \"vmlinuz\"\n", extra);
    snprintf(toml, size, "%s/vm.toml", dir);
    write_file(toml, definition);
}

/* Opens SCRATCH/name with `extra` and the simulated guest `guest` (NULL: the default). */
static applevz_vm *open_vm(const char *name, const char *extra, const char *guest) {
    char toml[2200];
    make_vm(name, extra, toml, sizeof toml);
    if (guest) setenv("APPLEVZ_SIM_GUEST", guest, 1);
    applevz_error *error = NULL;
    applevz_vm *vm = applevz_vm_open(toml, &error);
    unsetenv("APPLEVZ_SIM_GUEST");
    if (!vm) {
        fprintf(stderr, "cannot open %s: %s\n", toml, applevz_error_message(error));
        exit(2);
    }
    return vm;
}

static void path_in(const char *name, const char *file, char *path, size_t size) {
    snprintf(path, size, "%s/%s/%s", scratch, name, file);
}

/* The error of the first event that has one. */
typedef struct {
    pthread_mutex_t mutex;
    pthread_cond_t changed;
    char message[1024];
    applevz_error_kind kind;
    bool seen;
} event_error;

static void on_event(void *user_data, const applevz_event *event) {
    event_error *seen = user_data;
    const applevz_error *error = applevz_event_get_error(event);
    if (!error) return;
    pthread_mutex_lock(&seen->mutex);
    if (!seen->seen) {
        seen->seen = true;
        seen->kind = applevz_error_code(error);
        snprintf(seen->message, sizeof seen->message, "%s", applevz_error_message(error));
        pthread_cond_broadcast(&seen->changed);
    }
    pthread_mutex_unlock(&seen->mutex);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s SCRATCH_DIR\n", argv[0]);
        return 2;
    }
    snprintf(scratch, sizeof scratch, "%s", argv[1]);
    applevz_error *error = NULL;
    char path[2300];

    /* INVALID_ARGUMENT */
    expect(!applevz_vm_start(NULL, &error), "start(NULL)");
    report("start NULL", error, APPLEVZ_ERROR_INVALID_ARGUMENT);
    error = NULL;
    expect(applevz_vm_subscribe(NULL, on_event, NULL, &error) == NULL, "subscribe(NULL)");
    report("subscribe NULL", error, APPLEVZ_ERROR_INVALID_ARGUMENT);

    /* IO and INVALID_CONFIG */
    error = NULL;
    snprintf(path, sizeof path, "%s/missing/vm.toml", scratch);
    expect(applevz_vm_open(path, &error) == NULL, "open a missing file");
    report("open missing", error, APPLEVZ_ERROR_IO);
    make_vm("bad-key", "bogus = 1", path, sizeof path);
    error = NULL;
    expect(applevz_vm_open(path, &error) == NULL, "open an unknown key");
    report("open unknown key", error, APPLEVZ_ERROR_INVALID_CONFIG);
    make_vm("nvme", "[[disk]]\npath = \"disk.img\"\ninterface = \"nvme\"", path, sizeof path);
    char image[2300];
    path_in("nvme", "disk.img", image, sizeof image);
    write_file(image, "");
    error = NULL;
    expect(applevz_vm_open(path, &error) == NULL, "open NVMe without the generic platform");
    report("open nvme", error, APPLEVZ_ERROR_INVALID_CONFIG);

    /* INVALID_STATE, NO_SAVED_STATE_PATH */
    applevz_vm *vm = open_vm("plain", "", NULL);
    error = NULL;
    expect(!applevz_vm_pause(vm, &error), "pause a stopped VM");
    report("pause stopped", error, APPLEVZ_ERROR_INVALID_STATE);
    error = NULL;
    expect(applevz_vm_start(vm, &error), "start");
    applevz_error_free(error);
    error = NULL;
    expect(!applevz_vm_suspend(vm, &error), "suspend without saved_state");
    report("suspend without saved_state", error, APPLEVZ_ERROR_NO_SAVED_STATE_PATH);
    /* TIMEOUT */
    error = NULL;
    expect(!applevz_vm_wait_for_state(vm, APPLEVZ_STATE_PAUSED, 0, &error), "wait, 0 ms");
    report("wait_for_state", error, APPLEVZ_ERROR_TIMEOUT);
    applevz_vm_free(vm);

    /* A start that times out, then a pause while the framework is still starting. */
    vm = open_vm("slow", "[timeouts]\nstart = 0.05", "boot_delay_ms=3000");
    error = NULL;
    expect(!applevz_vm_start(vm, &error), "a start that times out");
    report("start timeout", error, APPLEVZ_ERROR_TIMEOUT);
    error = NULL;
    expect(!applevz_vm_pause(vm, &error), "pause while starting");
    report("pause while starting", error, APPLEVZ_ERROR_INVALID_STATE);
    applevz_vm_free(vm);

    /* A guest that ignores the power button. */
    vm = open_vm("stubborn", "on_graceful_timeout = \"fail\"\n[timeouts]\ngraceful_shutdown = 0.1",
                 "ignores_stop_request");
    error = NULL;
    expect(applevz_vm_start(vm, &error), "start the stubborn guest");
    applevz_error_free(error);
    error = NULL;
    expect(!applevz_vm_shutdown(vm, APPLEVZ_SHUTDOWN_POWERDOWN, &error), "powerdown ignored");
    report("powerdown ignored", error, APPLEVZ_ERROR_TIMEOUT);
    applevz_vm_free(vm);

    /* NOT_SUPPORTED */
    vm = open_vm("unsupported", "saved_state = \"vm.state\"", "save_restore_unsupported");
    error = NULL;
    expect(applevz_vm_start(vm, &error), "start");
    applevz_error_free(error);
    error = NULL;
    expect(!applevz_vm_suspend(vm, &error), "suspend where it is not supported");
    report("suspend not supported", error, APPLEVZ_ERROR_NOT_SUPPORTED);
    applevz_vm_free(vm);

    /* Suspended: refusals, SAVED_STATE_CHANGED both ways, RESTORE_FAILED. */
    vm = open_vm("suspended", "saved_state = \"vm.state\"", NULL);
    path_in("suspended", "vm.state", path, sizeof path);
    error = NULL;
    expect(applevz_vm_start(vm, &error) && applevz_vm_suspend(vm, &error), "start, suspend");
    applevz_error_free(error);
    error = NULL;
    expect(!applevz_vm_pause(vm, &error), "pause a suspended VM");
    report("pause suspended", error, APPLEVZ_ERROR_INVALID_STATE);
    error = NULL;
    expect(!applevz_vm_shutdown(vm, APPLEVZ_SHUTDOWN_POWERDOWN, &error), "powerdown suspended");
    report("powerdown suspended", error, APPLEVZ_ERROR_INVALID_STATE);
    write_file(path, "not a saved state");
    error = NULL;
    expect(!applevz_vm_start(vm, &error), "restore a damaged saved state");
    report("restore damaged", error, APPLEVZ_ERROR_RESTORE_FAILED);
    expect(remove(path) == 0, "remove the saved state");
    error = NULL;
    expect(!applevz_vm_start(vm, &error), "restore a vanished saved state");
    report("restore vanished", error, APPLEVZ_ERROR_SAVED_STATE_CHANGED);
    error = NULL;
    expect(applevz_vm_shutdown(vm, APPLEVZ_SHUTDOWN_POWEROFF, &error), "poweroff forgets it");
    applevz_error_free(error);
    write_file(path, "another VM's saved state");
    error = NULL;
    expect(!applevz_vm_start(vm, &error), "start over a foreign saved state");
    report("foreign saved state", error, APPLEVZ_ERROR_SAVED_STATE_CHANGED);
    applevz_vm_free(vm);

    /* FRAMEWORK: the error of a VM that crashes, as its event carries it. */
    event_error seen = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, "", 0, false};
    vm = open_vm("crash", "", "crash_after_ms=10");
    error = NULL;
    applevz_subscription *subscription = applevz_vm_subscribe(vm, on_event, &seen, &error);
    expect(subscription != NULL, "subscribe");
    applevz_error_free(error);
    error = NULL;
    expect(applevz_vm_start(vm, &error), "start the crashing guest");
    applevz_error_free(error);
    pthread_mutex_lock(&seen.mutex);
    while (!seen.seen) pthread_cond_wait(&seen.changed, &seen.mutex);
    pthread_mutex_unlock(&seen.mutex);
    expect(seen.kind == APPLEVZ_ERROR_FRAMEWORK, "the crash is a framework error");
    printf("error\t%d\t%s\t%s\n", seen.kind, "crash event", seen.message);
    applevz_subscription_free(subscription);
    applevz_vm_free(vm);

    printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
