/* Exercises the applevz simulator (shim/sim) against its specification. */
#define _GNU_SOURCE 1
#include "avz_sim.h"
#include "cf.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static int passed, failed;
static char tmpdir[256];
static char kernel[300];

#define CHECK(cond, ...)                                                                 \
    do {                                                                                 \
        if (cond) {                                                                      \
            passed++;                                                                    \
        } else {                                                                         \
            failed++;                                                                    \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);              \
            fprintf(stderr, __VA_ARGS__);                                                \
            fputc('\n', stderr);                                                         \
        }                                                                                \
    } while (0)

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static char *path_in(const char *name) {
    static char bufs[8][300];
    static int i;
    char *b = bufs[i++ % 8];
    snprintf(b, 300, "%s/%s", tmpdir, name);
    return b;
}

static void write_file(const char *path, const char *content) {
    FILE *f = fopen(path, "w");
    fputs(content, f);
    fclose(f);
}

static char *read_file(const char *path) {
    static char buf[4096];
    FILE *f = fopen(path, "r");
    if (!f) return NULL;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = 0;
    fclose(f);
    return buf;
}

static bool exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

/* ---- error inspection ---- */
typedef struct err_info {
    bool set;
    char domain[64];
    long code;
    char desc[512];
} err_info;

static err_info take_error(CFErrorRef e) {
    err_info info = {0};
    if (!e) return info;
    info.set = true;
    info.code = CFErrorGetCode(e);
    CFStringRef d = CFErrorGetDomain(e);
    CFStringGetCString(d, info.domain, sizeof info.domain, kCFStringEncodingUTF8);
    CFStringRef s = CFErrorCopyDescription(e);
    CFIndex max = CFStringGetMaximumSizeForEncoding(CFStringGetLength(s), kCFStringEncodingUTF8);
    if (max + 1 > (CFIndex)sizeof info.desc) max = sizeof info.desc - 1;
    if (!CFStringGetCString(s, info.desc, sizeof info.desc, kCFStringEncodingUTF8))
        strcpy(info.desc, "<too long>");
    CFRelease(s);
    CFRelease(e);
    return info;
}

static err_info take_errp(CFErrorRef *e) {
    err_info i = take_error(*e);
    *e = NULL;
    return i;
}

#define CHECK_ERR(info, dom, c)                                                          \
    CHECK((info).set && strcmp((info).domain, dom) == 0 && (info).code == (c),           \
          "expected %s %ld, got set=%d %s %ld (%s)", dom, (long)(c), (info).set,        \
          (info).domain, (info).code, (info).desc)

/* ---- event log ---- */
typedef struct logbuf {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    char text[8192];
    int entries;
    int released;
    int events_after_release;
    pthread_t main_thread;
    int on_main_thread;
    avz_vm *vm_for_reentry; /* if set, the observer calls avz_vm_state on it */
    int reentry_state;
} logbuf;

static const char *sname(int s) {
    static const char *n[] = {"stopped", "running",  "paused",   "error",  "starting",
                              "pausing", "resuming", "stopping", "saving", "restoring"};
    return s >= 0 && s <= 9 ? n[s] : "?";
}

static void log_init(logbuf *l) {
    memset(l, 0, sizeof *l);
    pthread_mutex_init(&l->mu, NULL);
    pthread_cond_init(&l->cv, NULL);
    l->main_thread = pthread_self();
}

static void log_add(logbuf *l, const char *fmt, ...) {
    pthread_mutex_lock(&l->mu);
    size_t n = strlen(l->text);
    if (n) l->text[n++] = ' ';
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(l->text + n, sizeof l->text - n, fmt, ap);
    va_end(ap);
    l->entries++;
    if (pthread_equal(pthread_self(), l->main_thread)) l->on_main_thread++;
    pthread_cond_broadcast(&l->cv);
    pthread_mutex_unlock(&l->mu);
}

static void observer(void *ctx, int32_t state, int32_t event, CFErrorRef error) {
    logbuf *l = ctx;
    if (l->released) l->events_after_release++;
    if (l->vm_for_reentry) l->reentry_state = avz_vm_state(l->vm_for_reentry);
    if (event == AVZ_EVENT_STATE_CHANGED) {
        log_add(l, "S:%s%s", sname(state), error ? "!err" : "");
    } else if (event == AVZ_EVENT_GUEST_STOPPED) {
        log_add(l, "G:%s%s", sname(state), error ? "!err" : "");
    } else if (event == AVZ_EVENT_STOPPED_WITH_ERROR) {
        CFRetain(error);
        err_info i = take_error(error); /* releases our retain */
        log_add(l, "X:%s:%s:%ld", sname(state), i.domain, i.code);
        if (strcmp(i.desc, "The virtual machine stopped unexpectedly.") != 0)
            log_add(l, "BADDESC");
    } else if (event == AVZ_EVENT_NETWORK_DISCONNECTED) {
        /* N:<state>:<domain>:<code>:dev<index from the description> */
        CFRetain(error);
        err_info i = take_error(error); /* releases our retain */
        unsigned index = 0;
        char colon = 0;
        if (sscanf(i.desc, "network device %u%c", &index, &colon) != 2 || colon != ':' ||
            strncmp(i.desc + strcspn(i.desc, ":"), ": ", 2) != 0)
            log_add(l, "BADDESC");
        log_add(l, "N:%s:%s:%ld:dev%u", sname(state), i.domain, i.code, index);
    } else {
        log_add(l, "?%d", event);
    }
}

static void observer_release(void *ctx) {
    logbuf *l = ctx;
    pthread_mutex_lock(&l->mu);
    l->released++;
    pthread_cond_broadcast(&l->cv);
    pthread_mutex_unlock(&l->mu);
}

static bool wait_entries(logbuf *l, int n, int timeout_ms) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += timeout_ms / 1000;
    ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
    pthread_mutex_lock(&l->mu);
    while (l->entries < n) {
        if (pthread_cond_timedwait(&l->cv, &l->mu, &ts) == ETIMEDOUT) break;
    }
    bool ok = l->entries >= n;
    pthread_mutex_unlock(&l->mu);
    return ok;
}

static bool wait_released(logbuf *l, int timeout_ms) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += timeout_ms / 1000 + 1;
    pthread_mutex_lock(&l->mu);
    while (!l->released) {
        if (pthread_cond_timedwait(&l->cv, &l->mu, &ts) == ETIMEDOUT) break;
    }
    bool ok = l->released;
    pthread_mutex_unlock(&l->mu);
    return ok;
}

static void log_take(logbuf *l, char *out, size_t n) {
    pthread_mutex_lock(&l->mu);
    snprintf(out, n, "%s", l->text);
    l->text[0] = 0;
    l->entries = 0;
    pthread_mutex_unlock(&l->mu);
}

/* expects exactly `expected` (space-separated, n entries) */
#define EXPECT_LOG(l, n, expected)                                                       \
    do {                                                                                 \
        bool got_ = wait_entries((l), (n), 3000);                                        \
        sleep_ms(20);                                                                    \
        char buf_[8192];                                                                 \
        log_take((l), buf_, sizeof buf_);                                                \
        CHECK(got_ && strcmp(buf_, (expected)) == 0, "expected [%s] got [%s]",          \
              (expected), buf_);                                                         \
    } while (0)

/* ---- completion ---- */
typedef struct comp {
    logbuf *log;
    const char *name;
    int calls;
    err_info err;
    avz_vm *release_vm; /* released from inside the completion */
} comp;

static void completion(void *ctx, CFErrorRef error) {
    comp *c = ctx;
    avz_vm *release_vm = c->release_vm;
    c->calls++;
    c->err = take_error(error);
    log_add(c->log, "C:%s:%ld", c->name, c->err.set ? c->err.code : 0L);
    /* c may be gone now (the test thread moved on) */
    if (release_vm) CFRelease(release_vm);
}

static avz_config *base_config(void) {
    avz_config *c = avz_config_create();
    CFErrorRef e = NULL;
    bool ok = avz_config_set_linux_boot_loader(c, kernel, NULL, "console=hvc0", &e);
    CHECK(ok && !e, "linux boot loader");
    return c;
}

static avz_vm *make_vm(avz_config *c, logbuf *l) {
    CFErrorRef e = NULL;
    log_init(l);
    avz_vm *vm = avz_vm_create(c, observer, l, observer_release, &e);
    CHECK(vm && !e, "avz_vm_create");
    return vm;
}

static void destroy_vm(avz_vm *vm, logbuf *l) {
    CFRelease(vm);
    CHECK(wait_released(l, 3000), "observer released");
    sleep_ms(10);
    CHECK(l->released == 1, "released once: %d", l->released);
    CHECK(l->events_after_release == 0, "no events after release");
    CHECK(l->on_main_thread == 0, "callbacks on main thread: %d", l->on_main_thread);
}

#define OP(vm, fn, cmp, nm, lg)                                                          \
    comp cmp = {.log = (lg), .name = (nm)};                                              \
    fn((vm), completion, &cmp)

/* =============================================================================== */

static void test_cf(void) {
    CFErrorRef e = NULL;
    /* A path with non-ASCII: é (1 unit), 😀 (2 units) */
    char bad[300];
    snprintf(bad, sizeof bad, "%s/missing-\xC3\xA9-\xF0\x9F\x98\x80", tmpdir);
    avz_config *c = avz_config_create();
    CHECK(!avz_config_set_linux_boot_loader(c, bad, NULL, "", &e), "missing kernel");
    CFStringRef d = CFErrorCopyDescription(e);
    CFIndex len = CFStringGetLength(d);
    char buf[1024];
    CHECK(CFStringGetCString(d, buf, sizeof buf, kCFStringEncodingUTF8), "get c string");
    /* utf16 length = bytes - (é: 2 bytes->1) - (emoji: 4 bytes -> 2) */
    CHECK((size_t)len == strlen(buf) - 1 - 2, "utf16 length %ld vs %zu", len, strlen(buf));
    CHECK(strstr(buf, bad) != NULL, "description names the path: %s", buf);
    CHECK(!CFStringGetCString(d, buf, (CFIndex)strlen(buf), kCFStringEncodingUTF8), "too small");
    CHECK(!CFStringGetCString(d, buf, sizeof buf, 0x0600), "other encoding");
    CHECK(CFStringGetMaximumSizeForEncoding(10, kCFStringEncodingUTF8) == 30, "max size");
    CFRetain(d);
    CFRelease(d);
    CFRelease(d);
    CFStringRef dom = CFErrorGetDomain(e);
    CHECK(CFStringGetCString(dom, buf, sizeof buf, kCFStringEncodingUTF8) &&
              strcmp(buf, "VZErrorDomain") == 0, "domain %s", buf);
    CHECK(CFErrorGetCode(e) == AVZ_ERROR_INVALID_CONFIGURATION, "code");
    CFRelease(e);
    /* invalid utf-8 gets replaced */
    snprintf(bad, sizeof bad, "%s/bad-\xFF\xC0\x80", tmpdir);
    e = NULL;
    CHECK(!avz_config_set_linux_boot_loader(c, bad, NULL, "", &e), "missing kernel 2");
    d = CFErrorCopyDescription(e);
    CHECK(CFStringGetCString(d, buf, sizeof buf, kCFStringEncodingUTF8), "cstr");
    CHECK(strstr(buf, "bad-\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD") != NULL, "replacement: %s", buf);
    CFRelease(d);
    CFRelease(e);
    CFRelease(c);
}

static void test_host(void) {
    CHECK(avz_is_supported(), "supported");
    CHECK(avz_save_restore_supported(), "sr supported");
    avz_limits lim;
    avz_get_limits(&lim);
    CHECK(lim.min_cpu_count == 1 && lim.max_cpu_count == (uint32_t)sysconf(_SC_NPROCESSORS_ONLN),
          "cpu limits %u %u", lim.min_cpu_count, lim.max_cpu_count);
    CHECK(lim.min_memory_size == 128u << 20 && lim.max_memory_size % (1u << 20) == 0 &&
              lim.max_memory_size > lim.min_memory_size, "memory limits");
    uint8_t id[64];
    size_t n = 0;
    CFErrorRef e = NULL;
    CHECK(!avz_machine_identifier_create(id, 16, &n, &e), "small");
    CHECK(n == 32, "needed %zu", n);
    err_info i = take_errp(&e);
    CHECK_ERR(i, "VZErrorDomain", AVZ_ERROR_INTERNAL);
    uint8_t id2[64];
    CHECK(avz_machine_identifier_create(id, sizeof id, &n, NULL) && n == 32, "create");
    CHECK(memcmp(id, "AVZSIMID", 8) == 0, "magic");
    CHECK(avz_machine_identifier_create(id2, sizeof id2, &n, NULL), "create 2");
    CHECK(memcmp(id, id2, 32) != 0, "random");
}

static void test_config(void) {
    CFErrorRef e = NULL;
    err_info i;
    avz_config *c = avz_config_create();

    /* validate: no boot loader */
    CHECK(!avz_config_validate(c, &e), "no boot loader");
    i = take_errp(&e);
    CHECK_ERR(i, "VZErrorDomain", 2);
    CHECK(strstr(i.desc, "boot loader") != NULL, "%s", i.desc);
    CHECK(!avz_config_validate(c, NULL), "no out param ok");

    /* kernel as directory, initrd missing */
    CHECK(!avz_config_set_linux_boot_loader(c, tmpdir, NULL, "", &e), "dir kernel");
    i = take_errp(&e);
    CHECK_ERR(i, "VZErrorDomain", 2);
    CHECK(strstr(i.desc, tmpdir) != NULL, "%s", i.desc);
    CHECK(!avz_config_set_linux_boot_loader(c, kernel, path_in("no-initrd"), "", &e), "initrd");
    i = take_errp(&e);
    CHECK_ERR(i, "VZErrorDomain", 2);
    CHECK(strstr(i.desc, "no-initrd") != NULL, "%s", i.desc);
    CHECK(avz_config_set_linux_boot_loader(c, kernel, kernel, NULL, &e) && !e, "ok");
    CHECK(avz_config_validate(c, &e) && !e, "validate ok");

    /* EFI */
    const char *efi = path_in("efi-vars");
    CHECK(!avz_config_set_efi_boot_loader(c, efi, false, &e), "missing efi");
    i = take_errp(&e);
    CHECK_ERR(i, "NSPOSIXErrorDomain", ENOENT);
    CHECK(avz_config_set_efi_boot_loader(c, efi, true, &e) && !e, "create efi");
    CHECK(avz_config_set_efi_boot_loader(c, efi, false, &e) && !e, "open efi");
    write_file(path_in("not-efi"), "hello");
    CHECK(!avz_config_set_efi_boot_loader(c, path_in("not-efi"), false, &e), "bad efi");
    i = take_errp(&e);
    CHECK_ERR(i, "VZErrorDomain", 2);
    CHECK(!avz_config_set_efi_boot_loader(c, path_in("nodir/efi"), true, &e), "efi nodir");
    i = take_errp(&e);
    CHECK_ERR(i, "NSPOSIXErrorDomain", ENOENT);

    /* platform */
    CHECK(avz_config_set_generic_platform(c, NULL, 0, &e) && !e, "fresh platform");
    uint8_t id[32];
    size_t n;
    avz_machine_identifier_create(id, sizeof id, &n, NULL);
    CHECK(avz_config_set_generic_platform(c, id, 32, &e) && !e, "platform id");
    CHECK(!avz_config_set_generic_platform(c, id, 31, &e), "short id");
    i = take_errp(&e);
    CHECK_ERR(i, "VZErrorDomain", 2);
    id[0] = 'X';
    CHECK(!avz_config_set_generic_platform(c, id, 32, &e), "bad id");
    i = take_errp(&e);
    CHECK_ERR(i, "VZErrorDomain", 2);

    /* disks */
    write_file(path_in("disk.img"), "disk");
    CHECK(avz_config_add_storage_device(c, AVZ_STORAGE_VIRTIO_BLOCK, path_in("disk.img"), false, AVZ_CACHING_CACHED, AVZ_SYNC_FSYNC, NULL, &e) && !e, "disk ok");
    CHECK(avz_config_add_storage_device(c, AVZ_STORAGE_VIRTIO_BLOCK, path_in("disk.img"), true, 0, 1, NULL, &e) && !e,
          "disk ro ok");
    CHECK(!avz_config_add_storage_device(c, AVZ_STORAGE_VIRTIO_BLOCK, path_in("nodisk"), true, 0, 1, NULL, &e), "no disk");
    i = take_errp(&e);
    CHECK_ERR(i, "NSPOSIXErrorDomain", ENOENT);
    CHECK(!avz_config_add_storage_device(c, AVZ_STORAGE_VIRTIO_BLOCK, tmpdir, true, 0, 1, NULL, &e), "dir disk");
    i = take_errp(&e);
    CHECK_ERR(i, "VZErrorDomain", 5);
    CHECK(!avz_config_add_storage_device(c, AVZ_STORAGE_VIRTIO_BLOCK, path_in("disk.img"), true, 3, 1, NULL, &e), "cache");
    i = take_errp(&e);
    CHECK_ERR(i, "VZErrorDomain", 2);
    CHECK(!avz_config_add_storage_device(c, AVZ_STORAGE_VIRTIO_BLOCK, path_in("disk.img"), true, 0, 0, NULL, &e), "sync");
    i = take_errp(&e);
    CHECK_ERR(i, "VZErrorDomain", 2);

    /* NAT */
    CHECK(avz_config_add_nat_network_device(c, NULL, &e) && !e, "nat random");
    CHECK(avz_config_add_nat_network_device(c, "52:54:00:AB:cd:01", &e) && !e, "nat mac");
    const char *bad_macs[] = {"52:54:00:ab:cd", "52:54:00:ab:cd:0g", "52-54-00-ab-cd-01",
                              "52:54:00:ab:cd:01:", "", "5:54:00:ab:cd:011"};
    for (size_t k = 0; k < sizeof bad_macs / sizeof *bad_macs; k++) {
        CHECK(!avz_config_add_nat_network_device(c, bad_macs[k], &e), "bad mac %s", bad_macs[k]);
        i = take_errp(&e);
        CHECK_ERR(i, "VZErrorDomain", 2);
    }

    /* serial */
    CHECK(avz_config_add_serial_port_file(c, path_in("serial.log"), false, &e) && !e, "serial");
    CHECK(!avz_config_add_serial_port_file(c, path_in("nodir/serial.log"), true, &e), "serial2");
    i = take_errp(&e);
    CHECK_ERR(i, "NSPOSIXErrorDomain", ENOENT);
    CHECK(!avz_config_add_serial_port_fds(c, 987, -1, &e), "bad fd");
    i = take_errp(&e);
    CHECK_ERR(i, "NSPOSIXErrorDomain", EBADF);
    CHECK(!avz_config_add_serial_port_fds(c, 0, 986, &e), "bad write fd");
    i = take_errp(&e);
    CHECK_ERR(i, "NSPOSIXErrorDomain", EBADF);
    CHECK(avz_config_add_serial_port_fds(c, -1, -1, &e) && !e, "no fds");

    /* limits */
    avz_limits lim;
    avz_get_limits(&lim);
    avz_config_set_cpu_count(c, 0);
    CHECK(!avz_config_validate(c, &e), "cpu 0");
    i = take_errp(&e);
    CHECK_ERR(i, "VZErrorDomain", 2);
    avz_config_set_cpu_count(c, lim.max_cpu_count + 1);
    CHECK(!avz_config_validate(c, &e), "cpu max");
    i = take_errp(&e);
    CHECK_ERR(i, "VZErrorDomain", 2);
    CHECK(strstr(i.desc, "maximum") != NULL, "%s", i.desc);
    avz_config_set_cpu_count(c, lim.max_cpu_count);
    avz_config_set_memory_size(c, 64u << 20);
    CHECK(!avz_config_validate(c, &e), "mem low");
    i = take_errp(&e);
    CHECK_ERR(i, "VZErrorDomain", 2);
    avz_config_set_memory_size(c, lim.max_memory_size + (1u << 20));
    CHECK(!avz_config_validate(c, &e), "mem high");
    i = take_errp(&e);
    CHECK_ERR(i, "VZErrorDomain", 2);
    avz_config_set_memory_size(c, (256u << 20) + 1);
    CHECK(!avz_config_validate(c, &e), "mem multiple");
    i = take_errp(&e);
    CHECK_ERR(i, "VZErrorDomain", 2);
    CHECK(strstr(i.desc, "1 MiB") != NULL, "%s", i.desc);
    avz_config_set_memory_size(c, 256u << 20);
    CHECK(avz_config_validate(c, &e) && !e, "valid");

    /* save/restore validation */
    CHECK(avz_config_validate_save_restore(c, &e) && !e, "sr ok");
    avz_sim_config_set_not_savable(c, true);
    CHECK(!avz_config_validate_save_restore(c, &e), "not savable");
    i = take_errp(&e);
    CHECK_ERR(i, "VZErrorDomain", 2);
    avz_sim_config_set_save_restore_unsupported(c, true);
    CHECK(!avz_config_validate_save_restore(c, &e), "unsupported");
    i = take_errp(&e);
    CHECK_ERR(i, "VZErrorDomain", 10);
    CHECK(strstr(i.desc, "macOS 14") != NULL, "%s", i.desc);

    /* vm_create with an invalid config */
    avz_config *bad = avz_config_create();
    logbuf l;
    log_init(&l);
    avz_vm *vm = avz_vm_create(bad, observer, &l, observer_release, &e);
    CHECK(vm == NULL && l.released == 1, "create fails and releases");
    i = take_errp(&e);
    CHECK_ERR(i, "VZErrorDomain", 2);
    CFRelease(bad);
    CFRelease(c);
}

static void test_basic_lifecycle(void) {
    avz_config *c = base_config();
    logbuf l;
    avz_vm *vm = make_vm(c, &l);
    CFRelease(c); /* the VM keeps its own copy */
    CHECK(avz_vm_state(vm) == AVZ_STATE_STOPPED, "initial");
    CHECK(avz_vm_can_start(vm) && !avz_vm_can_stop(vm) && !avz_vm_can_pause(vm) &&
              !avz_vm_can_resume(vm) && !avz_vm_can_request_stop(vm), "stopped can_*");
    {
        OP(vm, avz_vm_start, s, "start", &l);
        EXPECT_LOG(&l, 3, "S:starting S:running C:start:0");
        CHECK(s.calls == 1, "once");
    }
    CHECK(avz_vm_state(vm) == AVZ_STATE_RUNNING, "running");
    CHECK(!avz_vm_can_start(vm) && avz_vm_can_stop(vm) && avz_vm_can_pause(vm) &&
              !avz_vm_can_resume(vm) && avz_vm_can_request_stop(vm), "running can_*");
    {
        OP(vm, avz_vm_pause, p, "pause", &l);
        EXPECT_LOG(&l, 3, "S:pausing S:paused C:pause:0");
    }
    CHECK(!avz_vm_can_start(vm) && avz_vm_can_stop(vm) && !avz_vm_can_pause(vm) &&
              avz_vm_can_resume(vm) && !avz_vm_can_request_stop(vm), "paused can_*");
    {
        OP(vm, avz_vm_resume, r, "resume", &l);
        EXPECT_LOG(&l, 3, "S:resuming S:running C:resume:0");
    }
    {
        OP(vm, avz_vm_stop, st, "stop", &l);
        EXPECT_LOG(&l, 3, "S:stopping S:stopped C:stop:0");
    }
    /* stop from paused */
    {
        OP(vm, avz_vm_start, s, "start", &l);
        EXPECT_LOG(&l, 3, "S:starting S:running C:start:0");
        OP(vm, avz_vm_pause, p, "pause", &l);
        EXPECT_LOG(&l, 3, "S:pausing S:paused C:pause:0");
        OP(vm, avz_vm_stop, st, "stop", &l);
        EXPECT_LOG(&l, 3, "S:stopping S:stopped C:stop:0");
    }
    destroy_vm(vm, &l);
}

static void test_refusals(void) {
    avz_config *c = base_config();
    logbuf l;
    avz_vm *vm = make_vm(c, &l);
    CFRelease(c);
    CFErrorRef e = NULL;
    err_info i;
    /* stopped */
    {
        OP(vm, avz_vm_stop, a, "stop", &l);
        OP(vm, avz_vm_pause, b, "pause", &l);
        OP(vm, avz_vm_resume, d, "resume", &l);
        comp sv = {.log = &l, .name = "save"};
        avz_vm_save_state(vm, path_in("refused.state"), completion, &sv);
        EXPECT_LOG(&l, 4, "C:stop:4 C:pause:4 C:resume:4 C:save:3");
        CHECK(strstr(a.err.desc, "stopped") != NULL, "%s", a.err.desc);
        CHECK(strcmp(b.err.desc, "Cannot pause the virtual machine: it is stopped, not running.") == 0,
              "%s", b.err.desc);
        CHECK(strcmp(a.err.domain, "VZErrorDomain") == 0, "domain");
        CHECK(!exists(path_in("refused.state")), "no file");
        CHECK(!avz_vm_request_stop(vm, &e), "request stop stopped");
        i = take_errp(&e);
        CHECK_ERR(i, "VZErrorDomain", 3);
        CHECK(!avz_vm_request_stop(vm, NULL), "null error ok");
    }
    /* running */
    {
        OP(vm, avz_vm_start, s, "start", &l);
        EXPECT_LOG(&l, 3, "S:starting S:running C:start:0");
        OP(vm, avz_vm_start, s2, "start", &l);
        OP(vm, avz_vm_resume, r, "resume", &l);
        comp sv = {.log = &l, .name = "save"};
        avz_vm_save_state(vm, path_in("refused.state"), completion, &sv);
        comp rs = {.log = &l, .name = "restore"};
        avz_vm_restore_state(vm, path_in("refused.state"), completion, &rs);
        EXPECT_LOG(&l, 4, "C:start:4 C:resume:4 C:save:3 C:restore:4");
        CHECK(strcmp(s2.err.desc, "Cannot start the virtual machine: it is running, not stopped "
                                  "or in the error state.") == 0,
              "%s", s2.err.desc);
        CHECK(avz_vm_state(vm) == AVZ_STATE_RUNNING, "unchanged");
    }
    /* in flight: slow operations */
    destroy_vm(vm, &l);

    c = base_config();
    avz_sim_config_set_boot_delay_ms(c, 150);
    avz_sim_config_set_stop_delay_ms(c, 150);
    avz_sim_config_set_operation_delay_ms(c, 150);
    vm = make_vm(c, &l);
    CFRelease(c);
    {
        OP(vm, avz_vm_start, s, "start", &l);
        OP(vm, avz_vm_start, s2, "start2", &l);
        OP(vm, avz_vm_pause, p, "pause", &l);
        EXPECT_LOG(&l, 5, "S:starting C:start2:4 C:pause:4 S:running C:start:0");
        CHECK(strcmp(s2.err.desc, "Cannot start the virtual machine: it is starting, not stopped "
                                  "or in the error state (the start operation is still in "
                                  "progress).") == 0, "%s", s2.err.desc);
        OP(vm, avz_vm_pause, p2, "pause", &l);
        OP(vm, avz_vm_resume, r, "resume", &l);
        OP(vm, avz_vm_pause, p3, "pause3", &l);
        EXPECT_LOG(&l, 5, "S:pausing C:resume:4 C:pause3:4 S:paused C:pause:0");
        OP(vm, avz_vm_stop, st, "stop", &l);
        OP(vm, avz_vm_stop, st2, "stop2", &l);
        OP(vm, avz_vm_start, s3, "start3", &l);
        EXPECT_LOG(&l, 5, "S:stopping C:stop2:4 C:start3:4 S:stopped C:stop:0");
        CHECK(strstr(st2.err.desc, "stopping") != NULL, "%s", st2.err.desc);
        CHECK(!avz_vm_can_stop(vm), "stopped");
    }
    destroy_vm(vm, &l);
}

static void test_save_restore(void) {
    avz_config *c = base_config();
    write_file(path_in("root.img"), "disk");
    avz_config_add_storage_device(c, AVZ_STORAGE_VIRTIO_BLOCK, path_in("root.img"), false, 2, 2, NULL, NULL);
    logbuf l;
    avz_vm *vm = make_vm(c, &l);
    const char *state = path_in("vm.state");
    unlink(state);
    {
        OP(vm, avz_vm_start, s, "start", &l);
        EXPECT_LOG(&l, 3, "S:starting S:running C:start:0");
        OP(vm, avz_vm_pause, p, "pause", &l);
        EXPECT_LOG(&l, 3, "S:pausing S:paused C:pause:0");
        comp sv = {.log = &l, .name = "save"};
        avz_vm_save_state(vm, state, completion, &sv);
        EXPECT_LOG(&l, 3, "S:saving S:paused C:save:0");
        char *content = read_file(state);
        CHECK(content && strncmp(content, "AVZSIM-STATE 1\nconfig=", 22) == 0 &&
                  strlen(content) == 22 + 16 + 1, "content [%s]", content ? content : "");
        /* save onto an existing file */
        comp sv2 = {.log = &l, .name = "save"};
        avz_vm_save_state(vm, state, completion, &sv2);
        EXPECT_LOG(&l, 1, "C:save:11");
        CHECK(strstr(sv2.err.desc, "already exists") != NULL, "%s", sv2.err.desc);
        CHECK(read_file(state) && strncmp(read_file(state), "AVZSIM-STATE 1\n", 15) == 0,
              "existing untouched");
        comp sv3 = {.log = &l, .name = "save"};
        avz_vm_save_state(vm, path_in("nodir/x.state"), completion, &sv3);
        EXPECT_LOG(&l, 1, "C:save:11");
        CHECK(avz_vm_state(vm) == AVZ_STATE_PAUSED, "still paused");
        CHECK(strstr(sv3.err.desc, "directory does not exist") != NULL, "%s", sv3.err.desc);
        OP(vm, avz_vm_stop, st, "stop", &l);
        EXPECT_LOG(&l, 3, "S:stopping S:stopped C:stop:0");
    }
    char saved[256];
    snprintf(saved, sizeof saved, "%s", read_file(state));
    struct stat before;
    stat(state, &before);
    {
        /* the VM that ran (and saved) cannot restore: only a VM object that never left
         * the stopped state can */
        comp rs0 = {.log = &l, .name = "restore"};
        avz_vm_restore_state(vm, state, completion, &rs0);
        EXPECT_LOG(&l, 1, "C:restore:4");
        destroy_vm(vm, &l);
        vm = make_vm(c, &l);
        comp rs = {.log = &l, .name = "restore"};
        avz_vm_restore_state(vm, state, completion, &rs);
        EXPECT_LOG(&l, 3, "S:restoring S:paused C:restore:0");
        OP(vm, avz_vm_resume, r, "resume", &l);
        EXPECT_LOG(&l, 3, "S:resuming S:running C:resume:0");
        comp rs2 = {.log = &l, .name = "restore"};
        avz_vm_restore_state(vm, state, completion, &rs2);
        EXPECT_LOG(&l, 1, "C:restore:4");
        OP(vm, avz_vm_stop, st, "stop", &l);
        EXPECT_LOG(&l, 3, "S:stopping S:stopped C:stop:0");
    }
    struct stat after;
    stat(state, &after);
    CHECK(strcmp(read_file(state), saved) == 0 && before.st_mtime == after.st_mtime &&
              before.st_size == after.st_size, "restore leaves the file alone");
    /* a second VM from the same configuration restores it too */
    {
        logbuf l2;
        avz_vm *vm2 = make_vm(c, &l2);
        comp rs = {.log = &l2, .name = "restore"};
        avz_vm_restore_state(vm2, state, completion, &rs);
        EXPECT_LOG(&l2, 3, "S:restoring S:paused C:restore:0");
        destroy_vm(vm2, &l2); /* a paused VM can be released */
    }
    /* another configuration cannot */
    {
        avz_config_set_cpu_count(c, 2);
        logbuf l2;
        avz_vm *vm2 = make_vm(c, &l2);
        comp rs = {.log = &l2, .name = "restore"};
        avz_vm_restore_state(vm2, state, completion, &rs);
        EXPECT_LOG(&l2, 3, "S:restoring S:stopped C:restore:12");
        CHECK(strstr(rs.err.desc, "different configuration") != NULL, "%s", rs.err.desc);
        destroy_vm(vm2, &l2);
        avz_config_set_cpu_count(c, 1);
    }
    destroy_vm(vm, &l);
    {
        /* each attempt on a VM object that never left the stopped state */
        write_file(path_in("garbage.state"), "garbage");
        write_file(path_in("damaged.state"), "AVZSIM-STATE 1\nconfig=zz\n");
        const char *files[] = {"missing.state", "garbage.state", "damaged.state"};
        const char *why[] = {"does not exist", "not a saved", "damaged"};
        for (int k = 0; k < 3; k++) {
            vm = make_vm(c, &l);
            comp rs = {.log = &l, .name = "restore"};
            avz_vm_restore_state(vm, path_in(files[k]), completion, &rs);
            EXPECT_LOG(&l, 3, "S:restoring S:stopped C:restore:12");
            CHECK(strstr(rs.err.desc, why[k]) != NULL, "%s", rs.err.desc);
            destroy_vm(vm, &l);
        }
    }

    /* host without save/restore */
    avz_sim_config_set_save_restore_unsupported(c, true);
    vm = make_vm(c, &l);
    {
        comp rs = {.log = &l, .name = "restore"};
        avz_vm_restore_state(vm, state, completion, &rs);
        EXPECT_LOG(&l, 1, "C:restore:10");
        OP(vm, avz_vm_start, s, "start", &l);
        EXPECT_LOG(&l, 3, "S:starting S:running C:start:0");
        comp sv = {.log = &l, .name = "save"};
        avz_vm_save_state(vm, path_in("u.state"), completion, &sv);
        EXPECT_LOG(&l, 1, "C:save:10");
        CHECK(strstr(sv.err.desc, "macOS 14") != NULL, "%s", sv.err.desc);
        CHECK(avz_vm_state(vm) == AVZ_STATE_RUNNING, "unchanged");
    }
    destroy_vm(vm, &l);

    /* configuration that cannot be saved */
    avz_sim_config_set_save_restore_unsupported(c, false);
    avz_sim_config_set_not_savable(c, true);
    vm = make_vm(c, &l);
    {
        OP(vm, avz_vm_start, s, "start", &l);
        EXPECT_LOG(&l, 3, "S:starting S:running C:start:0");
        OP(vm, avz_vm_pause, p, "pause", &l);
        EXPECT_LOG(&l, 3, "S:pausing S:paused C:pause:0");
        comp sv = {.log = &l, .name = "save"};
        avz_vm_save_state(vm, path_in("ns.state"), completion, &sv);
        EXPECT_LOG(&l, 1, "C:save:11");
        CHECK(strstr(sv.err.desc, "cannot be saved") != NULL, "%s", sv.err.desc);
        CHECK(!exists(path_in("ns.state")), "no file");
    }
    destroy_vm(vm, &l);
    CFRelease(c);
}

static void test_guest(void) {
    CFErrorRef e = NULL;
    /* obeys a stop request */
    avz_config *c = base_config();
    avz_sim_config_set_stop_delay_ms(c, 50);
    logbuf l;
    avz_vm *vm = make_vm(c, &l);
    {
        OP(vm, avz_vm_start, s, "start", &l);
        EXPECT_LOG(&l, 3, "S:starting S:running C:start:0");
        CHECK(avz_vm_request_stop(vm, &e) && !e, "request stop");
        CHECK(avz_vm_state(vm) == AVZ_STATE_RUNNING, "still running right after");
        EXPECT_LOG(&l, 2, "S:stopped G:stopped");
    }
    /* request, then a forced stop and a new start within the delay: the old request is
     * forgotten */
    {
        OP(vm, avz_vm_start, s, "start", &l);
        EXPECT_LOG(&l, 3, "S:starting S:running C:start:0");
        CHECK(avz_vm_request_stop(vm, &e), "request stop");
        OP(vm, avz_vm_stop, st, "stop", &l);
        EXPECT_LOG(&l, 3, "S:stopping S:stopped C:stop:0");
    }
    destroy_vm(vm, &l);

    /* ignores it */
    avz_sim_config_set_ignores_stop_request(c, true);
    vm = make_vm(c, &l);
    {
        OP(vm, avz_vm_start, s, "start", &l);
        EXPECT_LOG(&l, 3, "S:starting S:running C:start:0");
        CHECK(avz_vm_request_stop(vm, &e) && !e, "request stop ignored still true");
        sleep_ms(200);
        char buf[256];
        log_take(&l, buf, sizeof buf);
        CHECK(buf[0] == 0 && avz_vm_state(vm) == AVZ_STATE_RUNNING, "ignored: %s", buf);
        /* a paused guest cannot power itself off (its vCPUs are stopped) */
        OP(vm, avz_vm_pause, p, "pause", &l);
        EXPECT_LOG(&l, 3, "S:pausing S:paused C:pause:0");
        avz_sim_vm_guest_power_off(vm); /* ignored */
        sleep_ms(50);
        log_take(&l, buf, sizeof buf);
        CHECK(buf[0] == 0 && avz_vm_state(vm) == AVZ_STATE_PAUSED,
              "power off ignored when paused: %s", buf);
        OP(vm, avz_vm_resume, r, "resume", &l);
        EXPECT_LOG(&l, 3, "S:resuming S:running C:resume:0");
        avz_sim_vm_guest_power_off(vm);
        EXPECT_LOG(&l, 2, "S:stopped G:stopped");
        avz_sim_vm_guest_power_off(vm); /* ignored */
        sleep_ms(50);
        log_take(&l, buf, sizeof buf);
        CHECK(buf[0] == 0, "power off ignored when stopped: %s", buf);
    }
    destroy_vm(vm, &l);
    CFRelease(c);

    /* powers off by itself */
    c = base_config();
    avz_sim_config_set_power_off_after_ms(c, 80);
    vm = make_vm(c, &l);
    {
        OP(vm, avz_vm_start, s, "start", &l);
        EXPECT_LOG(&l, 5, "S:starting S:running C:start:0 S:stopped G:stopped");
    }
    destroy_vm(vm, &l);
    CFRelease(c);

    /* crashes by itself */
    c = base_config();
    avz_sim_config_set_crash_after_ms(c, 80, 42);
    vm = make_vm(c, &l);
    {
        OP(vm, avz_vm_start, s, "start", &l);
        EXPECT_LOG(&l, 5, "S:starting S:running C:start:0 S:error X:error:VZErrorDomain:42");
        /* a forced stop is refused from error; a start boots afresh */
        OP(vm, avz_vm_stop, st, "stop", &l);
        EXPECT_LOG(&l, 1, "C:stop:4");
        /* timers re-armed on the next boot; a pause/resume does not restart them */
        OP(vm, avz_vm_start, s2, "start", &l);
        EXPECT_LOG(&l, 3, "S:starting S:running C:start:0");
        OP(vm, avz_vm_stop, st2, "stop", &l);
        EXPECT_LOG(&l, 3, "S:stopping S:stopped C:stop:0");
        sleep_ms(150);
        char buf[256];
        log_take(&l, buf, sizeof buf);
        CHECK(buf[0] == 0, "disarmed by stop: %s", buf);
    }
    destroy_vm(vm, &l);
    CFRelease(c);

    /* crash with a stop in flight */
    c = base_config();
    avz_sim_config_set_stop_delay_ms(c, 300);
    vm = make_vm(c, &l);
    {
        OP(vm, avz_vm_start, s, "start", &l);
        EXPECT_LOG(&l, 3, "S:starting S:running C:start:0");
        OP(vm, avz_vm_stop, st, "stop", &l);
        sleep_ms(30);
        avz_sim_vm_crash(vm, 3);
        EXPECT_LOG(&l, 4, "S:stopping S:error X:error:VZErrorDomain:3 C:stop:3");
        CHECK(strcmp(st.err.desc, "The virtual machine stopped with an error during the stop "
                                  "operation.") == 0, "%s", st.err.desc);
    }
    destroy_vm(vm, &l);
    CFRelease(c);

    /* serial output */
    c = base_config();
    int pipefd[2];
    CHECK(pipe(pipefd) == 0, "pipe");
    unlink(path_in("console.log"));
    CHECK(avz_config_add_serial_port_file(c, path_in("console.log"), true, NULL), "file");
    CHECK(avz_config_add_serial_port_fds(c, -1, pipefd[1], NULL), "fds");
    close(pipefd[1]);
    vm = make_vm(c, &l);
    CFRelease(c);
    {
        OP(vm, avz_vm_start, s, "start", &l);
        EXPECT_LOG(&l, 3, "S:starting S:running C:start:0");
        char buf[128] = {0};
        ssize_t n = read(pipefd[0], buf, sizeof buf - 1);
        CHECK(n > 0 && strcmp(buf, "applevz-sim: guest is running\n") == 0, "pipe: %s", buf);
        CHECK(read_file(path_in("console.log")) &&
                  strcmp(read_file(path_in("console.log")), "applevz-sim: guest is running\n") == 0,
              "file");
    }
    destroy_vm(vm, &l);
    /* the VM closed its duplicate: the pipe reports end of file now */
    char b;
    CHECK(read(pipefd[0], &b, 1) == 0, "pipe closed by VM and config");
    close(pipefd[0]);

    /* writing to a closed pipe must not kill the process */
    c = base_config();
    CHECK(pipe(pipefd) == 0, "pipe");
    avz_config_add_serial_port_fds(c, pipefd[0], pipefd[1], NULL);
    close(pipefd[0]);
    close(pipefd[1]);
    vm = make_vm(c, &l);
    CFRelease(c);
    {
        OP(vm, avz_vm_start, s, "start", &l);
        EXPECT_LOG(&l, 3, "S:starting S:running C:start:0");
    }
    destroy_vm(vm, &l);
}

static void test_fail_next(void) {
    CFErrorRef e = NULL;
    avz_config *c = base_config();
    logbuf l;
    avz_vm *vm = make_vm(c, &l);
    {
        avz_sim_vm_fail_next(vm, AVZ_SIM_OP_START, 1);
        OP(vm, avz_vm_start, s, "start", &l);
        EXPECT_LOG(&l, 3, "S:starting S:stopped C:start:1");
        OP(vm, avz_vm_start, s2, "start", &l);
        EXPECT_LOG(&l, 3, "S:starting S:running C:start:0");

        avz_sim_vm_fail_next(vm, AVZ_SIM_OP_PAUSE, 7);
        OP(vm, avz_vm_pause, p, "pause", &l);
        EXPECT_LOG(&l, 3, "S:pausing S:running C:pause:7");

        avz_sim_vm_fail_next(vm, AVZ_SIM_OP_REQUEST_STOP, 1);
        CHECK(!avz_vm_request_stop(vm, &e), "request stop fails");
        err_info i = take_errp(&e);
        CHECK_ERR(i, "VZErrorDomain", 1);

        avz_sim_vm_fail_next(vm, AVZ_SIM_OP_STOP, 1);
        OP(vm, avz_vm_stop, st, "stop", &l);
        EXPECT_LOG(&l, 3, "S:stopping S:running C:stop:1");

        OP(vm, avz_vm_pause, p2, "pause", &l);
        EXPECT_LOG(&l, 3, "S:pausing S:paused C:pause:0");
        avz_sim_vm_fail_next(vm, AVZ_SIM_OP_RESUME, 1);
        OP(vm, avz_vm_resume, r, "resume", &l);
        EXPECT_LOG(&l, 3, "S:resuming S:paused C:resume:1");

        avz_sim_vm_fail_next(vm, AVZ_SIM_OP_SAVE, 11);
        comp sv = {.log = &l, .name = "save"};
        avz_vm_save_state(vm, path_in("fail.state"), completion, &sv);
        EXPECT_LOG(&l, 3, "S:saving S:paused C:save:11");
        CHECK(!exists(path_in("fail.state")), "partial removed");

        comp sv2 = {.log = &l, .name = "save"};
        unlink(path_in("ok.state"));
        avz_vm_save_state(vm, path_in("ok.state"), completion, &sv2);
        EXPECT_LOG(&l, 3, "S:saving S:paused C:save:0");

        avz_sim_vm_fail_next(vm, AVZ_SIM_OP_STOP, 1);
        OP(vm, avz_vm_stop, st2, "stop", &l);
        EXPECT_LOG(&l, 3, "S:stopping S:paused C:stop:1");
        OP(vm, avz_vm_stop, st3, "stop", &l);
        EXPECT_LOG(&l, 3, "S:stopping S:stopped C:stop:0");

    }
    destroy_vm(vm, &l);
    for (int k = 0; k < 2; k++) {
        /* restore needs a VM object that never left the stopped state */
        vm = make_vm(c, &l);
        if (k == 0) avz_sim_vm_fail_next(vm, AVZ_SIM_OP_RESTORE, 12);
        comp rs = {.log = &l, .name = "restore"};
        avz_vm_restore_state(vm, path_in("ok.state"), completion, &rs);
        EXPECT_LOG(&l, 3, k == 0 ? "S:restoring S:stopped C:restore:12"
                                 : "S:restoring S:paused C:restore:0");
        destroy_vm(vm, &l);
    }
    /* a failed start from error goes back to error */
    vm = make_vm(c, &l);
    {
        OP(vm, avz_vm_start, s, "start", &l);
        EXPECT_LOG(&l, 3, "S:starting S:running C:start:0");
        avz_sim_vm_crash(vm, 1);
        EXPECT_LOG(&l, 2, "S:error X:error:VZErrorDomain:1");
        avz_sim_vm_fail_next(vm, AVZ_SIM_OP_START, 2);
        OP(vm, avz_vm_start, s2, "start", &l);
        EXPECT_LOG(&l, 3, "S:starting S:error C:start:2");
        OP(vm, avz_vm_start, s3, "start", &l);
        EXPECT_LOG(&l, 3, "S:starting S:running C:start:0");
    }
    destroy_vm(vm, &l);
    CFRelease(c);
}

static void test_lifetime(void) {
    int64_t base = avz_sim_live_objects();
    /* release with an operation in flight: the completion still runs, then the VM goes */
    avz_config *c = base_config();
    avz_sim_config_set_boot_delay_ms(c, 150);
    avz_sim_config_set_power_off_after_ms(c, 60000); /* timers do not keep it alive */
    logbuf l;
    avz_vm *vm = make_vm(c, &l);
    CFRelease(c);
    {
        OP(vm, avz_vm_start, s, "start", &l);
        CFRelease(vm);
        EXPECT_LOG(&l, 3, "S:starting S:running C:start:0");
        CHECK(wait_released(&l, 3000), "released after completion");
        CHECK(s.calls == 1 && l.events_after_release == 0, "once");
    }
    CHECK(avz_sim_wait_live_objects(base, 3000), "live back to base: %ld",
          (long)avz_sim_live_objects());

    /* last release from inside a completion (on the worker) */
    c = base_config();
    vm = make_vm(c, &l);
    CFRelease(c);
    {
        comp s = {.log = &l, .name = "start", .release_vm = vm};
        avz_vm_start(vm, completion, &s);
        EXPECT_LOG(&l, 3, "S:starting S:running C:start:0");
        CHECK(wait_released(&l, 3000), "released on worker");
    }
    CHECK(avz_sim_wait_live_objects(base, 3000), "live back to base");

    /* synchronous calls from inside an observer callback do not deadlock */
    c = base_config();
    vm = make_vm(c, &l);
    CFRelease(c);
    l.vm_for_reentry = vm;
    {
        OP(vm, avz_vm_start, s, "start", &l);
        EXPECT_LOG(&l, 3, "S:starting S:running C:start:0");
        CHECK(l.reentry_state == AVZ_STATE_RUNNING, "reentry state %d", l.reentry_state);
    }
    l.vm_for_reentry = NULL;
    destroy_vm(vm, &l);

    /* a NULL observer and NULL completion are allowed */
    c = base_config();
    vm = avz_vm_create(c, NULL, NULL, NULL, NULL);
    CFRelease(c);
    CHECK(vm != NULL, "null observer");
    avz_vm_start(vm, NULL, NULL);
    avz_vm_start(vm, NULL, NULL); /* refused, error released by the sim */
    CFRelease(vm);
    CHECK(avz_sim_wait_live_objects(base, 3000), "live back to base");

    /* release while paused / error */
    CHECK(!avz_sim_wait_live_objects(base + 1, 50), "wait times out");
    CHECK(avz_sim_live_objects() == base, "base");
}

/* Many threads hammer one VM; every completion runs exactly once. */
#define STRESS_THREADS 4
#define STRESS_OPS 150
typedef struct stress_comp {
    int calls;
    long code;
} stress_comp;
static pthread_mutex_t stress_mu = PTHREAD_MUTEX_INITIALIZER;
static int stress_done;
static void stress_completion(void *ctx, CFErrorRef error) {
    stress_comp *c = ctx;
    __atomic_add_fetch(&c->calls, 1, __ATOMIC_SEQ_CST);
    if (error) {
        c->code = CFErrorGetCode(error);
        CFRelease(error);
    }
    pthread_mutex_lock(&stress_mu);
    stress_done++;
    pthread_mutex_unlock(&stress_mu);
}
static void stress_observer(void *ctx, int32_t state, int32_t event, CFErrorRef error) {
    (void)state;
    (void)event;
    (void)error;
    __atomic_add_fetch((int *)ctx, 1, __ATOMIC_SEQ_CST);
}
typedef struct stress_arg {
    avz_vm *vm;
    stress_comp comps[STRESS_OPS];
    unsigned seed;
} stress_arg;
static void *stress_thread(void *p) {
    stress_arg *a = p;
    for (int i = 0; i < STRESS_OPS; i++) {
        int k = rand_r(&a->seed) % 10;
        stress_comp *c = &a->comps[i];
        switch (k) {
        case 0: avz_vm_start(a->vm, stress_completion, c); break;
        case 1: avz_vm_stop(a->vm, stress_completion, c); break;
        case 2: avz_vm_pause(a->vm, stress_completion, c); break;
        case 3: avz_vm_resume(a->vm, stress_completion, c); break;
        case 4: {
            char path[320];
            snprintf(path, sizeof path, "%s/stress-%p-%d.state", tmpdir, (void *)a, i);
            avz_vm_save_state(a->vm, path, stress_completion, c);
            break;
        }
        case 5: {
            char path[320];
            snprintf(path, sizeof path, "%s/stress-%p-%d.state", tmpdir, (void *)a, i - 1);
            avz_vm_restore_state(a->vm, path, stress_completion, c);
            break;
        }
        case 6: {
            CFErrorRef e = NULL;
            if (!avz_vm_request_stop(a->vm, &e)) CFRelease(e);
            c->calls = 1;
            pthread_mutex_lock(&stress_mu);
            stress_done++;
            pthread_mutex_unlock(&stress_mu);
            break;
        }
        case 7: avz_sim_vm_crash(a->vm, 1); goto nocomp;
        case 8: avz_sim_vm_guest_power_off(a->vm); goto nocomp;
        default:
            (void)avz_vm_state(a->vm);
            (void)avz_vm_can_stop(a->vm);
        nocomp:
            c->calls = 1;
            pthread_mutex_lock(&stress_mu);
            stress_done++;
            pthread_mutex_unlock(&stress_mu);
            break;
        }
        if (i % 16 == 0) sleep_ms(1);
    }
    return NULL;
}

static void test_stress(void) {
    int64_t base = avz_sim_live_objects();
    avz_config *c = base_config();
    avz_sim_config_set_boot_delay_ms(c, 1);
    avz_sim_config_set_operation_delay_ms(c, 1);
    avz_sim_config_set_stop_delay_ms(c, 1);
    int events = 0;
    avz_vm *vm = avz_vm_create(c, stress_observer, &events, NULL, NULL);
    CFRelease(c);
    static stress_arg args[STRESS_THREADS];
    pthread_t threads[STRESS_THREADS];
    for (int t = 0; t < STRESS_THREADS; t++) {
        memset(&args[t], 0, sizeof args[t]);
        args[t].vm = vm;
        args[t].seed = 1234u + (unsigned)t;
        pthread_create(&threads[t], NULL, stress_thread, &args[t]);
    }
    for (int t = 0; t < STRESS_THREADS; t++) pthread_join(threads[t], NULL);
    CFRelease(vm);
    CHECK(avz_sim_wait_live_objects(base, 10000), "stress: live back to base (%ld vs %ld)",
          (long)avz_sim_live_objects(), (long)base);
    pthread_mutex_lock(&stress_mu);
    int done = stress_done;
    pthread_mutex_unlock(&stress_mu);
    CHECK(done == STRESS_THREADS * STRESS_OPS, "all completed: %d", done);
    int bad = 0;
    for (int t = 0; t < STRESS_THREADS; t++)
        for (int i = 0; i < STRESS_OPS; i++)
            if (args[t].comps[i].calls != 1) bad++;
    CHECK(bad == 0, "exactly once: %d bad", bad);
    CHECK(__atomic_load_n(&events, __ATOMIC_SEQ_CST) > 0, "events seen");
}

static bool write_all_test(int fd, const void *data, size_t n) {
    const char *p = data;
    while (n > 0) {
        ssize_t k = write(fd, p, n);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return false;
        p += k;
        n -= (size_t)k;
    }
    return true;
}
/* The process's thread count (Linux: /proc/self/status), or -1. */
static int thread_count(void) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return -1;
    char line[256];
    int n = -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "Threads: %d", &n) == 1) break;
    fclose(f);
    return n;
}

/* Waits for exactly `expected` (n entries) in one VM's log, without the settling pause
 * EXPECT_LOG takes (the caller checks many VMs). */
static bool log_is(logbuf *l, int n, const char *expected) {
    bool got = wait_entries(l, n, 10000);
    char buf[8192];
    log_take(l, buf, sizeof buf);
    return got && strcmp(buf, expected) == 0;
}

/* Many VMs on the shared worker pool, with timers of every length in the timer heap at
 * once: each VM's events and completions still come in order and exactly once, and the
 * thread count does not grow with the number of VMs. */
#define POOL_VMS 300
static void test_pool(void) {
    int64_t base = avz_sim_live_objects();
    static logbuf logs[POOL_VMS];
    static comp starts[POOL_VMS], stops[POOL_VMS];
    avz_vm *vms[POOL_VMS];
    for (int i = 0; i < POOL_VMS; i++) {
        avz_config *c = base_config();
        avz_sim_config_set_boot_delay_ms(c, (uint32_t)(i * 7 % 40));
        avz_sim_config_set_stop_delay_ms(c, (uint32_t)(30 + i * 11 % 25));
        vms[i] = make_vm(c, &logs[i]);
        CFRelease(c);
    }
    int threads = thread_count();
    for (int i = 0; i < POOL_VMS; i++) {
        starts[i] = (comp){.log = &logs[i], .name = "start"};
        avz_vm_start(vms[i], completion, &starts[i]);
    }
    int bad = 0;
    for (int i = 0; i < POOL_VMS; i++)
        if (!log_is(&logs[i], 3, "S:starting S:running C:start:0")) bad++;
    CHECK(bad == 0, "pool: %d VMs started out of order", bad);
    int during = thread_count();
    CHECK(threads < 0 || (during <= threads && during < 64),
          "pool: %d threads with %d VMs (%d before they ran)", during, POOL_VMS, threads);
    for (int i = 0; i < POOL_VMS; i++) {
        stops[i] = (comp){.log = &logs[i], .name = "stop"};
        avz_vm_stop(vms[i], completion, &stops[i]);
        CHECK(avz_vm_state(vms[i]) == AVZ_STATE_STOPPING, "pool: state %d sees its stop",
              i);
    }
    bad = 0;
    for (int i = 0; i < POOL_VMS; i++)
        if (!log_is(&logs[i], 3, "S:stopping S:stopped C:stop:0")) bad++;
    CHECK(bad == 0, "pool: %d VMs stopped out of order", bad);
    int once = 0;
    for (int i = 0; i < POOL_VMS; i++) once += starts[i].calls == 1 && stops[i].calls == 1;
    CHECK(once == POOL_VMS, "pool: %d of %d completions exactly once", once, POOL_VMS);
    for (int i = 0; i < POOL_VMS; i++) CFRelease(vms[i]);
    int released = 0;
    for (int i = 0; i < POOL_VMS; i++) released += wait_released(&logs[i], 10000);
    CHECK(released == POOL_VMS, "pool: %d observers released", released);
    CHECK(avz_sim_wait_live_objects(base, 10000), "pool: live back to base (%ld vs %ld)",
          (long)avz_sim_live_objects(), (long)base);
    sleep_ms(20);
    int twice = 0, after = 0;
    for (int i = 0; i < POOL_VMS; i++) {
        twice += logs[i].released != 1;
        after += logs[i].events_after_release;
    }
    CHECK(twice == 0 && after == 0, "pool: released once (%d not), no late events (%d)",
          twice, after);
}

#include "device_tests.inc"
#include "contract_tests.inc"
#include "fidelity_tests.inc"

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/simtest/work-%d", (int)getpid());
    mkdir("/tmp/simtest", 0755);
    mkdir(tmpdir, 0755);
    snprintf(kernel, sizeof kernel, "%s/vmlinuz", tmpdir);
    write_file(kernel, "kernel");

    CHECK(avz_sim_live_objects() == 0, "starts at 0");
    test_cf();
    test_host();
    test_config();
    test_basic_lifecycle();
    test_refusals();
    test_stop_refusals();
    test_start_from_error();
    test_no_cancellation();
    test_crash_during_operation();
    test_power_off_only_while_running();
    test_save_restore();
    test_restore_into_used_vm();
    test_restore_fingerprint();
    test_network_disconnect();
    test_guest_data_file_modes();
    test_guest();
    test_fail_next();
    test_lifetime();
    test_stress();
    test_pool();
    test_storage();
    test_network();
    test_devices();
    test_shares();
    test_rosetta_and_host();
    test_console();
    test_balloon();
    test_vsock();
    test_savability_from_devices();
    test_restore_needs_savability();
    test_withheld_and_dropped_completions();
    test_late_notification();
    test_network_disconnect_while_starting();
    test_vsock_unanswered();
    CHECK(avz_sim_wait_live_objects(0, 3000), "live objects back to 0: %ld",
          (long)avz_sim_live_objects());

    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "cleanup failed\n");
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
