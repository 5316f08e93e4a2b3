/*
 * sim.c — the portable simulator of include/applevz.h: host queries, configurations,
 * and virtual machines with one worker thread each standing in for the VM's dispatch
 * queue. See README.md beside this file for what it models.
 */
#if !defined(_GNU_SOURCE) && !defined(_DEFAULT_SOURCE)
#define _DEFAULT_SOURCE 1
#endif

#include "internal.h"
#include "avz_sim.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#define VZ AVZ_SIM_VZ_DOMAIN
#define POSIX AVZ_SIM_POSIX_DOMAIN

#define MIB ((uint64_t)1024 * 1024)
#define MIN_MEMORY_SIZE (128 * MIB)
#define MACHINE_ID_SIZE 32
#define MACHINE_ID_MAGIC "AVZSIMID"
#define MACHINE_ID_MAGIC_SIZE 8
#define EFI_MAGIC "AVZSIM-EFI-VARIABLE-STORE 1\n"
#define STATE_MAGIC "AVZSIM-STATE 1\n"
#define SERIAL_RUNNING_LINE "applevz-sim: guest is running\n"
#define ERRBUF 128

/* ---------------------------------------------------------------------------------- */
/* Small helpers                                                                      */
/* ---------------------------------------------------------------------------------- */

#define REQUIRE(pointer, function)                                                       \
    do {                                                                                 \
        if ((pointer) == NULL) {                                                         \
            avz_sim_fatal("%s: NULL %s", function, #pointer);                            \
        }                                                                                \
    } while (0)

/* Grows a malloc'd array so that it can hold `needed` elements of `size` bytes. */
static void array_reserve(void **items, size_t *capacity, size_t needed, size_t size) {
    if (needed <= *capacity) {
        return;
    }
    size_t cap = *capacity == 0 ? 4 : *capacity * 2;
    while (cap < needed) {
        cap *= 2;
    }
    void *grown = realloc(*items, cap * size);
    if (grown == NULL) {
        avz_sim_fatal("out of memory");
    }
    *items = grown;
    *capacity = cap;
}

static int open_cloexec(const char *path, int flags, mode_t mode) {
    int fd;
    do {
        fd = open(path, flags | O_CLOEXEC, mode);
    } while (fd < 0 && errno == EINTR);
    return fd;
}

static bool write_all(int fd, const void *data, size_t size) {
    const char *p = data;
    while (size > 0) {
        ssize_t n = write(fd, p, size);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return false;
        }
        p += n;
        size -= (size_t)n;
    }
    return true;
}

/* Reads up to `size` bytes (fewer only at end of file). Returns the count or -1. */
static ssize_t read_full(int fd, void *data, size_t size) {
    char *p = data;
    size_t total = 0;
    while (total < size) {
        ssize_t n = read(fd, p + total, size - total);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -1;
        }
        if (n == 0) {
            break;
        }
        total += (size_t)n;
    }
    return (ssize_t)total;
}

static void close_fd(int fd) {
    if (fd >= 0) {
        close(fd);
    }
}

/* Random bytes from /dev/urandom; a splitmix64 stream seeded from the clock, the pid
 * and a counter if it cannot be read. */
static void fill_random(uint8_t *buffer, size_t size) {
    int fd = open_cloexec("/dev/urandom", O_RDONLY, 0);
    if (fd >= 0) {
        ssize_t n = read_full(fd, buffer, size);
        close(fd);
        if (n == (ssize_t)size) {
            return;
        }
    }
    static atomic_uint_fast64_t counter;
    uint64_t state = avz_sim_monotonic_ns() ^ ((uint64_t)getpid() << 32) ^
                     (uint64_t)(uintptr_t)buffer ^
                     atomic_fetch_add(&counter, 0x9E3779B97F4A7C15ull);
    for (size_t i = 0; i < size; i++) {
        state += 0x9E3779B97F4A7C15ull;
        uint64_t z = state;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
        buffer[i] = (uint8_t)z;
    }
}

/* ---------------------------------------------------------------------------------- */
/* Host                                                                               */
/* ---------------------------------------------------------------------------------- */

bool avz_is_supported(void) {
    return true;
}

bool avz_save_restore_supported(void) {
    return true;
}

void avz_get_limits(avz_limits *out) {
    REQUIRE(out, "avz_get_limits");
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    long pages = sysconf(_SC_PHYS_PAGES);
    long page_size = sysconf(_SC_PAGESIZE);
    uint64_t memory = pages > 0 && page_size > 0 ? (uint64_t)pages * (uint64_t)page_size : 0;
    memory -= memory % MIB;
    out->min_cpu_count = 1;
    out->max_cpu_count = cpus < 1                         ? 1
                         : (uint64_t)cpus > UINT32_MAX ? UINT32_MAX
                                                       : (uint32_t)cpus;
    out->min_memory_size = MIN_MEMORY_SIZE;
    out->max_memory_size = memory < MIN_MEMORY_SIZE ? MIN_MEMORY_SIZE : memory;
}

static void machine_identifier_fresh(uint8_t out[MACHINE_ID_SIZE]) {
    memcpy(out, MACHINE_ID_MAGIC, MACHINE_ID_MAGIC_SIZE);
    fill_random(out + MACHINE_ID_MAGIC_SIZE, MACHINE_ID_SIZE - MACHINE_ID_MAGIC_SIZE);
}

bool avz_machine_identifier_create(uint8_t *buffer, size_t capacity, size_t *length,
                                   CFErrorRef *error) {
    if (length != NULL) {
        *length = MACHINE_ID_SIZE;
    }
    if (buffer == NULL || capacity < MACHINE_ID_SIZE) {
        return avz_sim_fail(error, VZ, AVZ_ERROR_INTERNAL,
                            "Cannot store the machine identifier: it needs %d bytes and the "
                            "buffer has %zu.",
                            MACHINE_ID_SIZE, buffer == NULL ? (size_t)0 : capacity);
    }
    machine_identifier_fresh(buffer);
    return true;
}

/* ---------------------------------------------------------------------------------- */
/* Configuration                                                                      */
/* ---------------------------------------------------------------------------------- */

enum boot_kind { BOOT_NONE, BOOT_LINUX, BOOT_EFI };

typedef struct sim_knobs {
    uint32_t boot_delay_ms;
    uint32_t stop_delay_ms;
    uint32_t operation_delay_ms;
    bool ignores_stop_request;
    uint32_t power_off_after_ms;
    uint32_t crash_after_ms;
    int64_t crash_code;
    bool save_restore_unsupported;
    bool not_savable;
} sim_knobs;

typedef struct sim_disk {
    char *path;
    bool read_only;
    int32_t caching_mode;
    int32_t sync_mode;
} sim_disk;

typedef struct sim_serial {
    int read_fd;  /* -1: none */
    int write_fd; /* -1: none */
} sim_serial;

struct avz_config {
    avz_sim_object base;
    uint32_t cpu_count;
    uint64_t memory_size;

    enum boot_kind boot;
    char *kernel_path;
    char *initrd_path;
    char *command_line;
    char *efi_store_path;

    bool has_platform;
    uint8_t machine_identifier[MACHINE_ID_SIZE];

    sim_disk *disks;
    size_t disk_count, disk_capacity;
    uint8_t (*macs)[6];
    size_t mac_count, mac_capacity;
    sim_serial *serials;
    size_t serial_count, serial_capacity;

    sim_knobs knobs;
};

static void config_clear_boot_loader(avz_config *config) {
    free(config->kernel_path);
    free(config->initrd_path);
    free(config->command_line);
    free(config->efi_store_path);
    config->kernel_path = config->initrd_path = NULL;
    config->command_line = config->efi_store_path = NULL;
    config->boot = BOOT_NONE;
}

static void config_last_release(void *object) {
    avz_config *config = object;
    config_clear_boot_loader(config);
    for (size_t i = 0; i < config->disk_count; i++) {
        free(config->disks[i].path);
    }
    free(config->disks);
    free(config->macs);
    for (size_t i = 0; i < config->serial_count; i++) {
        close_fd(config->serials[i].read_fd);
        close_fd(config->serials[i].write_fd);
    }
    free(config->serials);
    avz_sim_object_free(&config->base);
}

static const avz_sim_class config_class = {"avz_config", config_last_release};

static avz_config *config_check(avz_config *config, const char *function) {
    return (avz_config *)avz_sim_object_check(config, &config_class, function);
}

avz_config *avz_config_create(void) {
    avz_config *config = avz_sim_alloc(sizeof *config);
    /* VZVirtualMachineConfiguration's defaults are the minimum allowed values. */
    config->cpu_count = 1;
    config->memory_size = MIN_MEMORY_SIZE;
    config->boot = BOOT_NONE;
    /* The default platform has a random identity, as a VZGenericPlatformConfiguration
     * made with -init: a state saved under it cannot be restored by a VM built from
     * another configuration object unless the caller persists an identifier. */
    machine_identifier_fresh(config->machine_identifier);
    avz_sim_object_init(&config->base, &config_class);
    return config;
}

void avz_config_set_cpu_count(avz_config *config, uint32_t cpu_count) {
    config_check(config, "avz_config_set_cpu_count")->cpu_count = cpu_count;
}

void avz_config_set_memory_size(avz_config *config, uint64_t memory_size) {
    config_check(config, "avz_config_set_memory_size")->memory_size = memory_size;
}

/* A boot file (kernel, initial RAM disk) must be a readable regular file. */
static bool check_boot_file(const char *what, const char *path, CFErrorRef *error) {
    char buf[ERRBUF];
    if (path == NULL || path[0] == '\0') {
        return avz_sim_fail(error, VZ, AVZ_ERROR_INVALID_CONFIGURATION,
                            "Invalid virtual machine configuration: no %s path was given.",
                            what);
    }
    int fd = open_cloexec(path, O_RDONLY | O_NONBLOCK, 0);
    if (fd < 0) {
        int e = errno;
        return avz_sim_fail(error, VZ, AVZ_ERROR_INVALID_CONFIGURATION,
                            "Invalid virtual machine configuration: the %s %s cannot be "
                            "read: %s.",
                            what, path, avz_sim_strerror(e, buf, sizeof buf));
    }
    struct stat st;
    int rc = fstat(fd, &st);
    int e = errno;
    close(fd);
    if (rc != 0) {
        return avz_sim_fail(error, VZ, AVZ_ERROR_INVALID_CONFIGURATION,
                            "Invalid virtual machine configuration: the %s %s cannot be "
                            "examined: %s.",
                            what, path, avz_sim_strerror(e, buf, sizeof buf));
    }
    if (!S_ISREG(st.st_mode)) {
        return avz_sim_fail(error, VZ, AVZ_ERROR_INVALID_CONFIGURATION,
                            "Invalid virtual machine configuration: the %s %s is not a "
                            "regular file.",
                            what, path);
    }
    return true;
}

bool avz_config_set_linux_boot_loader(avz_config *config, const char *kernel_path,
                                      const char *initrd_path, const char *command_line,
                                      CFErrorRef *error) {
    config_check(config, "avz_config_set_linux_boot_loader");
    if (!check_boot_file("kernel", kernel_path, error)) {
        return false;
    }
    if (initrd_path != NULL && !check_boot_file("initial RAM disk", initrd_path, error)) {
        return false;
    }
    config_clear_boot_loader(config);
    config->boot = BOOT_LINUX;
    config->kernel_path = avz_sim_strdup(kernel_path);
    config->initrd_path = avz_sim_strdup(initrd_path);
    config->command_line = avz_sim_strdup(command_line != NULL ? command_line : "");
    return true;
}

bool avz_config_set_efi_boot_loader(avz_config *config, const char *variable_store_path,
                                    bool create, CFErrorRef *error) {
    config_check(config, "avz_config_set_efi_boot_loader");
    char buf[ERRBUF];
    if (variable_store_path == NULL || variable_store_path[0] == '\0') {
        return avz_sim_fail(error, VZ, AVZ_ERROR_INVALID_CONFIGURATION,
                            "Invalid virtual machine configuration: no EFI variable store "
                            "path was given.");
    }
    const char *path = variable_store_path;
    if (create) {
        int fd = open_cloexec(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd < 0) {
            int e = errno;
            return avz_sim_fail(error, POSIX, e,
                                "Cannot create the EFI variable store %s: %s.", path,
                                avz_sim_strerror(e, buf, sizeof buf));
        }
        bool ok = write_all(fd, EFI_MAGIC, sizeof EFI_MAGIC - 1);
        int e = errno;
        close(fd);
        if (!ok) {
            return avz_sim_fail(error, POSIX, e,
                                "Cannot write the EFI variable store %s: %s.", path,
                                avz_sim_strerror(e, buf, sizeof buf));
        }
    } else {
        int fd = open_cloexec(path, O_RDONLY | O_NONBLOCK, 0);
        if (fd < 0) {
            int e = errno;
            return avz_sim_fail(error, POSIX, e, "Cannot open the EFI variable store %s: %s.",
                                path, avz_sim_strerror(e, buf, sizeof buf));
        }
        char head[sizeof EFI_MAGIC - 1];
        ssize_t n = read_full(fd, head, sizeof head);
        int e = errno;
        close(fd);
        if (n < 0) {
            return avz_sim_fail(error, POSIX, e, "Cannot read the EFI variable store %s: %s.",
                                path, avz_sim_strerror(e, buf, sizeof buf));
        }
        if ((size_t)n != sizeof head || memcmp(head, EFI_MAGIC, sizeof head) != 0) {
            return avz_sim_fail(error, VZ, AVZ_ERROR_INVALID_CONFIGURATION,
                                "Invalid virtual machine configuration: %s is not an EFI "
                                "variable store.",
                                path);
        }
    }
    config_clear_boot_loader(config);
    config->boot = BOOT_EFI;
    config->efi_store_path = avz_sim_strdup(path);
    return true;
}

bool avz_config_set_generic_platform(avz_config *config, const uint8_t *machine_identifier,
                                     size_t length, CFErrorRef *error) {
    config_check(config, "avz_config_set_generic_platform");
    if (machine_identifier == NULL) {
        machine_identifier_fresh(config->machine_identifier);
    } else if (length != MACHINE_ID_SIZE ||
               memcmp(machine_identifier, MACHINE_ID_MAGIC, MACHINE_ID_MAGIC_SIZE) != 0) {
        return avz_sim_fail(error, VZ, AVZ_ERROR_INVALID_CONFIGURATION,
                            "Invalid virtual machine configuration: the %zu bytes given are "
                            "not a machine identifier (expected %d bytes from "
                            "avz_machine_identifier_create).",
                            length, MACHINE_ID_SIZE);
    } else {
        memcpy(config->machine_identifier, machine_identifier, MACHINE_ID_SIZE);
    }
    config->has_platform = true;
    return true;
}

bool avz_config_add_virtio_block_device(avz_config *config, const char *path, bool read_only,
                                        int32_t caching_mode, int32_t sync_mode,
                                        CFErrorRef *error) {
    config_check(config, "avz_config_add_virtio_block_device");
    char buf[ERRBUF];
    if (caching_mode < AVZ_CACHING_AUTOMATIC || caching_mode > AVZ_CACHING_CACHED) {
        return avz_sim_fail(error, VZ, AVZ_ERROR_INVALID_CONFIGURATION,
                            "Invalid virtual machine configuration: disk caching mode %" PRId32
                            " is not automatic (0), uncached (1) or cached (2).",
                            caching_mode);
    }
    if (sync_mode < AVZ_SYNC_FULL || sync_mode > AVZ_SYNC_NONE) {
        return avz_sim_fail(error, VZ, AVZ_ERROR_INVALID_CONFIGURATION,
                            "Invalid virtual machine configuration: disk synchronization mode "
                            "%" PRId32 " is not full (1), fsync (2) or none (3).",
                            sync_mode);
    }
    if (path == NULL || path[0] == '\0') {
        return avz_sim_fail(error, POSIX, ENOENT,
                            "Cannot open the disk image: no path was given.");
    }
    struct stat st;
    if (stat(path, &st) != 0) {
        int e = errno;
        return avz_sim_fail(error, POSIX, e, "Cannot open the disk image %s: %s.", path,
                            avz_sim_strerror(e, buf, sizeof buf));
    }
    if (S_ISDIR(st.st_mode)) {
        return avz_sim_fail(error, VZ, AVZ_ERROR_INVALID_DISK_IMAGE,
                            "The disk image %s is a directory, not a disk image.", path);
    }
    int fd = open_cloexec(path, (read_only ? O_RDONLY : O_RDWR) | O_NONBLOCK, 0);
    if (fd < 0) {
        int e = errno;
        return avz_sim_fail(error, POSIX, e, "Cannot open the disk image %s for %s: %s.", path,
                            read_only ? "reading" : "reading and writing",
                            avz_sim_strerror(e, buf, sizeof buf));
    }
    close(fd);
    array_reserve((void **)&config->disks, &config->disk_capacity, config->disk_count + 1,
                  sizeof *config->disks);
    sim_disk *disk = &config->disks[config->disk_count++];
    disk->path = avz_sim_strdup(path);
    disk->read_only = read_only;
    disk->caching_mode = caching_mode;
    disk->sync_mode = sync_mode;
    return true;
}

static int hex_digit(char c) {
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

static bool parse_mac(const char *text, uint8_t mac[6]) {
    if (strlen(text) != 17) {
        return false;
    }
    for (int i = 0; i < 6; i++) {
        const char *p = text + i * 3;
        int hi = hex_digit(p[0]), lo = hex_digit(p[1]);
        if (hi < 0 || lo < 0 || (i < 5 && p[2] != ':')) {
            return false;
        }
        mac[i] = (uint8_t)(hi << 4 | lo);
    }
    return true;
}

bool avz_config_add_nat_network_device(avz_config *config, const char *mac_address,
                                       CFErrorRef *error) {
    config_check(config, "avz_config_add_nat_network_device");
    uint8_t mac[6];
    if (mac_address == NULL) {
        /* A random locally administered unicast address. */
        fill_random(mac, sizeof mac);
        mac[0] = (uint8_t)((mac[0] & 0xFC) | 0x02);
    } else if (!parse_mac(mac_address, mac)) {
        return avz_sim_fail(error, VZ, AVZ_ERROR_INVALID_CONFIGURATION,
                            "Invalid virtual machine configuration: \"%s\" is not a MAC address "
                            "(expected six two-digit hexadecimal octets separated by ':').",
                            mac_address);
    }
    array_reserve((void **)&config->macs, &config->mac_capacity, config->mac_count + 1,
                  sizeof *config->macs);
    memcpy(config->macs[config->mac_count++], mac, sizeof mac);
    return true;
}

static void config_add_serial(avz_config *config, int read_fd, int write_fd) {
    array_reserve((void **)&config->serials, &config->serial_capacity,
                  config->serial_count + 1, sizeof *config->serials);
    config->serials[config->serial_count].read_fd = read_fd;
    config->serials[config->serial_count].write_fd = write_fd;
    config->serial_count++;
}

bool avz_config_add_serial_port_file(avz_config *config, const char *path, bool append,
                                     CFErrorRef *error) {
    config_check(config, "avz_config_add_serial_port_file");
    char buf[ERRBUF];
    if (path == NULL || path[0] == '\0') {
        return avz_sim_fail(error, POSIX, ENOENT,
                            "Cannot open the serial port file: no path was given.");
    }
    int fd = open_cloexec(path, O_CREAT | O_WRONLY | (append ? O_APPEND : O_TRUNC), 0644);
    if (fd < 0) {
        int e = errno;
        return avz_sim_fail(error, POSIX, e, "Cannot open the serial port file %s: %s.", path,
                            avz_sim_strerror(e, buf, sizeof buf));
    }
    config_add_serial(config, -1, fd);
    return true;
}

static int dup_cloexec(int fd) {
    return fcntl(fd, F_DUPFD_CLOEXEC, 0);
}

bool avz_config_add_serial_port_fds(avz_config *config, int read_fd, int write_fd,
                                    CFErrorRef *error) {
    config_check(config, "avz_config_add_serial_port_fds");
    char buf[ERRBUF];
    int r = -1, w = -1;
    if (read_fd != -1 && (r = dup_cloexec(read_fd)) < 0) {
        int e = errno;
        return avz_sim_fail(error, POSIX, e,
                            "Cannot use file descriptor %d for reading from the serial port: "
                            "%s.",
                            read_fd, avz_sim_strerror(e, buf, sizeof buf));
    }
    if (write_fd != -1 && (w = dup_cloexec(write_fd)) < 0) {
        int e = errno;
        close_fd(r);
        return avz_sim_fail(error, POSIX, e,
                            "Cannot use file descriptor %d for writing to the serial port: "
                            "%s.",
                            write_fd, avz_sim_strerror(e, buf, sizeof buf));
    }
    config_add_serial(config, r, w);
    return true;
}

static bool config_validate(const avz_config *config, CFErrorRef *error) {
    avz_limits limits;
    avz_get_limits(&limits);
    if (config->boot == BOOT_NONE) {
        return avz_sim_fail(error, VZ, AVZ_ERROR_INVALID_CONFIGURATION,
                            "Invalid virtual machine configuration: no boot loader is set.");
    }
    if (config->cpu_count < limits.min_cpu_count) {
        return avz_sim_fail(error, VZ, AVZ_ERROR_INVALID_CONFIGURATION,
                            "Invalid virtual machine configuration: %" PRIu32
                            " CPUs is below the minimum of %" PRIu32 ".",
                            config->cpu_count, limits.min_cpu_count);
    }
    if (config->cpu_count > limits.max_cpu_count) {
        return avz_sim_fail(error, VZ, AVZ_ERROR_INVALID_CONFIGURATION,
                            "Invalid virtual machine configuration: %" PRIu32
                            " CPUs is above the maximum of %" PRIu32 " on this host.",
                            config->cpu_count, limits.max_cpu_count);
    }
    if (config->memory_size < limits.min_memory_size) {
        return avz_sim_fail(error, VZ, AVZ_ERROR_INVALID_CONFIGURATION,
                            "Invalid virtual machine configuration: the memory size of %" PRIu64
                            " bytes is below the minimum of %" PRIu64 " bytes.",
                            config->memory_size, limits.min_memory_size);
    }
    if (config->memory_size > limits.max_memory_size) {
        return avz_sim_fail(error, VZ, AVZ_ERROR_INVALID_CONFIGURATION,
                            "Invalid virtual machine configuration: the memory size of %" PRIu64
                            " bytes is above the maximum of %" PRIu64 " bytes on this host.",
                            config->memory_size, limits.max_memory_size);
    }
    if (config->memory_size % MIB != 0) {
        return avz_sim_fail(error, VZ, AVZ_ERROR_INVALID_CONFIGURATION,
                            "Invalid virtual machine configuration: the memory size of %" PRIu64
                            " bytes is not a multiple of 1 MiB (%" PRIu64 " bytes).",
                            config->memory_size, MIB);
    }
    return true;
}

bool avz_config_validate(avz_config *config, CFErrorRef *error) {
    return config_validate(config_check(config, "avz_config_validate"), error);
}

/* Returns +1. */
static CFErrorRef save_restore_unsupported_error(const char *what) {
    return avz_sim_error_create(VZ, AVZ_ERROR_NOT_SUPPORTED,
                                "Cannot %s: save/restore needs macOS 14 on Apple silicon, and "
                                "this host does not support it.",
                                what);
}

bool avz_config_validate_save_restore(avz_config *config, CFErrorRef *error) {
    config_check(config, "avz_config_validate_save_restore");
    if (config->knobs.save_restore_unsupported) {
        if (error != NULL) {
            *error = save_restore_unsupported_error("save or restore virtual machine state");
        }
        return false;
    }
    if (config->knobs.not_savable) {
        return avz_sim_fail(error, VZ, AVZ_ERROR_INVALID_CONFIGURATION,
                            "Invalid virtual machine configuration: this configuration cannot "
                            "be saved (it has a device whose state cannot be saved).");
    }
    return true;
}

/* FNV-1a 64 over what a saved state is bound to. Strings are hashed with their NUL so
 * that ("ab", "c") and ("a", "bc") differ; a missing string hashes as one 0xFF byte. */
static uint64_t fnv_bytes(uint64_t h, const void *data, size_t size) {
    const uint8_t *p = data;
    for (size_t i = 0; i < size; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

static uint64_t fnv_u64(uint64_t h, uint64_t value) {
    uint8_t bytes[8];
    for (int i = 0; i < 8; i++) {
        bytes[i] = (uint8_t)(value >> (8 * i));
    }
    return fnv_bytes(h, bytes, sizeof bytes);
}

static uint64_t fnv_string(uint64_t h, const char *s) {
    if (s == NULL) {
        uint8_t none = 0xFF;
        return fnv_bytes(h, &none, 1);
    }
    return fnv_bytes(h, s, strlen(s) + 1);
}

static uint64_t config_fingerprint(const avz_config *config) {
    uint64_t h = 0xcbf29ce484222325ull;
    h = fnv_u64(h, config->cpu_count);
    h = fnv_u64(h, config->memory_size);
    h = fnv_u64(h, (uint64_t)config->boot);
    h = fnv_string(h, config->kernel_path);
    h = fnv_string(h, config->initrd_path);
    h = fnv_string(h, config->efi_store_path);
    h = fnv_u64(h, config->disk_count);
    for (size_t i = 0; i < config->disk_count; i++) {
        h = fnv_string(h, config->disks[i].path);
    }
    h = fnv_bytes(h, config->machine_identifier, MACHINE_ID_SIZE);
    return h;
}

/* Knobs. */

void avz_sim_config_set_boot_delay_ms(avz_config *config, uint32_t ms) {
    config_check(config, "avz_sim_config_set_boot_delay_ms")->knobs.boot_delay_ms = ms;
}

void avz_sim_config_set_stop_delay_ms(avz_config *config, uint32_t ms) {
    config_check(config, "avz_sim_config_set_stop_delay_ms")->knobs.stop_delay_ms = ms;
}

void avz_sim_config_set_operation_delay_ms(avz_config *config, uint32_t ms) {
    config_check(config, "avz_sim_config_set_operation_delay_ms")->knobs.operation_delay_ms = ms;
}

void avz_sim_config_set_ignores_stop_request(avz_config *config, bool ignores) {
    config_check(config, "avz_sim_config_set_ignores_stop_request")->knobs.ignores_stop_request =
        ignores;
}

void avz_sim_config_set_power_off_after_ms(avz_config *config, uint32_t ms) {
    config_check(config, "avz_sim_config_set_power_off_after_ms")->knobs.power_off_after_ms = ms;
}

void avz_sim_config_set_crash_after_ms(avz_config *config, uint32_t ms, int64_t code) {
    avz_config *c = config_check(config, "avz_sim_config_set_crash_after_ms");
    c->knobs.crash_after_ms = ms;
    c->knobs.crash_code = code;
}

void avz_sim_config_set_save_restore_unsupported(avz_config *config, bool unsupported) {
    config_check(config, "avz_sim_config_set_save_restore_unsupported")
        ->knobs.save_restore_unsupported = unsupported;
}

void avz_sim_config_set_not_savable(avz_config *config, bool not_savable) {
    config_check(config, "avz_sim_config_set_not_savable")->knobs.not_savable = not_savable;
}

/* ---------------------------------------------------------------------------------- */
/* Virtual machine: data                                                              */
/* ---------------------------------------------------------------------------------- */

#define OP_KINDS 7 /* AVZ_SIM_OP_START ... AVZ_SIM_OP_REQUEST_STOP */

enum task_kind {
    TASK_OPERATION, /* an asynchronous operation; holds one VM reference */
    TASK_SYNC,      /* a synchronous call waiting on sync_done */
    TASK_POWER_OFF, /* avz_sim_vm_guest_power_off */
    TASK_CRASH,     /* avz_sim_vm_crash */
    TASK_FAIL_NEXT, /* avz_sim_vm_fail_next */
    TASK_SET_OPERATION_DELAY /* avz_sim_vm_set_operation_delay_ms */
};

enum timer_kind {
    TIMER_OPERATION,      /* an operation's transitional state ends */
    TIMER_GUEST_POWER_OFF, /* power_off_after */
    TIMER_GUEST_CRASH,    /* crash_after */
    TIMER_STOP_REQUEST    /* the guest acts on a stop request */
};

enum sync_kind { SYNC_STATE, SYNC_REQUEST_STOP };

typedef struct sync_call {
    enum sync_kind kind;
    bool done;
    int32_t state;
    bool ok;
    CFErrorRef error;
} sync_call;

typedef struct sim_task {
    struct sim_task *next;
    enum task_kind kind;
    int32_t op;
    avz_completion_fn completion;
    void *context;
    char *path;
    int64_t code;
    sync_call *sync;
} sim_task;

typedef struct sim_timer {
    struct sim_timer *next;
    uint64_t id;
    uint64_t deadline_ns;
    enum timer_kind kind;
} sim_timer;

/* An accepted asynchronous operation. It owns one VM reference, released after its
 * completion ran. */
typedef struct sim_op {
    int32_t kind;
    avz_completion_fn completion;
    void *context;
    char *path;
    int32_t origin;      /* the state before the operation */
    int32_t rollback;    /* stop: the state an injected failure returns to */
    uint64_t timer;      /* its TIMER_OPERATION */
    bool inject;         /* avz_sim_vm_fail_next applies */
    int64_t inject_code;
    int save_fd;         /* save: the partial file being written */
} sim_op;

struct avz_vm {
    avz_sim_object base;

    /* Immutable after creation. */
    sim_knobs knobs;
    uint64_t fingerprint;
    avz_state_observer_fn observer;
    void *observer_context;
    avz_context_release_fn observer_release;
    int *fds; /* every descriptor the VM owns */
    size_t fd_count;
    int *output_fds; /* the serial outputs among them */
    size_t output_count;

    /* Guarded by mutex. */
    pthread_mutex_t mutex;
    pthread_cond_t wake;      /* the worker waits on it */
    pthread_cond_t sync_done; /* synchronous callers wait on it */
    sim_task *tasks, *tasks_tail;
    sim_timer *timers; /* by deadline, then id */
    uint64_t next_timer_id;
    bool dying;

    int32_t state;
    sim_op *op;      /* the operation in flight, other than a forced stop */
    sim_op *stop_op; /* the forced stop in flight */
    bool fail_next[OP_KINDS];
    int64_t fail_code[OP_KINDS];
    bool guest_booted; /* reached Running since it was last stopped */
    uint64_t power_off_timer, crash_timer, stop_request_timer;
};

static void vm_last_release(void *object);
static const avz_sim_class vm_class = {"avz_vm", vm_last_release};

/* The VM whose worker is the current thread, if any. */
static _Thread_local avz_vm *current_worker_vm;

static avz_vm *vm_check(avz_vm *vm, const char *function) {
    return (avz_vm *)avz_sim_object_check(vm, &vm_class, function);
}

static const char *op_name(int32_t kind) {
    switch (kind) {
    case AVZ_SIM_OP_START: return "start";
    case AVZ_SIM_OP_STOP: return "stop";
    case AVZ_SIM_OP_PAUSE: return "pause";
    case AVZ_SIM_OP_RESUME: return "resume";
    case AVZ_SIM_OP_SAVE: return "save";
    case AVZ_SIM_OP_RESTORE: return "restore";
    case AVZ_SIM_OP_REQUEST_STOP: return "stop request";
    default: return "unknown";
    }
}

/* "it is %s" */
static const char *state_phrase(int32_t state) {
    switch (state) {
    case AVZ_STATE_STOPPED: return "stopped";
    case AVZ_STATE_RUNNING: return "running";
    case AVZ_STATE_PAUSED: return "paused";
    case AVZ_STATE_ERROR: return "in the error state";
    case AVZ_STATE_STARTING: return "starting";
    case AVZ_STATE_PAUSING: return "pausing";
    case AVZ_STATE_RESUMING: return "resuming";
    case AVZ_STATE_STOPPING: return "stopping";
    case AVZ_STATE_SAVING: return "saving its state";
    case AVZ_STATE_RESTORING: return "restoring its state";
    default: return "in an unknown state";
    }
}

/* ---------------------------------------------------------------------------------- */
/* Outbox: callbacks collected under the mutex, delivered after it is released        */
/* ---------------------------------------------------------------------------------- */

enum outbox_kind { OUT_OBSERVER, OUT_COMPLETION };

typedef struct outbox_item {
    enum outbox_kind kind;
    int32_t state;
    int32_t event;
    CFErrorRef error; /* observer: released after the call; completion: handed over */
    avz_completion_fn completion;
    void *context;
} outbox_item;

#define OUTBOX_CAPACITY 16

typedef struct outbox {
    outbox_item items[OUTBOX_CAPACITY];
    size_t count;
    unsigned vm_releases; /* operation references to drop after every callback */
    bool serial_line;     /* write the "guest is running" line */
} outbox;

static outbox_item *outbox_push(outbox *out) {
    if (out->count == OUTBOX_CAPACITY) {
        avz_sim_fatal("internal error: outbox overflow");
    }
    outbox_item *item = &out->items[out->count++];
    memset(item, 0, sizeof *item);
    return item;
}

static bool vm_is_dying(avz_vm *vm) {
    pthread_mutex_lock(&vm->mutex);
    bool dying = vm->dying;
    pthread_mutex_unlock(&vm->mutex);
    return dying;
}

/* Runs on the worker without the mutex: every callback in order, then the operation
 * references. The VM stays allocated throughout: only the worker frees it, later.
 * Once the last reference is gone, observer events are dropped (completions cannot be
 * pending then: each holds a reference until it ran). */
static void outbox_deliver(avz_vm *vm, outbox *out) {
    if (out->serial_line) {
        for (size_t i = 0; i < vm->output_count; i++) {
            (void)write_all(vm->output_fds[i], SERIAL_RUNNING_LINE,
                            sizeof SERIAL_RUNNING_LINE - 1);
        }
    }
    for (size_t i = 0; i < out->count; i++) {
        outbox_item *item = &out->items[i];
        if (item->kind == OUT_OBSERVER) {
            if (vm->observer != NULL && !vm_is_dying(vm)) {
                vm->observer(vm->observer_context, item->state, item->event, item->error);
            }
            if (item->error != NULL) {
                CFRelease(item->error);
            }
        } else if (item->completion != NULL) {
            item->completion(item->context, item->error);
        } else if (item->error != NULL) {
            CFRelease(item->error);
        }
    }
    for (unsigned i = 0; i < out->vm_releases; i++) {
        CFRelease(vm);
    }
    out->count = 0;
    out->vm_releases = 0;
    out->serial_line = false;
}

/* ---------------------------------------------------------------------------------- */
/* Virtual machine: timers and state (worker thread, mutex held)                      */
/* ---------------------------------------------------------------------------------- */

static uint64_t timer_add(avz_vm *vm, uint32_t delay_ms, enum timer_kind kind) {
    sim_timer *timer = avz_sim_alloc(sizeof *timer);
    timer->id = ++vm->next_timer_id;
    timer->deadline_ns = avz_sim_monotonic_ns() + (uint64_t)delay_ms * 1000000ull;
    timer->kind = kind;
    sim_timer **link = &vm->timers;
    while (*link != NULL && (*link)->deadline_ns <= timer->deadline_ns) {
        link = &(*link)->next;
    }
    timer->next = *link;
    *link = timer;
    /* The worker itself arms timers, so it recomputes its wait before sleeping. */
    return timer->id;
}

/* Removes the timer *id (if armed) and clears *id. */
static void timer_cancel(avz_vm *vm, uint64_t *id) {
    if (*id == 0) {
        return;
    }
    for (sim_timer **link = &vm->timers; *link != NULL; link = &(*link)->next) {
        if ((*link)->id == *id) {
            sim_timer *timer = *link;
            *link = timer->next;
            free(timer);
            break;
        }
    }
    *id = 0;
}

static void set_state(avz_vm *vm, outbox *out, int32_t state) {
    if (vm->state == state) {
        return;
    }
    vm->state = state;
    outbox_item *item = outbox_push(out);
    item->kind = OUT_OBSERVER;
    item->state = state;
    item->event = AVZ_EVENT_STATE_CHANGED;
}

/* A delegate event, reported with the current state; `error` (+1) is released after the
 * observer returns. */
static void push_event(avz_vm *vm, outbox *out, int32_t event, CFErrorRef error) {
    outbox_item *item = outbox_push(out);
    item->kind = OUT_OBSERVER;
    item->state = vm->state;
    item->event = event;
    item->error = error;
}

static void op_free(sim_op *op) {
    close_fd(op->save_fd);
    free(op->path);
    free(op);
}

/* Queues the operation's completion with `error` (+1 or NULL) and the release of its VM
 * reference, and frees the operation. */
static void op_complete(outbox *out, sim_op *op, CFErrorRef error) {
    outbox_item *item = outbox_push(out);
    item->kind = OUT_COMPLETION;
    item->completion = op->completion;
    item->context = op->context;
    item->error = error;
    out->vm_releases++;
    op_free(op);
}

static void op_refuse(outbox *out, sim_op *op, CFIndex code, const char *fmt, ...)
    AVZ_SIM_PRINTF(4, 5);
static void op_refuse(outbox *out, sim_op *op, CFIndex code, const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    CFErrorRef error = avz_sim_error_createv(VZ, code, fmt, args);
    va_end(args);
    op_complete(out, op, error);
}

static CFErrorRef injected_error(const sim_op *op) {
    return avz_sim_error_create(VZ, (CFIndex)op->inject_code,
                                "The %s operation failed (failure injected by the simulator, "
                                "code %" PRId64 ").",
                                op_name(op->kind), op->inject_code);
}

/* Removes a save's partial file. */
static void save_discard(sim_op *op) {
    if (op->save_fd >= 0) {
        close(op->save_fd);
        op->save_fd = -1;
        unlink(op->path);
    }
}

/* Completes the operation in flight (and, with `include_stop`, a forced stop in flight)
 * with OperationCancelled. */
static void cancel_in_flight(avz_vm *vm, outbox *out, bool include_stop, const char *why) {
    sim_op *ops[2] = {vm->op, include_stop ? vm->stop_op : NULL};
    vm->op = NULL;
    if (include_stop) {
        vm->stop_op = NULL;
    }
    for (int i = 0; i < 2; i++) {
        sim_op *op = ops[i];
        if (op == NULL) {
            continue;
        }
        timer_cancel(vm, &op->timer);
        save_discard(op);
        CFErrorRef error = avz_sim_error_create(
            VZ, AVZ_ERROR_OPERATION_CANCELLED, "The %s operation was cancelled because %s.",
            op_name(op->kind), why);
        op_complete(out, op, error);
    }
}

static void arm_guest_timers(avz_vm *vm) {
    if (vm->knobs.power_off_after_ms > 0 && vm->power_off_timer == 0) {
        vm->power_off_timer = timer_add(vm, vm->knobs.power_off_after_ms, TIMER_GUEST_POWER_OFF);
    }
    if (vm->knobs.crash_after_ms > 0 && vm->crash_timer == 0) {
        vm->crash_timer = timer_add(vm, vm->knobs.crash_after_ms, TIMER_GUEST_CRASH);
    }
}

static void disarm_guest_timers(avz_vm *vm) {
    timer_cancel(vm, &vm->power_off_timer);
    timer_cancel(vm, &vm->crash_timer);
    timer_cancel(vm, &vm->stop_request_timer);
}

/* The VM reached Running. The guest "boots" the first time after it was stopped: its
 * timers start and it says so on its serial outputs. */
static void enter_running(avz_vm *vm, outbox *out) {
    set_state(vm, out, AVZ_STATE_RUNNING);
    if (!vm->guest_booted) {
        vm->guest_booted = true;
        arm_guest_timers(vm);
        out->serial_line = true;
    }
}

/* The VM stopped (or failed): the guest is gone. */
static void guest_gone(avz_vm *vm) {
    disarm_guest_timers(vm);
    vm->guest_booted = false;
}

static void guest_power_off(avz_vm *vm, outbox *out) {
    if (vm->state != AVZ_STATE_RUNNING && vm->state != AVZ_STATE_PAUSED) {
        return;
    }
    cancel_in_flight(vm, out, false, "the guest powered off");
    guest_gone(vm);
    set_state(vm, out, AVZ_STATE_STOPPED);
    push_event(vm, out, AVZ_EVENT_GUEST_STOPPED, NULL);
}

static void guest_crash(avz_vm *vm, outbox *out, int64_t code) {
    if (vm->state == AVZ_STATE_STOPPED || vm->state == AVZ_STATE_ERROR) {
        return;
    }
    cancel_in_flight(vm, out, true, "the virtual machine stopped with an error");
    guest_gone(vm);
    set_state(vm, out, AVZ_STATE_ERROR);
    push_event(vm, out, AVZ_EVENT_STOPPED_WITH_ERROR,
               avz_sim_error_create(VZ, (CFIndex)code,
                                    "The virtual machine stopped unexpectedly."));
}

/* A pending avz_sim_vm_fail_next applies to `op`, which was just accepted. */
static void take_injection(avz_vm *vm, sim_op *op) {
    if (vm->fail_next[op->kind]) {
        vm->fail_next[op->kind] = false;
        op->inject = true;
        op->inject_code = vm->fail_code[op->kind];
    }
}

/* Accepts `op`: it becomes the operation in flight and its transitional state lasts
 * `delay_ms`. */
static void op_begin(avz_vm *vm, outbox *out, sim_op *op, int32_t transitional,
                     uint32_t delay_ms) {
    op->origin = vm->state;
    take_injection(vm, op);
    if (op->kind == AVZ_SIM_OP_STOP) {
        vm->stop_op = op;
    } else {
        vm->op = op;
    }
    set_state(vm, out, transitional);
    op->timer = timer_add(vm, delay_ms, TIMER_OPERATION);
}

/* Save: checks the configuration and creates the state file exclusively (it stays a
 * partial file until the save finishes). Returns NULL or why it cannot save (+1). */
static CFErrorRef save_prepare(avz_vm *vm, sim_op *op) {
    char buf[ERRBUF];
    if (vm->knobs.not_savable) {
        return avz_sim_error_create(VZ, AVZ_ERROR_SAVE,
                                    "Cannot save the virtual machine state: this configuration "
                                    "cannot be saved (it has a device whose state cannot be "
                                    "saved).");
    }
    int fd = open_cloexec(op->path, O_WRONLY | O_CREAT | O_EXCL, 0644);
    if (fd >= 0) {
        op->save_fd = fd;
        return NULL;
    }
    int e = errno;
    const char *reason;
    if (e == EEXIST) {
        reason = "the file already exists (save to a new path)";
    } else if (e == ENOENT || e == ENOTDIR) {
        reason = "its directory does not exist";
    } else if (e == EACCES || e == EPERM || e == EROFS) {
        reason = "its directory is not writable";
    } else {
        reason = avz_sim_strerror(e, buf, sizeof buf);
    }
    return avz_sim_error_create(VZ, AVZ_ERROR_SAVE,
                                "Cannot save the virtual machine state to %s: %s.", op->path,
                                reason);
}

/* Save: write the state file. Returns NULL or the failure (+1). */
static CFErrorRef save_finish(avz_vm *vm, sim_op *op) {
    char buf[ERRBUF];
    char content[64];
    int n = snprintf(content, sizeof content, STATE_MAGIC "config=%016" PRIx64 "\n",
                     vm->fingerprint);
    bool ok = write_all(op->save_fd, content, (size_t)n) && fsync(op->save_fd) == 0;
    int e = errno;
    if (!ok) {
        save_discard(op);
        return avz_sim_error_create(VZ, AVZ_ERROR_SAVE,
                                    "Cannot save the virtual machine state to %s: %s.",
                                    op->path, avz_sim_strerror(e, buf, sizeof buf));
    }
    int fd = op->save_fd;
    op->save_fd = -1;
    if (close(fd) != 0) {
        e = errno;
        unlink(op->path);
        return avz_sim_error_create(VZ, AVZ_ERROR_SAVE,
                                    "Cannot save the virtual machine state to %s: %s.",
                                    op->path, avz_sim_strerror(e, buf, sizeof buf));
    }
    return NULL;
}

/* Restore: read and check the state file. Returns NULL or the failure (+1). The file is
 * only read. */
static CFErrorRef restore_check(avz_vm *vm, const char *path) {
    char buf[ERRBUF];
    const char *prefix = "Cannot restore the virtual machine state from";
    int fd = open_cloexec(path, O_RDONLY | O_NONBLOCK, 0);
    if (fd < 0) {
        int e = errno;
        if (e == ENOENT) {
            return avz_sim_error_create(VZ, AVZ_ERROR_RESTORE,
                                        "%s %s: the file does not exist.", prefix, path);
        }
        return avz_sim_error_create(VZ, AVZ_ERROR_RESTORE, "%s %s: %s.", prefix, path,
                                    avz_sim_strerror(e, buf, sizeof buf));
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return avz_sim_error_create(VZ, AVZ_ERROR_RESTORE, "%s %s: it is not a regular file.",
                                    prefix, path);
    }
    char content[256];
    ssize_t n = read_full(fd, content, sizeof content - 1);
    int e = errno;
    close(fd);
    if (n < 0) {
        return avz_sim_error_create(VZ, AVZ_ERROR_RESTORE, "%s %s: %s.", prefix, path,
                                    avz_sim_strerror(e, buf, sizeof buf));
    }
    content[n] = '\0';
    size_t magic = sizeof STATE_MAGIC - 1;
    if ((size_t)n < magic || memcmp(content, STATE_MAGIC, magic) != 0) {
        return avz_sim_error_create(VZ, AVZ_ERROR_RESTORE,
                                    "%s %s: the file is not a saved virtual machine state.",
                                    prefix, path);
    }
    const char *line = content + magic;
    uint64_t fingerprint = 0;
    bool well_formed = strncmp(line, "config=", 7) == 0 && strlen(line) == 7 + 16 + 1 &&
                       line[7 + 16] == '\n';
    for (int i = 0; well_formed && i < 16; i++) {
        int d = hex_digit(line[7 + i]);
        if (d < 0) {
            well_formed = false;
        }
        fingerprint = fingerprint << 4 | (uint64_t)(d < 0 ? 0 : d);
    }
    if (!well_formed) {
        return avz_sim_error_create(VZ, AVZ_ERROR_RESTORE, "%s %s: the saved state is damaged.",
                                    prefix, path);
    }
    if (fingerprint != vm->fingerprint) {
        return avz_sim_error_create(VZ, AVZ_ERROR_RESTORE,
                                    "%s %s: the saved state was made by a different "
                                    "configuration.",
                                    prefix, path);
    }
    return NULL;
}

/* ---------------------------------------------------------------------------------- */
/* Virtual machine: the worker's handlers (mutex held)                                */
/* ---------------------------------------------------------------------------------- */

/* A new asynchronous operation (it owns the task's VM reference). */
static void handle_operation(avz_vm *vm, outbox *out, sim_op *op) {
    int32_t state = vm->state;
    const char *it = state_phrase(state);
    const char *busy = vm->op != NULL ? op_name(vm->op->kind) : NULL;
    const sim_knobs *knobs = &vm->knobs;

    switch (op->kind) {
    case AVZ_SIM_OP_START:
        if (state != AVZ_STATE_STOPPED) {
            op_refuse(out, op, AVZ_ERROR_INVALID_STATE_TRANSITION,
                      "Cannot start the virtual machine: it is %s, not stopped.", it);
        } else if (busy != NULL) {
            break;
        } else {
            op_begin(vm, out, op, AVZ_STATE_STARTING, knobs->boot_delay_ms);
        }
        return;

    case AVZ_SIM_OP_STOP:
        if (state == AVZ_STATE_STOPPED || state == AVZ_STATE_STOPPING) {
            op_refuse(out, op, AVZ_ERROR_INVALID_STATE_TRANSITION,
                      "Cannot stop the virtual machine: it is already %s.", it);
            return;
        }
        /* An injected failure returns to where the VM was before, or to where the
         * cancelled operation started from. */
        op->rollback = vm->op != NULL ? vm->op->origin : state;
        cancel_in_flight(vm, out, false, "the virtual machine is being stopped");
        disarm_guest_timers(vm);
        op_begin(vm, out, op, AVZ_STATE_STOPPING, knobs->stop_delay_ms);
        return;

    case AVZ_SIM_OP_PAUSE:
        if (state != AVZ_STATE_RUNNING) {
            op_refuse(out, op, AVZ_ERROR_INVALID_STATE_TRANSITION,
                      "Cannot pause the virtual machine: it is %s, not running.", it);
        } else if (busy != NULL) {
            break;
        } else {
            op_begin(vm, out, op, AVZ_STATE_PAUSING, knobs->operation_delay_ms);
        }
        return;

    case AVZ_SIM_OP_RESUME:
        if (state != AVZ_STATE_PAUSED) {
            op_refuse(out, op, AVZ_ERROR_INVALID_STATE_TRANSITION,
                      "Cannot resume the virtual machine: it is %s, not paused.", it);
        } else if (busy != NULL) {
            break;
        } else {
            op_begin(vm, out, op, AVZ_STATE_RESUMING, knobs->operation_delay_ms);
        }
        return;

    case AVZ_SIM_OP_SAVE:
        if (knobs->save_restore_unsupported) {
            op_complete(out, op,
                        save_restore_unsupported_error("save the virtual machine state"));
        } else if (state != AVZ_STATE_PAUSED) {
            /* The framework documents code 3 (not 4) for a save from the wrong state. */
            op_refuse(out, op, AVZ_ERROR_INVALID_STATE,
                      "Cannot save the virtual machine state: it is %s, not paused.", it);
        } else if (busy != NULL) {
            break;
        } else {
            CFErrorRef error = save_prepare(vm, op);
            if (error != NULL) {
                op_complete(out, op, error); /* no state change */
            } else {
                op_begin(vm, out, op, AVZ_STATE_SAVING, knobs->operation_delay_ms);
            }
        }
        return;

    case AVZ_SIM_OP_RESTORE:
        if (knobs->save_restore_unsupported) {
            op_complete(out, op,
                        save_restore_unsupported_error("restore the virtual machine state"));
        } else if (state != AVZ_STATE_STOPPED) {
            op_refuse(out, op, AVZ_ERROR_INVALID_STATE_TRANSITION,
                      "Cannot restore the virtual machine state: it is %s, not stopped.", it);
        } else if (busy != NULL) {
            break;
        } else {
            op_begin(vm, out, op, AVZ_STATE_RESTORING, knobs->operation_delay_ms);
        }
        return;

    default:
        avz_sim_fatal("internal error: operation kind %" PRId32, op->kind);
    }
    /* Only reached when another operation is still in flight. */
    op_refuse(out, op, AVZ_ERROR_INVALID_STATE_TRANSITION,
              "Cannot %s the virtual machine: the %s operation is still in progress.",
              op_name(op->kind), busy);
}

/* An operation's transitional state ended. */
static void finish_operation(avz_vm *vm, outbox *out, sim_op *op) {
    if (op == vm->stop_op) {
        vm->stop_op = NULL;
    } else {
        vm->op = NULL;
    }
    op->timer = 0;
    CFErrorRef error = op->inject ? injected_error(op) : NULL;

    switch (op->kind) {
    case AVZ_SIM_OP_START:
        if (error != NULL) {
            set_state(vm, out, op->origin);
        } else {
            enter_running(vm, out);
        }
        break;

    case AVZ_SIM_OP_STOP:
        if (error != NULL) {
            set_state(vm, out, op->rollback);
            if (vm->guest_booted &&
                (op->rollback == AVZ_STATE_RUNNING || op->rollback == AVZ_STATE_PAUSED)) {
                arm_guest_timers(vm);
            }
        } else {
            guest_gone(vm);
            set_state(vm, out, AVZ_STATE_STOPPED);
        }
        break;

    case AVZ_SIM_OP_PAUSE:
        set_state(vm, out, error != NULL ? op->origin : AVZ_STATE_PAUSED);
        break;

    case AVZ_SIM_OP_RESUME:
        if (error != NULL) {
            set_state(vm, out, op->origin);
        } else {
            enter_running(vm, out);
        }
        break;

    case AVZ_SIM_OP_SAVE:
        if (error != NULL) {
            save_discard(op); /* injected failure: remove the partial file */
        } else {
            error = save_finish(vm, op);
        }
        set_state(vm, out, AVZ_STATE_PAUSED);
        break;

    case AVZ_SIM_OP_RESTORE:
        if (error == NULL) {
            error = restore_check(vm, op->path);
        }
        set_state(vm, out, error != NULL ? AVZ_STATE_STOPPED : AVZ_STATE_PAUSED);
        break;

    default:
        avz_sim_fatal("internal error: operation kind %" PRId32, op->kind);
    }
    op_complete(out, op, error);
}

static void handle_timer(avz_vm *vm, outbox *out, const sim_timer *timer) {
    switch (timer->kind) {
    case TIMER_OPERATION:
        if (vm->op != NULL && vm->op->timer == timer->id) {
            finish_operation(vm, out, vm->op);
        } else if (vm->stop_op != NULL && vm->stop_op->timer == timer->id) {
            finish_operation(vm, out, vm->stop_op);
        }
        break;
    case TIMER_GUEST_POWER_OFF:
        vm->power_off_timer = 0;
        guest_power_off(vm, out);
        break;
    case TIMER_GUEST_CRASH:
        vm->crash_timer = 0;
        guest_crash(vm, out, vm->knobs.crash_code);
        break;
    case TIMER_STOP_REQUEST:
        vm->stop_request_timer = 0;
        if (vm->state == AVZ_STATE_RUNNING) {
            guest_power_off(vm, out);
        }
        break;
    }
}

/* A synchronous call; marks it done and wakes its caller. */
static void handle_sync(avz_vm *vm, sync_call *call) {
    call->state = vm->state;
    if (call->kind == SYNC_REQUEST_STOP) {
        if (vm->state != AVZ_STATE_RUNNING) {
            call->ok = false;
            call->error = avz_sim_error_create(
                VZ, AVZ_ERROR_INVALID_STATE,
                "Cannot request the guest to stop: the virtual machine is %s, not running.",
                state_phrase(vm->state));
        } else if (vm->fail_next[AVZ_SIM_OP_REQUEST_STOP]) {
            vm->fail_next[AVZ_SIM_OP_REQUEST_STOP] = false;
            int64_t code = vm->fail_code[AVZ_SIM_OP_REQUEST_STOP];
            call->ok = false;
            call->error = avz_sim_error_create(
                VZ, (CFIndex)code,
                "The stop request failed (failure injected by the simulator, code %" PRId64
                ").",
                code);
        } else {
            call->ok = true;
            if (!vm->knobs.ignores_stop_request && vm->stop_request_timer == 0) {
                vm->stop_request_timer =
                    timer_add(vm, vm->knobs.stop_delay_ms, TIMER_STOP_REQUEST);
            }
        }
    }
    call->done = true;
    pthread_cond_broadcast(&vm->sync_done);
}

static void handle_task(avz_vm *vm, outbox *out, sim_task *task) {
    switch (task->kind) {
    case TASK_OPERATION: {
        sim_op *op = avz_sim_alloc(sizeof *op);
        op->kind = task->op;
        op->completion = task->completion;
        op->context = task->context;
        op->path = task->path;
        task->path = NULL;
        op->save_fd = -1;
        handle_operation(vm, out, op);
        break;
    }
    case TASK_SYNC:
        handle_sync(vm, task->sync);
        break;
    case TASK_POWER_OFF:
        guest_power_off(vm, out);
        break;
    case TASK_CRASH:
        guest_crash(vm, out, task->code);
        break;
    case TASK_FAIL_NEXT:
        vm->fail_next[task->op] = true;
        vm->fail_code[task->op] = task->code;
        break;
    case TASK_SET_OPERATION_DELAY:
        vm->knobs.operation_delay_ms = (uint32_t)task->code;
        break;
    }
}

/* ---------------------------------------------------------------------------------- */
/* Virtual machine: the worker thread and its lifetime                                */
/* ---------------------------------------------------------------------------------- */

/* Frees the VM; runs on its worker once it is dying. */
static void vm_free(avz_vm *vm) {
    /* Nothing is in flight (operations hold references), so what is left are timers and
     * fire-and-forget triggers that no longer matter. */
    while (vm->timers != NULL) {
        sim_timer *timer = vm->timers;
        vm->timers = timer->next;
        free(timer);
    }
    while (vm->tasks != NULL) {
        sim_task *task = vm->tasks;
        vm->tasks = task->next;
        free(task->path);
        free(task);
    }
    if (vm->op != NULL || vm->stop_op != NULL) {
        avz_sim_fatal("internal error: VM destroyed with an operation in flight");
    }
    for (size_t i = 0; i < vm->fd_count; i++) {
        close_fd(vm->fds[i]);
    }
    free(vm->fds);
    free(vm->output_fds);
    /* Last: by the time the owner hears about it, the descriptors are closed. */
    if (vm->observer_release != NULL) {
        vm->observer_release(vm->observer_context);
    }
    pthread_cond_destroy(&vm->wake);
    pthread_cond_destroy(&vm->sync_done);
    pthread_mutex_destroy(&vm->mutex);
    avz_sim_object_free(&vm->base);
}

static void *vm_worker(void *arg) {
    avz_vm *vm = arg;
    current_worker_vm = vm;
    outbox out;
    memset(&out, 0, sizeof out);

    pthread_mutex_lock(&vm->mutex);
    while (!vm->dying) {
        sim_task *task = vm->tasks;
        if (task != NULL) {
            vm->tasks = task->next;
            if (vm->tasks == NULL) {
                vm->tasks_tail = NULL;
            }
            handle_task(vm, &out, task);
            pthread_mutex_unlock(&vm->mutex);
            free(task->path);
            free(task);
            outbox_deliver(vm, &out);
            pthread_mutex_lock(&vm->mutex);
            continue;
        }
        sim_timer *timer = vm->timers;
        if (timer != NULL && timer->deadline_ns <= avz_sim_monotonic_ns()) {
            vm->timers = timer->next;
            handle_timer(vm, &out, timer);
            pthread_mutex_unlock(&vm->mutex);
            free(timer);
            outbox_deliver(vm, &out);
            pthread_mutex_lock(&vm->mutex);
            continue;
        }
        if (timer != NULL) {
            avz_sim_cond_wait_until(&vm->wake, &vm->mutex, timer->deadline_ns);
        } else {
            pthread_cond_wait(&vm->wake, &vm->mutex);
        }
    }
    pthread_mutex_unlock(&vm->mutex);
    current_worker_vm = NULL;
    vm_free(vm);
    return NULL;
}

/* The last reference went (on any thread, the worker included): the worker frees the
 * VM. Never blocks. */
static void vm_last_release(void *object) {
    avz_vm *vm = object;
    pthread_mutex_lock(&vm->mutex);
    vm->dying = true;
    pthread_cond_signal(&vm->wake);
    pthread_mutex_unlock(&vm->mutex);
}

static void vm_post(avz_vm *vm, sim_task *task) {
    pthread_mutex_lock(&vm->mutex);
    if (vm->tasks_tail != NULL) {
        vm->tasks_tail->next = task;
    } else {
        vm->tasks = task;
    }
    vm->tasks_tail = task;
    pthread_cond_signal(&vm->wake);
    pthread_mutex_unlock(&vm->mutex);
}

/* Runs a synchronous call on the VM's queue: posts it and waits, or runs it in place
 * when already on the queue (a callback; the real framework would deadlock there). */
static void vm_sync(avz_vm *vm, sync_call *call) {
    if (current_worker_vm == vm) {
        pthread_mutex_lock(&vm->mutex);
        handle_sync(vm, call);
        pthread_mutex_unlock(&vm->mutex);
        return;
    }
    sim_task *task = avz_sim_alloc(sizeof *task);
    task->kind = TASK_SYNC;
    task->sync = call;
    vm_post(vm, task);
    pthread_mutex_lock(&vm->mutex);
    while (!call->done) {
        pthread_cond_wait(&vm->sync_done, &vm->mutex);
    }
    pthread_mutex_unlock(&vm->mutex);
}

static void vm_add_fd(avz_vm *vm, int fd, bool output) {
    vm->fds[vm->fd_count++] = fd;
    if (output) {
        vm->output_fds[vm->output_count++] = fd;
    }
}

avz_vm *avz_vm_create(avz_config *config, avz_state_observer_fn observer,
                      void *observer_context, avz_context_release_fn observer_release,
                      CFErrorRef *error) {
    char buf[ERRBUF];
    config_check(config, "avz_vm_create");
    if (!config_validate(config, error)) {
        goto fail;
    }

    avz_vm *vm = avz_sim_alloc(sizeof *vm);
    vm->knobs = config->knobs;
    vm->fingerprint = config_fingerprint(config);
    vm->observer = observer;
    vm->observer_context = observer_context;
    vm->observer_release = observer_release;
    vm->state = AVZ_STATE_STOPPED;
    vm->fds = avz_sim_alloc(sizeof *vm->fds * (config->serial_count * 2 + 1));
    vm->output_fds = avz_sim_alloc(sizeof *vm->output_fds * (config->serial_count + 1));
    for (size_t i = 0; i < config->serial_count; i++) {
        const sim_serial *serial = &config->serials[i];
        int fds[2] = {serial->read_fd, serial->write_fd};
        for (int j = 0; j < 2; j++) {
            if (fds[j] < 0) {
                continue;
            }
            int fd = dup_cloexec(fds[j]);
            if (fd < 0) {
                int e = errno;
                avz_sim_fail(error, POSIX, e,
                             "Cannot create the virtual machine: duplicating a serial port "
                             "descriptor failed: %s.",
                             avz_sim_strerror(e, buf, sizeof buf));
                goto fail_fds;
            }
            vm_add_fd(vm, fd, j == 1);
        }
    }

    pthread_mutex_init(&vm->mutex, NULL);
    avz_sim_cond_init_monotonic(&vm->wake);
    avz_sim_cond_init_monotonic(&vm->sync_done);
    avz_sim_object_init(&vm->base, &vm_class);

    /* The worker runs with every signal blocked, like a dispatch queue's thread: a
     * serial write to a closed pipe then fails with EPIPE instead of killing the
     * process, and the caller's signal handling is left alone. */
    sigset_t all, previous;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &previous);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_t thread;
    int rc = pthread_create(&thread, &attr, vm_worker, vm);
    pthread_attr_destroy(&attr);
    pthread_sigmask(SIG_SETMASK, &previous, NULL);
    if (rc != 0) {
        avz_sim_fail(error, VZ, AVZ_ERROR_INTERNAL,
                     "Cannot create the virtual machine: no thread for its queue: %s.",
                     avz_sim_strerror(rc, buf, sizeof buf));
        pthread_cond_destroy(&vm->wake);
        pthread_cond_destroy(&vm->sync_done);
        pthread_mutex_destroy(&vm->mutex);
        for (size_t i = 0; i < vm->fd_count; i++) {
            close_fd(vm->fds[i]);
        }
        free(vm->fds);
        free(vm->output_fds);
        avz_sim_object_free(&vm->base);
        goto fail;
    }
    return vm;

fail_fds:
    for (size_t i = 0; i < vm->fd_count; i++) {
        close_fd(vm->fds[i]);
    }
    free(vm->fds);
    free(vm->output_fds);
    free(vm);
fail:
    if (observer_release != NULL) {
        observer_release(observer_context);
    }
    return NULL;
}

/* ---------------------------------------------------------------------------------- */
/* Virtual machine: public operations                                                 */
/* ---------------------------------------------------------------------------------- */

static void vm_submit(avz_vm *vm, int32_t kind, const char *path, avz_completion_fn completion,
                      void *context, const char *function) {
    vm_check(vm, function);
    sim_task *task = avz_sim_alloc(sizeof *task);
    task->kind = TASK_OPERATION;
    task->op = kind;
    task->completion = completion;
    task->context = context;
    task->path = avz_sim_strdup(path);
    CFRetain(vm); /* the operation keeps the VM alive until its completion ran */
    vm_post(vm, task);
}

void avz_vm_start(avz_vm *vm, avz_completion_fn completion, void *context) {
    vm_submit(vm, AVZ_SIM_OP_START, NULL, completion, context, "avz_vm_start");
}

void avz_vm_stop(avz_vm *vm, avz_completion_fn completion, void *context) {
    vm_submit(vm, AVZ_SIM_OP_STOP, NULL, completion, context, "avz_vm_stop");
}

void avz_vm_pause(avz_vm *vm, avz_completion_fn completion, void *context) {
    vm_submit(vm, AVZ_SIM_OP_PAUSE, NULL, completion, context, "avz_vm_pause");
}

void avz_vm_resume(avz_vm *vm, avz_completion_fn completion, void *context) {
    vm_submit(vm, AVZ_SIM_OP_RESUME, NULL, completion, context, "avz_vm_resume");
}

void avz_vm_save_state(avz_vm *vm, const char *path, avz_completion_fn completion,
                       void *context) {
    REQUIRE(path, "avz_vm_save_state");
    vm_submit(vm, AVZ_SIM_OP_SAVE, path, completion, context, "avz_vm_save_state");
}

void avz_vm_restore_state(avz_vm *vm, const char *path, avz_completion_fn completion,
                          void *context) {
    REQUIRE(path, "avz_vm_restore_state");
    vm_submit(vm, AVZ_SIM_OP_RESTORE, path, completion, context, "avz_vm_restore_state");
}

bool avz_vm_request_stop(avz_vm *vm, CFErrorRef *error) {
    vm_check(vm, "avz_vm_request_stop");
    sync_call call = {.kind = SYNC_REQUEST_STOP};
    vm_sync(vm, &call);
    if (!call.ok) {
        if (error != NULL) {
            *error = call.error;
        } else {
            CFRelease(call.error);
        }
    }
    return call.ok;
}

static int32_t vm_read_state(avz_vm *vm, const char *function) {
    vm_check(vm, function);
    sync_call call = {.kind = SYNC_STATE};
    vm_sync(vm, &call);
    return call.state;
}

int32_t avz_vm_state(avz_vm *vm) {
    return vm_read_state(vm, "avz_vm_state");
}

bool avz_vm_can_start(avz_vm *vm) {
    return vm_read_state(vm, "avz_vm_can_start") == AVZ_STATE_STOPPED;
}

bool avz_vm_can_stop(avz_vm *vm) {
    int32_t state = vm_read_state(vm, "avz_vm_can_stop");
    return state != AVZ_STATE_STOPPED && state != AVZ_STATE_STOPPING;
}

bool avz_vm_can_pause(avz_vm *vm) {
    return vm_read_state(vm, "avz_vm_can_pause") == AVZ_STATE_RUNNING;
}

bool avz_vm_can_resume(avz_vm *vm) {
    return vm_read_state(vm, "avz_vm_can_resume") == AVZ_STATE_PAUSED;
}

bool avz_vm_can_request_stop(avz_vm *vm) {
    return vm_read_state(vm, "avz_vm_can_request_stop") == AVZ_STATE_RUNNING;
}

/* ---------------------------------------------------------------------------------- */
/* Virtual machine: simulator triggers                                                */
/* ---------------------------------------------------------------------------------- */

static void vm_trigger(avz_vm *vm, enum task_kind kind, int32_t op, int64_t code,
                       const char *function) {
    vm_check(vm, function);
    sim_task *task = avz_sim_alloc(sizeof *task);
    task->kind = kind;
    task->op = op;
    task->code = code;
    vm_post(vm, task);
}

void avz_sim_vm_fail_next(avz_vm *vm, int32_t op, int64_t code) {
    if (op < 0 || op >= OP_KINDS) {
        avz_sim_fatal("avz_sim_vm_fail_next: %" PRId32 " is not an AVZ_SIM_OP_* value", op);
    }
    vm_trigger(vm, TASK_FAIL_NEXT, op, code, "avz_sim_vm_fail_next");
}

void avz_sim_vm_set_operation_delay_ms(avz_vm *vm, uint32_t ms) {
    vm_trigger(vm, TASK_SET_OPERATION_DELAY, 0, ms, "avz_sim_vm_set_operation_delay_ms");
}

void avz_sim_vm_guest_power_off(avz_vm *vm) {
    vm_trigger(vm, TASK_POWER_OFF, 0, 0, "avz_sim_vm_guest_power_off");
}

void avz_sim_vm_crash(avz_vm *vm, int64_t code) {
    vm_trigger(vm, TASK_CRASH, 0, code, "avz_sim_vm_crash");
}
