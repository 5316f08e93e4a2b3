/*
 * A VM's lifecycle from C through libapplevz.a (README, "From C and C++").
 *
 *   cargo build --release
 *   cc -Iinclude examples/c/vm_lifecycle.c target/release/libapplevz.a -lpthread -ldl -lm
 *   ./a.out DIR/vm.toml          # a definition, e.g. made by `applevz init DIR`
 *
 * (macOS: link with -framework Virtualization -framework Foundation
 * -framework CoreFoundation -lobjc and sign with applevz.entitlements.)
 */
#include <stdio.h>

#include "applevz_vm.h"

static void on_event(void *user_data, const applevz_event *event) {
    static const char *const kinds[] = {"", " (guest stopped)", " (stopped with error)",
                                        " (network disconnected)", " (suspended)",
                                        " (saved state removed)"};
    (void)user_data; /* runs on the subscription's own thread */
    printf("  event: %s%s%s%s\n", applevz_state_name(event->state),
           event->kind >= 0 && event->kind <= 5 ? kinds[event->kind] : "",
           event->error ? ": " : "", event->error ? applevz_error_message(event->error) : "");
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
    applevz_subscription *events = applevz_vm_subscribe(vm, on_event, NULL);
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
