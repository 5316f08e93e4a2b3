/*
 * A VM's lifecycle from C through libapplevz.a (README, "From C and C++").
 *
 *   scripts/install-c.sh ~/.local      # header, libapplevz.a and applevz.pc
 *   export PKG_CONFIG_PATH=~/.local/lib/pkgconfig
 *   cc examples/c/vm_lifecycle.c $(pkg-config --cflags --libs --static applevz)
 *   ./a.out DIR/vm.toml          # a definition, e.g. made by `applevz init DIR`
 *
 * (macOS: sign a.out with applevz.entitlements before running it.)
 */
#include <stdio.h>

#include "applevz_vm.h"

static void on_event(void *user_data, const applevz_event *event) {
    static const char *const kinds[] = {"", " (guest stopped)", " (stopped with error)",
                                        " (network disconnected)", " (suspended)",
                                        " (saved state removed)"};
    applevz_event_kind kind = applevz_event_get_kind(event);
    const applevz_error *error = applevz_event_get_error(event);
    (void)user_data; /* runs on the subscription's own thread */
    printf("  event: %s%s%s%s\n", applevz_state_name(applevz_event_get_state(event)),
           kind >= 0 && kind <= 5 ? kinds[kind] : "", /* a later kind: printed plain */
           error ? ": " : "", error ? applevz_error_message(error) : "");
}

/* Reports a failed step; the error is ours to free. */
static int failed(const char *step, applevz_error *error) {
    fprintf(stderr, "%s failed (kind %d): %s\n", step, applevz_error_code(error),
            applevz_error_message(error));
    applevz_error_free(error);
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s VM_TOML\n", argv[0]);
        return 2;
    }
    printf("applevz %s%s\n", applevz_version(), applevz_is_simulator() ? " (simulator)" : "");

    applevz_error *error = NULL;
    applevz_vm *vm = applevz_vm_open(argv[1], &error);
    if (!vm) return failed("open", error);
    applevz_subscription *events = applevz_vm_subscribe(vm, on_event, NULL, &error);
    if (!events) {
        applevz_vm_free(vm);
        return failed("subscribe", error);
    }
    printf("opened: %s\n", applevz_state_name(applevz_vm_get_state(vm)));

    int status = 0;
    if (!applevz_vm_start(vm, &error)) status = failed("start", error);
    else if (!applevz_vm_pause(vm, &error)) status = failed("pause", error);
    else if (!applevz_vm_resume(vm, &error)) status = failed("resume", error);
    else if (!applevz_vm_suspend(vm, &error)) status = failed("suspend", error);
    else if (!applevz_vm_start(vm, &error)) status = failed("start (restore)", error);
    else if (!applevz_vm_shutdown(vm, APPLEVZ_SHUTDOWN_POWERDOWN, &error))
        status = failed("shutdown", error);
    printf("finally: %s\n", applevz_state_name(applevz_vm_get_state(vm)));

    applevz_subscription_free(events); /* no callback runs after this */
    applevz_vm_free(vm);               /* a VM still running would be forced off */
    return status;
}
