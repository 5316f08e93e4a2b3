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
#include <sys/socket.h>
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
#define CONSOLE_READY_FORMAT "applevz-sim: console port %s is ready\n"
#define ERRBUF 128
/* Files the simulator creates that hold guest data (saved state, EFI variable store,
 * serial output) are readable and writable by their owner only. */
#define GUEST_DATA_MODE 0600

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

/* The simulated host (avz_sim_set_host_architecture, avz_sim_set_rosetta_installed):
 * plain process-wide atomics, read whenever a rule depends on them. */
static atomic_int host_architecture = AVZ_SIM_HOST_APPLE_SILICON;
static atomic_bool host_rosetta_installed = true;

static bool host_is_intel(void) {
    return atomic_load(&host_architecture) == AVZ_SIM_HOST_INTEL;
}

void avz_sim_set_host_architecture(int32_t architecture) {
    if (architecture != AVZ_SIM_HOST_APPLE_SILICON && architecture != AVZ_SIM_HOST_INTEL) {
        avz_sim_fatal("avz_sim_set_host_architecture: %" PRId32
                      " is not an AVZ_SIM_HOST_* value",
                      architecture);
    }
    atomic_store(&host_architecture, architecture);
}

void avz_sim_set_rosetta_installed(bool installed) {
    atomic_store(&host_rosetta_installed, installed);
}

bool avz_is_supported(void) {
    return true;
}

bool avz_save_restore_supported(void) {
    return !host_is_intel();
}

int32_t avz_rosetta_availability(void) {
    if (host_is_intel()) {
        return AVZ_ROSETTA_NOT_SUPPORTED;
    }
    return atomic_load(&host_rosetta_installed) ? AVZ_ROSETTA_INSTALLED
                                                : AVZ_ROSETTA_NOT_INSTALLED;
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
    int32_t interface; /* AVZ_STORAGE_* */
    bool read_only;
    int32_t caching_mode;
    int32_t sync_mode;
    char *identifier; /* virtio block only; NULL: none */
} sim_disk;

typedef struct sim_net {
    uint8_t mac[6];
    int fd;       /* file-handle attachment: our duplicate; -1: NAT */
    uint32_t mtu; /* file-handle attachment: 1500...65535 */
} sim_net;

typedef struct sim_serial {
    bool file;    /* a file attachment (VZFileSerialPortAttachment), else file handles */
    int read_fd;  /* -1: none */
    int write_fd; /* -1: none */
} sim_serial;

typedef struct sim_share {
    char *tag;
    bool rosetta;      /* a Rosetta share: no directories */
    size_t count;      /* directories */
    char **names;      /* NULL: a single-directory share */
    char **paths;
    bool *read_only;
} sim_share;

typedef struct sim_console {
    char *name;
    bool is_console;
    int read_fd;  /* -1: none */
    int write_fd; /* -1: none */
} sim_console;

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
    sim_net *nets;
    size_t net_count, net_capacity;
    sim_serial *serials;
    size_t serial_count, serial_capacity;
    sim_share *shares;
    size_t share_count, share_capacity;
    sim_console *consoles;
    size_t console_count, console_capacity;
    size_t entropy_count, balloon_count, socket_count;
    uint32_t *guest_ports; /* avz_sim_config_add_guest_vsock_listener */
    size_t guest_port_count, guest_port_capacity;

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

static void share_free_contents(sim_share *share) {
    for (size_t i = 0; i < share->count; i++) {
        if (share->names != NULL) {
            free(share->names[i]);
        }
        free(share->paths[i]);
    }
    free(share->names);
    free(share->paths);
    free(share->read_only);
    free(share->tag);
}

static void config_last_release(void *object) {
    avz_config *config = object;
    config_clear_boot_loader(config);
    for (size_t i = 0; i < config->disk_count; i++) {
        free(config->disks[i].path);
        free(config->disks[i].identifier);
    }
    free(config->disks);
    for (size_t i = 0; i < config->net_count; i++) {
        close_fd(config->nets[i].fd);
    }
    free(config->nets);
    for (size_t i = 0; i < config->serial_count; i++) {
        close_fd(config->serials[i].read_fd);
        close_fd(config->serials[i].write_fd);
    }
    free(config->serials);
    for (size_t i = 0; i < config->share_count; i++) {
        share_free_contents(&config->shares[i]);
    }
    free(config->shares);
    for (size_t i = 0; i < config->console_count; i++) {
        free(config->consoles[i].name);
        close_fd(config->consoles[i].read_fd);
        close_fd(config->consoles[i].write_fd);
    }
    free(config->consoles);
    free(config->guest_ports);
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
        int fd = open_cloexec(path, O_WRONLY | O_CREAT | O_TRUNC, GUEST_DATA_MODE);
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

#define BLOCK_DEVICE_IDENTIFIER_MAX 20

bool avz_config_add_storage_device(avz_config *config, int32_t interface, const char *path,
                                   bool read_only, int32_t caching_mode, int32_t sync_mode,
                                   const char *block_device_identifier, CFErrorRef *error) {
    config_check(config, "avz_config_add_storage_device");
    char buf[ERRBUF];
    if (interface != AVZ_STORAGE_VIRTIO_BLOCK && interface != AVZ_STORAGE_NVME) {
        return avz_sim_fail(error, VZ, AVZ_ERROR_INVALID_CONFIGURATION,
                            "Invalid virtual machine configuration: storage interface %" PRId32
                            " is not virtio block (0) or NVMe (1).",
                            interface);
    }
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
    /* NVMe has no block device identifier: the framework never sees it. */
    const char *identifier = interface == AVZ_STORAGE_VIRTIO_BLOCK ? block_device_identifier
                                                                    : NULL;
    if (identifier != NULL) {
        size_t length = strlen(identifier);
        if (length > BLOCK_DEVICE_IDENTIFIER_MAX) {
            return avz_sim_fail(error, VZ, AVZ_ERROR_INVALID_CONFIGURATION,
                                "Invalid virtual machine configuration: the block device "
                                "identifier \"%s\" is %zu bytes long; at most %d are allowed.",
                                identifier, length, BLOCK_DEVICE_IDENTIFIER_MAX);
        }
        for (size_t i = 0; i < length; i++) {
            unsigned char c = (unsigned char)identifier[i];
            if (c < 0x20 || c > 0x7E) {
                return avz_sim_fail(error, VZ, AVZ_ERROR_INVALID_CONFIGURATION,
                                    "Invalid virtual machine configuration: the block device "
                                    "identifier has a byte (0x%02X at offset %zu) that is "
                                    "not printable ASCII.",
                                    c, i);
            }
        }
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
    disk->interface = interface;
    disk->read_only = read_only;
    disk->caching_mode = caching_mode;
    disk->sync_mode = sync_mode;
    disk->identifier = avz_sim_strdup(identifier);
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

/* A MAC address as VZMACAddress takes it; NULL: a random locally administered unicast
 * address. */
static bool mac_from_text(const char *mac_address, uint8_t mac[6], CFErrorRef *error) {
    if (mac_address == NULL) {
        fill_random(mac, 6);
        mac[0] = (uint8_t)((mac[0] & 0xFC) | 0x02);
        return true;
    }
    if (!parse_mac(mac_address, mac)) {
        return avz_sim_fail(error, VZ, AVZ_ERROR_INVALID_CONFIGURATION,
                            "Invalid virtual machine configuration: \"%s\" is not a MAC address "
                            "(expected six two-digit hexadecimal octets separated by ':').",
                            mac_address);
    }
    return true;
}

static void config_add_net(avz_config *config, const uint8_t mac[6], int fd, uint32_t mtu) {
    array_reserve((void **)&config->nets, &config->net_capacity, config->net_count + 1,
                  sizeof *config->nets);
    sim_net *net = &config->nets[config->net_count++];
    memcpy(net->mac, mac, sizeof net->mac);
    net->fd = fd;
    net->mtu = mtu;
}

bool avz_config_add_nat_network_device(avz_config *config, const char *mac_address,
                                       CFErrorRef *error) {
    config_check(config, "avz_config_add_nat_network_device");
    uint8_t mac[6];
    if (!mac_from_text(mac_address, mac, error)) {
        return false;
    }
    config_add_net(config, mac, -1, 0);
    return true;
}

#define MTU_DEFAULT 1500u
#define MTU_MAX 65535u

static int dup_cloexec(int fd);

bool avz_config_add_file_handle_network_device(avz_config *config, int socket_fd,
                                               const char *mac_address, uint32_t mtu,
                                               CFErrorRef *error) {
    config_check(config, "avz_config_add_file_handle_network_device");
    char buf[ERRBUF];
    int type = 0;
    socklen_t type_size = sizeof type;
    if (getsockopt(socket_fd, SOL_SOCKET, SO_TYPE, &type, &type_size) != 0) {
        int e = errno;
        return avz_sim_fail(error, POSIX, e,
                            "Cannot use file descriptor %d for a network device: %s.",
                            socket_fd, avz_sim_strerror(e, buf, sizeof buf));
    }
    if (type != SOCK_DGRAM) {
        return avz_sim_fail(error, VZ, AVZ_ERROR_INVALID_CONFIGURATION,
                            "Invalid virtual machine configuration: file descriptor %d is not "
                            "a datagram socket (a file-handle network attachment needs one).",
                            socket_fd);
    }
    uint8_t mac[6];
    if (!mac_from_text(mac_address, mac, error)) {
        return false;
    }
    if (mtu != 0 && (mtu < MTU_DEFAULT || mtu > MTU_MAX)) {
        return avz_sim_fail(error, VZ, AVZ_ERROR_INVALID_CONFIGURATION,
                            "Invalid virtual machine configuration: an MTU of %" PRIu32
                            " is outside %u...%u.",
                            mtu, MTU_DEFAULT, MTU_MAX);
    }
    int fd = dup_cloexec(socket_fd);
    if (fd < 0) {
        int e = errno;
        return avz_sim_fail(error, POSIX, e,
                            "Cannot use file descriptor %d for a network device: %s.",
                            socket_fd, avz_sim_strerror(e, buf, sizeof buf));
    }
    config_add_net(config, mac, fd, mtu == 0 ? MTU_DEFAULT : mtu);
    return true;
}

bool avz_config_add_entropy_device(avz_config *config, CFErrorRef *error) {
    (void)error;
    config_check(config, "avz_config_add_entropy_device")->entropy_count++;
    return true;
}

bool avz_config_add_memory_balloon_device(avz_config *config, CFErrorRef *error) {
    (void)error;
    config_check(config, "avz_config_add_memory_balloon_device")->balloon_count++;
    return true;
}

bool avz_config_add_socket_device(avz_config *config, CFErrorRef *error) {
    (void)error;
    config_check(config, "avz_config_add_socket_device")->socket_count++;
    return true;
}

/* The virtio-fs tag limit: the framework wants fewer than 36 bytes (validateTag:). */
#define TAG_MAX 35

bool avz_validate_directory_share_tag(const char *tag, CFErrorRef *error) {
    if (tag == NULL || tag[0] == '\0') {
        return avz_sim_fail(error, VZ, AVZ_ERROR_INVALID_CONFIGURATION,
                            "Invalid virtual machine configuration: the directory share tag is "
                            "empty.");
    }
    size_t length = strlen(tag);
    if (length > TAG_MAX) {
        return avz_sim_fail(error, VZ, AVZ_ERROR_INVALID_CONFIGURATION,
                            "Invalid virtual machine configuration: the directory share tag "
                            "\"%s\" is %zu bytes long; at most %d are allowed.",
                            tag, length, TAG_MAX);
    }
    return true;
}

/* A name in a multiple-directory share: one path component. */
static bool check_share_name(const char *tag, const char *name, CFErrorRef *error) {
    const char *prefix = "Invalid virtual machine configuration: in the directory share";
    if (name == NULL || name[0] == '\0') {
        return avz_sim_fail(error, VZ, AVZ_ERROR_INVALID_CONFIGURATION,
                            "%s \"%s\", a directory name is empty.", prefix, tag);
    }
    if (strchr(name, '/') != NULL) {
        return avz_sim_fail(error, VZ, AVZ_ERROR_INVALID_CONFIGURATION,
                            "%s \"%s\", the directory name \"%s\" contains '/'.", prefix, tag,
                            name);
    }
    if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0) {
        return avz_sim_fail(error, VZ, AVZ_ERROR_INVALID_CONFIGURATION,
                            "%s \"%s\", \"%s\" cannot be a directory name.", prefix, tag, name);
    }
    return true;
}

/* A shared directory must exist and be a directory. */
static bool check_share_directory(const char *path, CFErrorRef *error) {
    char buf[ERRBUF];
    if (path == NULL || path[0] == '\0') {
        return avz_sim_fail(error, POSIX, ENOENT,
                            "Cannot share a directory: no path was given.");
    }
    struct stat st;
    if (stat(path, &st) != 0) {
        int e = errno;
        return avz_sim_fail(error, POSIX, e, "Cannot share the directory %s: %s.", path,
                            avz_sim_strerror(e, buf, sizeof buf));
    }
    if (!S_ISDIR(st.st_mode)) {
        return avz_sim_fail(error, POSIX, ENOTDIR,
                            "Cannot share the directory %s: it is not a directory.", path);
    }
    return true;
}

static sim_share *config_add_share(avz_config *config, const char *tag) {
    array_reserve((void **)&config->shares, &config->share_capacity, config->share_count + 1,
                  sizeof *config->shares);
    sim_share *share = &config->shares[config->share_count++];
    memset(share, 0, sizeof *share);
    share->tag = avz_sim_strdup(tag);
    return share;
}

bool avz_config_add_directory_share(avz_config *config, const char *tag,
                                    const char *const *names, const char *const *paths,
                                    const bool *read_only, size_t count, CFErrorRef *error) {
    config_check(config, "avz_config_add_directory_share");
    if (!avz_validate_directory_share_tag(tag, error)) {
        return false;
    }
    if (count == 0) {
        return avz_sim_fail(error, VZ, AVZ_ERROR_INVALID_CONFIGURATION,
                            "Invalid virtual machine configuration: the directory share \"%s\" "
                            "shares no directory.",
                            tag);
    }
    if (names == NULL && count != 1) {
        return avz_sim_fail(error, VZ, AVZ_ERROR_INVALID_CONFIGURATION,
                            "Invalid virtual machine configuration: the directory share \"%s\" "
                            "shares %zu directories without names (only a single directory "
                            "can go without a name).",
                            tag, count);
    }
    REQUIRE(paths, "avz_config_add_directory_share");
    REQUIRE(read_only, "avz_config_add_directory_share");
    if (names != NULL) {
        for (size_t i = 0; i < count; i++) {
            if (!check_share_name(tag, names[i], error)) {
                return false;
            }
            for (size_t j = 0; j < i; j++) {
                if (strcmp(names[i], names[j]) == 0) {
                    return avz_sim_fail(error, VZ, AVZ_ERROR_INVALID_CONFIGURATION,
                                        "Invalid virtual machine configuration: in the "
                                        "directory share \"%s\", the name \"%s\" is used "
                                        "twice.",
                                        tag, names[i]);
                }
            }
        }
    }
    for (size_t i = 0; i < count; i++) {
        if (!check_share_directory(paths[i], error)) {
            return false;
        }
    }
    sim_share *share = config_add_share(config, tag);
    share->count = count;
    share->paths = avz_sim_alloc(sizeof *share->paths * count);
    share->read_only = avz_sim_alloc(sizeof *share->read_only * count);
    if (names != NULL) {
        share->names = avz_sim_alloc(sizeof *share->names * count);
    }
    for (size_t i = 0; i < count; i++) {
        share->paths[i] = avz_sim_strdup(paths[i]);
        share->read_only[i] = read_only[i];
        if (names != NULL) {
            share->names[i] = avz_sim_strdup(names[i]);
        }
    }
    return true;
}

bool avz_config_add_rosetta_share(avz_config *config, const char *tag, CFErrorRef *error) {
    config_check(config, "avz_config_add_rosetta_share");
    if (!avz_validate_directory_share_tag(tag, error)) {
        return false;
    }
    switch (avz_rosetta_availability()) {
    case AVZ_ROSETTA_NOT_SUPPORTED:
        return avz_sim_fail(error, VZ, AVZ_ERROR_NOT_SUPPORTED,
                            "Rosetta for Linux needs Apple silicon and macOS 13.");
    case AVZ_ROSETTA_NOT_INSTALLED:
        return avz_sim_fail(error, VZ, AVZ_ERROR_NOT_SUPPORTED,
                            "Rosetta is not installed (softwareupdate --install-rosetta).");
    default:
        break;
    }
    config_add_share(config, tag)->rosetta = true;
    return true;
}

static void config_add_serial(avz_config *config, bool file, int read_fd, int write_fd) {
    array_reserve((void **)&config->serials, &config->serial_capacity,
                  config->serial_count + 1, sizeof *config->serials);
    config->serials[config->serial_count].file = file;
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
    int fd = open_cloexec(path, O_CREAT | O_WRONLY | (append ? O_APPEND : O_TRUNC),
                          GUEST_DATA_MODE);
    if (fd < 0) {
        int e = errno;
        return avz_sim_fail(error, POSIX, e, "Cannot open the serial port file %s: %s.", path,
                            avz_sim_strerror(e, buf, sizeof buf));
    }
    config_add_serial(config, true, -1, fd);
    return true;
}

static int dup_cloexec(int fd) {
    return fcntl(fd, F_DUPFD_CLOEXEC, 0);
}

/* Duplicates a read and a write descriptor (-1: none) for a port named `what`. */
static bool dup_port_fds(const char *what, int read_fd, int write_fd, int *r, int *w,
                         CFErrorRef *error) {
    char buf[ERRBUF];
    *r = *w = -1;
    if (read_fd != -1 && (*r = dup_cloexec(read_fd)) < 0) {
        int e = errno;
        return avz_sim_fail(error, POSIX, e,
                            "Cannot use file descriptor %d for reading from the %s: %s.",
                            read_fd, what, avz_sim_strerror(e, buf, sizeof buf));
    }
    if (write_fd != -1 && (*w = dup_cloexec(write_fd)) < 0) {
        int e = errno;
        close_fd(*r);
        *r = -1;
        return avz_sim_fail(error, POSIX, e,
                            "Cannot use file descriptor %d for writing to the %s: %s.",
                            write_fd, what, avz_sim_strerror(e, buf, sizeof buf));
    }
    return true;
}

bool avz_config_add_serial_port_fds(avz_config *config, int read_fd, int write_fd,
                                    CFErrorRef *error) {
    config_check(config, "avz_config_add_serial_port_fds");
    int r, w;
    if (!dup_port_fds("serial port", read_fd, write_fd, &r, &w, error)) {
        return false;
    }
    config_add_serial(config, false, r, w);
    return true;
}

bool avz_config_add_console_port(avz_config *config, const char *name, bool is_console,
                                 int read_fd, int write_fd, CFErrorRef *error) {
    config_check(config, "avz_config_add_console_port");
    if (name == NULL || name[0] == '\0') {
        return avz_sim_fail(error, VZ, AVZ_ERROR_INVALID_CONFIGURATION,
                            "Invalid virtual machine configuration: a console port needs a "
                            "name.");
    }
    int r, w;
    if (!dup_port_fds("console port", read_fd, write_fd, &r, &w, error)) {
        return false;
    }
    array_reserve((void **)&config->consoles, &config->console_capacity,
                  config->console_count + 1, sizeof *config->consoles);
    sim_console *console = &config->consoles[config->console_count++];
    console->name = avz_sim_strdup(name);
    console->is_console = is_console;
    console->read_fd = r;
    console->write_fd = w;
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
    if (!config->has_platform) {
        for (size_t i = 0; i < config->disk_count; i++) {
            if (config->disks[i].interface == AVZ_STORAGE_NVME) {
                return avz_sim_fail(error, VZ, AVZ_ERROR_INVALID_CONFIGURATION,
                                    "Invalid virtual machine configuration: the NVMe disk %s "
                                    "needs the generic platform.",
                                    config->disks[i].path);
            }
        }
    }
    if (config->balloon_count > 1) {
        return avz_sim_fail(error, VZ, AVZ_ERROR_INVALID_CONFIGURATION,
                            "Invalid virtual machine configuration: %zu memory balloon devices "
                            "(at most one is allowed).",
                            config->balloon_count);
    }
    if (config->socket_count > 1) {
        return avz_sim_fail(error, VZ, AVZ_ERROR_INVALID_CONFIGURATION,
                            "Invalid virtual machine configuration: %zu socket devices (at most "
                            "one is allowed).",
                            config->socket_count);
    }
    for (size_t i = 0; i < config->share_count; i++) {
        for (size_t j = 0; j < i; j++) {
            if (strcmp(config->shares[i].tag, config->shares[j].tag) == 0) {
                return avz_sim_fail(error, VZ, AVZ_ERROR_INVALID_CONFIGURATION,
                                    "Invalid virtual machine configuration: two directory "
                                    "sharing devices use the tag \"%s\".",
                                    config->shares[i].tag);
            }
        }
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
    if (config->knobs.save_restore_unsupported || host_is_intel()) {
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

static uint64_t fnv_bool(uint64_t h, bool value) {
    uint8_t byte = value ? 1 : 0;
    return fnv_bytes(h, &byte, 1);
}

/* Everything a saved state is bound to: the whole configuration except descriptor
 * numbers (and the simulator's knobs). Each device class starts with its count, so
 * devices cannot slide from one class into the next. */
static uint64_t config_fingerprint(const avz_config *config) {
    uint64_t h = 0xcbf29ce484222325ull;
    h = fnv_u64(h, config->cpu_count);
    h = fnv_u64(h, config->memory_size);
    /* Boot loader. */
    h = fnv_u64(h, (uint64_t)config->boot);
    h = fnv_string(h, config->kernel_path);
    h = fnv_string(h, config->initrd_path);
    h = fnv_string(h, config->command_line);
    h = fnv_string(h, config->efi_store_path);
    /* Platform. */
    h = fnv_bool(h, config->has_platform);
    h = fnv_bytes(h, config->machine_identifier, MACHINE_ID_SIZE);
    /* Storage. */
    h = fnv_u64(h, config->disk_count);
    for (size_t i = 0; i < config->disk_count; i++) {
        const sim_disk *disk = &config->disks[i];
        h = fnv_string(h, disk->path);
        h = fnv_u64(h, (uint64_t)disk->interface);
        h = fnv_bool(h, disk->read_only);
        h = fnv_u64(h, (uint64_t)disk->caching_mode);
        h = fnv_u64(h, (uint64_t)disk->sync_mode);
        h = fnv_string(h, disk->identifier);
    }
    /* Network, in order: MAC, attachment kind (NAT or file handle) and MTU. */
    h = fnv_u64(h, config->net_count);
    for (size_t i = 0; i < config->net_count; i++) {
        const sim_net *net = &config->nets[i];
        h = fnv_bytes(h, net->mac, sizeof net->mac);
        h = fnv_bool(h, net->fd >= 0);
        h = fnv_u64(h, net->mtu);
    }
    /* Serial ports: count and attachment kind. */
    h = fnv_u64(h, config->serial_count);
    for (size_t i = 0; i < config->serial_count; i++) {
        h = fnv_bool(h, config->serials[i].file);
    }
    /* Console ports. */
    h = fnv_u64(h, config->console_count);
    for (size_t i = 0; i < config->console_count; i++) {
        h = fnv_string(h, config->consoles[i].name);
        h = fnv_bool(h, config->consoles[i].is_console);
    }
    h = fnv_u64(h, config->entropy_count);
    h = fnv_u64(h, config->balloon_count);
    h = fnv_u64(h, config->socket_count);
    /* Directory sharing devices (directory and Rosetta shares), in order. */
    h = fnv_u64(h, config->share_count);
    for (size_t i = 0; i < config->share_count; i++) {
        const sim_share *share = &config->shares[i];
        h = fnv_string(h, share->tag);
        h = fnv_bool(h, share->rosetta);
        h = fnv_u64(h, share->count);
        h = fnv_bool(h, share->names != NULL);
        for (size_t j = 0; j < share->count; j++) {
            h = fnv_string(h, share->names != NULL ? share->names[j] : NULL);
            h = fnv_string(h, share->paths[j]);
            h = fnv_bool(h, share->read_only[j]);
        }
    }
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

void avz_sim_config_add_guest_vsock_listener(avz_config *config, uint32_t port) {
    config_check(config, "avz_sim_config_add_guest_vsock_listener");
    array_reserve((void **)&config->guest_ports, &config->guest_port_capacity,
                  config->guest_port_count + 1, sizeof *config->guest_ports);
    config->guest_ports[config->guest_port_count++] = port;
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
    TASK_SET_OPERATION_DELAY, /* avz_sim_vm_set_operation_delay_ms */
    TASK_VSOCK_CONNECT,       /* avz_vm_vsock_connect; holds one VM reference */
    TASK_GUEST_VSOCK_CONNECT, /* avz_sim_vm_guest_vsock_connect */
    TASK_NETWORK_DISCONNECT,  /* avz_sim_vm_network_disconnect */
    TASK_LISTENER_RELEASE     /* a listener dropped by a synchronous call made on the
                                 worker: its release runs after the current callback */
};

enum timer_kind {
    TIMER_OPERATION,       /* an operation's transitional state ends */
    TIMER_GUEST_POWER_OFF, /* power_off_after */
    TIMER_GUEST_CRASH,     /* crash_after */
    TIMER_STOP_REQUEST,    /* the guest acts on a stop request */
    TIMER_DEFERRED_POWER_OFF /* a power-off that fell due while the guest did not run */
};

enum sync_kind {
    SYNC_STATE,
    SYNC_REQUEST_STOP,
    SYNC_BALLOON_GET,
    SYNC_BALLOON_SET,
    SYNC_VSOCK_LISTEN,
    SYNC_VSOCK_REMOVE
};

/* A host vsock listener (avz_vm_vsock_listen). */
typedef struct sim_listener {
    uint32_t port;
    avz_accept_fn accept;
    void *context;
    avz_context_release_fn release;
} sim_listener;

typedef struct sync_call {
    enum sync_kind kind;
    bool done;
    int32_t state;
    bool ok;
    CFErrorRef error;
    uint64_t bytes;         /* balloon: in (set) and out */
    sim_listener listener;  /* listen: the new listener; remove: its port */
    bool dropped;           /* listen/remove: `released` must be released */
    sim_listener released;  /* the replaced or removed listener (or the refused one) */
} sync_call;

typedef struct sim_task {
    struct sim_task *next;
    enum task_kind kind;
    int32_t op;
    avz_completion_fn completion;
    avz_connect_fn connect;
    void *context;
    char *path;
    int64_t code;
    uint32_t port; /* vsock port; TASK_NETWORK_DISCONNECT: the device index */
    avz_context_release_fn release;
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
    int *console_fds;     /* the console port outputs among them */
    char **console_lines; /* what each console port output gets when the guest boots */
    size_t console_count;
    bool has_balloon;
    bool has_socket_device;
    size_t net_count; /* network devices */
    uint64_t memory_size;
    uint32_t *guest_ports; /* where the simulated guest listens */
    size_t guest_port_count;

    /* Guarded by mutex. */
    pthread_mutex_t mutex;
    pthread_cond_t wake;      /* the worker waits on it */
    pthread_cond_t sync_done; /* synchronous callers wait on it */
    sim_task *tasks, *tasks_tail;
    sim_timer *timers; /* by deadline, then id */
    uint64_t next_timer_id;
    bool dying;

    int32_t state;
    bool left_stopped; /* has ever been in a state other than Stopped */
    sim_op *op;        /* the operation in flight (at most one) */
    bool fail_next[OP_KINDS];
    int64_t fail_code[OP_KINDS];
    bool guest_booted; /* reached Running since it was last stopped */
    bool power_off_pending; /* the guest powers off as soon as it runs again */
    uint64_t power_off_timer, crash_timer, stop_request_timer, deferred_power_off_timer;
    uint64_t balloon_target;
    sim_listener *listeners; /* host vsock listeners, at most one per port */
    size_t listener_count, listener_capacity;
    uint32_t guest_connections; /* source ports handed out so far */
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

enum outbox_kind {
    OUT_OBSERVER,
    OUT_COMPLETION,
    OUT_CONNECT, /* a vsock connect completion */
    OUT_ACCEPT,  /* a host listener accepts a guest connection */
    OUT_RELEASE  /* a dropped listener's release */
};

typedef struct outbox_item {
    enum outbox_kind kind;
    int32_t state;
    int32_t event;
    CFErrorRef error; /* observer: released after the call; completions: handed over */
    avz_completion_fn completion;
    avz_connect_fn connect;
    avz_accept_fn accept;
    avz_context_release_fn release;
    void *context;
    int fd; /* connect, accept: handed over */
    uint32_t guest_port, host_port;
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
    item->fd = -1;
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
        for (size_t i = 0; i < vm->console_count; i++) {
            (void)write_all(vm->console_fds[i], vm->console_lines[i],
                            strlen(vm->console_lines[i]));
        }
    }
    for (size_t i = 0; i < out->count; i++) {
        outbox_item *item = &out->items[i];
        switch (item->kind) {
        case OUT_OBSERVER:
            if (vm->observer != NULL && !vm_is_dying(vm)) {
                vm->observer(vm->observer_context, item->state, item->event, item->error);
            }
            if (item->error != NULL) {
                CFRelease(item->error);
            }
            break;
        case OUT_COMPLETION:
            if (item->completion != NULL) {
                item->completion(item->context, item->error);
            } else if (item->error != NULL) {
                CFRelease(item->error);
            }
            break;
        case OUT_CONNECT:
            if (item->connect != NULL) {
                item->connect(item->context, item->fd, item->error);
            } else {
                close_fd(item->fd);
                if (item->error != NULL) {
                    CFRelease(item->error);
                }
            }
            break;
        case OUT_ACCEPT:
            /* Like observer events, nothing is accepted once the last reference is gone
             * (the listener is released when the worker frees the VM). */
            if (!vm_is_dying(vm)) {
                item->accept(item->context, item->fd, item->guest_port, item->host_port);
            } else {
                close_fd(item->fd);
            }
            break;
        case OUT_RELEASE:
            item->release(item->context);
            break;
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
    if (state != AVZ_STATE_STOPPED) {
        vm->left_stopped = true;
    }
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
    timer_cancel(vm, &vm->deferred_power_off_timer);
    vm->power_off_pending = false;
}

/* The VM reached Running (an operation ended there, or a failed pause or stop went
 * back). The guest "boots" the first time after it was stopped: its timers start and it
 * says so on its serial outputs. A power-off that fell due while its vCPUs were stopped
 * happens now (on the next turn of the worker, after this turn's callbacks). */
static void enter_running(avz_vm *vm, outbox *out) {
    set_state(vm, out, AVZ_STATE_RUNNING);
    if (!vm->guest_booted) {
        vm->guest_booted = true;
        arm_guest_timers(vm);
        out->serial_line = true;
    } else if (vm->power_off_pending && vm->deferred_power_off_timer == 0) {
        vm->deferred_power_off_timer = timer_add(vm, 0, TIMER_DEFERRED_POWER_OFF);
    }
}

/* The VM stopped (or failed): the guest is gone, and with it whatever it was about to
 * do. */
static void guest_gone(avz_vm *vm) {
    disarm_guest_timers(vm);
    vm->guest_booted = false;
    /* The next guest starts with all of its memory. */
    vm->balloon_target = vm->memory_size;
}

/* The guest powers itself off. Only a running guest can: a paused VM's vCPUs do not
 * run (and no operation is in flight while the VM is running). */
static void guest_power_off(avz_vm *vm, outbox *out) {
    if (vm->state != AVZ_STATE_RUNNING) {
        return;
    }
    guest_gone(vm);
    set_state(vm, out, AVZ_STATE_STOPPED);
    push_event(vm, out, AVZ_EVENT_GUEST_STOPPED, NULL);
}

/* A power-off timer (power_off_after or the reaction to a stop request) fell due: the
 * guest acts on it if it runs, or as soon as it runs again. */
static void guest_power_off_due(avz_vm *vm, outbox *out) {
    if (vm->state == AVZ_STATE_RUNNING) {
        guest_power_off(vm, out);
    } else if (vm->guest_booted) {
        vm->power_off_pending = true;
    }
}

/* The VM fails: -> Error, STOPPED_WITH_ERROR, then the operation in flight (if any)
 * completes with an error carrying the same code. A save's partial file is removed. */
static void guest_crash(avz_vm *vm, outbox *out, int64_t code) {
    if (vm->state == AVZ_STATE_STOPPED || vm->state == AVZ_STATE_ERROR) {
        return;
    }
    sim_op *op = vm->op;
    vm->op = NULL;
    if (op != NULL) {
        timer_cancel(vm, &op->timer);
        save_discard(op);
    }
    guest_gone(vm);
    set_state(vm, out, AVZ_STATE_ERROR);
    push_event(vm, out, AVZ_EVENT_STOPPED_WITH_ERROR,
               avz_sim_error_create(VZ, (CFIndex)code,
                                    "The virtual machine stopped unexpectedly."));
    if (op != NULL) {
        op_complete(out, op,
                    avz_sim_error_create(VZ, (CFIndex)code,
                                         "The virtual machine stopped with an error during "
                                         "the %s operation.",
                                         op_name(op->kind)));
    }
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
    if (vm->op != NULL) {
        /* Cannot happen: every operation needs a non-transitional state. */
        avz_sim_fatal("internal error: two operations in flight");
    }
    op->origin = vm->state;
    take_injection(vm, op);
    vm->op = op;
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
    int fd = open_cloexec(op->path, O_WRONLY | O_CREAT | O_EXCL, GUEST_DATA_MODE);
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
/* vsock: the simulated guest's end of a connection                                   */
/* ---------------------------------------------------------------------------------- */

#ifdef MSG_NOSIGNAL
#define SEND_FLAGS MSG_NOSIGNAL
#else
#define SEND_FLAGS 0
#endif

typedef struct guest_conn {
    int fd;
    size_t greeting_size;
    char greeting[64];
} guest_conn;

static bool send_all(int fd, const char *data, size_t size) {
    while (size > 0) {
        ssize_t n = send(fd, data, size, SEND_FLAGS);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return false;
        }
        data += n;
        size -= (size_t)n;
    }
    return true;
}

/* The guest's end: the greeting, then every byte back until the host closes its end (or
 * the connection fails). Owns `arg`; never touches a VM. */
static void *guest_conn_main(void *arg) {
    guest_conn *conn = arg;
    char buffer[4096];
    bool ok = send_all(conn->fd, conn->greeting, conn->greeting_size);
    while (ok) {
        ssize_t n = recv(conn->fd, buffer, sizeof buffer, 0);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            break;
        }
        ok = send_all(conn->fd, buffer, (size_t)n);
    }
    close(conn->fd);
    free(conn);
    return NULL;
}

static int socketpair_cloexec(int fds[2]) {
#ifdef SOCK_CLOEXEC
    return socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds);
#else
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, fds) != 0) {
        return -1;
    }
    (void)fcntl(fds[0], F_SETFD, FD_CLOEXEC);
    (void)fcntl(fds[1], F_SETFD, FD_CLOEXEC);
    return 0;
#endif
}

/* Opens a connected stream socket pair and serves one end as the guest on a detached
 * thread (greeting first, then an echo). Returns the host's end, or -1 with an errno
 * value in *error_number. Runs on a worker, whose signals are all blocked: the thread
 * inherits that mask. */
static int guest_conn_open(const char *greeting, int *error_number) {
    int fds[2];
    if (socketpair_cloexec(fds) != 0) {
        *error_number = errno;
        return -1;
    }
    guest_conn *conn = avz_sim_alloc(sizeof *conn);
    conn->fd = fds[1];
    if (greeting != NULL) {
        conn->greeting_size = strlen(greeting);
        if (conn->greeting_size >= sizeof conn->greeting) {
            avz_sim_fatal("internal error: vsock greeting too long");
        }
        memcpy(conn->greeting, greeting, conn->greeting_size);
    }
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_t thread;
    int rc = pthread_create(&thread, &attr, guest_conn_main, conn);
    pthread_attr_destroy(&attr);
    if (rc != 0) {
        close(fds[0]);
        close(fds[1]);
        free(conn);
        *error_number = rc;
        return -1;
    }
    return fds[0];
}

/* ---------------------------------------------------------------------------------- */
/* Virtual machine: the worker's handlers (mutex held)                                */
/* ---------------------------------------------------------------------------------- */

static bool guest_listens(const avz_vm *vm, uint32_t port) {
    for (size_t i = 0; i < vm->guest_port_count; i++) {
        if (vm->guest_ports[i] == port) {
            return true;
        }
    }
    return false;
}

static sim_listener *find_listener(avz_vm *vm, uint32_t port) {
    for (size_t i = 0; i < vm->listener_count; i++) {
        if (vm->listeners[i].port == port) {
            return &vm->listeners[i];
        }
    }
    return NULL;
}

/* avz_vm_vsock_connect (the task owns one VM reference, handed to the completion). */
static void handle_vsock_connect(avz_vm *vm, outbox *out, const sim_task *task) {
    char buf[ERRBUF];
    const char *prefix = "Cannot connect to vsock port";
    CFErrorRef error = NULL;
    int fd = -1;
    if (!vm->has_socket_device) {
        error = avz_sim_error_create(VZ, AVZ_ERROR_INVALID_CONFIGURATION,
                                     "%s %" PRIu32 ": the virtual machine has no socket device.",
                                     prefix, task->port);
    } else if (vm->state != AVZ_STATE_RUNNING) {
        error = avz_sim_error_create(VZ, AVZ_ERROR_INVALID_STATE,
                                     "%s %" PRIu32 ": the virtual machine is %s, not running.",
                                     prefix, task->port, state_phrase(vm->state));
    } else if (!guest_listens(vm, task->port)) {
        error = avz_sim_error_create(POSIX, ECONNRESET,
                                     "%s %" PRIu32 ": the guest does not listen on it "
                                     "(connection reset).",
                                     prefix, task->port);
    } else {
        int e = 0;
        fd = guest_conn_open(NULL, &e);
        if (fd < 0) {
            error = avz_sim_error_create(POSIX, e, "%s %" PRIu32 ": %s.", prefix, task->port,
                                         avz_sim_strerror(e, buf, sizeof buf));
        }
    }
    outbox_item *item = outbox_push(out);
    item->kind = OUT_CONNECT;
    item->connect = task->connect;
    item->context = task->context;
    item->fd = fd;
    item->error = error;
    out->vm_releases++;
}

/* avz_sim_vm_guest_vsock_connect: ignored unless running with a listener on `port`. */
static void handle_guest_vsock_connect(avz_vm *vm, outbox *out, uint32_t port) {
    sim_listener *listener = find_listener(vm, port);
    if (vm->state != AVZ_STATE_RUNNING || listener == NULL) {
        return;
    }
    char greeting[64];
    snprintf(greeting, sizeof greeting, "hello from guest port %" PRIu32 "\n", port);
    int e = 0;
    int fd = guest_conn_open(greeting, &e);
    if (fd < 0) {
        return; /* nobody to tell: the guest's connect failed */
    }
    outbox_item *item = outbox_push(out);
    item->kind = OUT_ACCEPT;
    item->accept = listener->accept;
    item->context = listener->context;
    item->fd = fd;
    item->guest_port = 1024u + vm->guest_connections++;
    item->host_port = port;
}

/* Refuses `op` because the VM is in the wrong state: `code` with a description naming
 * the state, the states the operation needs and the operation in flight, if any. */
static void refuse_state(avz_vm *vm, outbox *out, sim_op *op, CFIndex code,
                         const char *what, const char *needed) {
    if (vm->op != NULL) {
        op_refuse(out, op, code, "Cannot %s: it is %s, not %s (the %s operation is still in "
                                 "progress).",
                  what, state_phrase(vm->state), needed, op_name(vm->op->kind));
    } else {
        op_refuse(out, op, code, "Cannot %s: it is %s, not %s.", what, state_phrase(vm->state),
                  needed);
    }
}

/* A new asynchronous operation (it owns the task's VM reference). Every operation is
 * legal only from non-transitional states, so an operation in flight (which always
 * holds the VM in its transitional state) refuses every other one: nothing cancels
 * anything. */
static void handle_operation(avz_vm *vm, outbox *out, sim_op *op) {
    int32_t state = vm->state;
    const sim_knobs *knobs = &vm->knobs;

    switch (op->kind) {
    case AVZ_SIM_OP_START:
        /* From Stopped, or from Error: the guest boots afresh. */
        if (state != AVZ_STATE_STOPPED && state != AVZ_STATE_ERROR) {
            refuse_state(vm, out, op, AVZ_ERROR_INVALID_STATE_TRANSITION,
                         "start the virtual machine", "stopped or in the error state");
        } else {
            op_begin(vm, out, op, AVZ_STATE_STARTING, knobs->boot_delay_ms);
        }
        return;

    case AVZ_SIM_OP_STOP:
        /* Only from Running or Paused; the code of a refusal is not documented (the
         * stricter reading: 4, like every other state-transition refusal). */
        if (state != AVZ_STATE_RUNNING && state != AVZ_STATE_PAUSED) {
            refuse_state(vm, out, op, AVZ_ERROR_INVALID_STATE_TRANSITION,
                         "stop the virtual machine", "running or paused");
        } else {
            op_begin(vm, out, op, AVZ_STATE_STOPPING, knobs->stop_delay_ms);
        }
        return;

    case AVZ_SIM_OP_PAUSE:
        if (state != AVZ_STATE_RUNNING) {
            refuse_state(vm, out, op, AVZ_ERROR_INVALID_STATE_TRANSITION,
                         "pause the virtual machine", "running");
        } else {
            op_begin(vm, out, op, AVZ_STATE_PAUSING, knobs->operation_delay_ms);
        }
        return;

    case AVZ_SIM_OP_RESUME:
        if (state != AVZ_STATE_PAUSED) {
            refuse_state(vm, out, op, AVZ_ERROR_INVALID_STATE_TRANSITION,
                         "resume the virtual machine", "paused");
        } else {
            op_begin(vm, out, op, AVZ_STATE_RESUMING, knobs->operation_delay_ms);
        }
        return;

    case AVZ_SIM_OP_SAVE:
        if (knobs->save_restore_unsupported || host_is_intel()) {
            op_complete(out, op,
                        save_restore_unsupported_error("save the virtual machine state"));
        } else if (state != AVZ_STATE_PAUSED) {
            /* The framework documents code 3 (not 4) for a save from the wrong state. */
            refuse_state(vm, out, op, AVZ_ERROR_INVALID_STATE,
                         "save the virtual machine state", "paused");
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
        if (knobs->save_restore_unsupported || host_is_intel()) {
            op_complete(out, op,
                        save_restore_unsupported_error("restore the virtual machine state"));
        } else if (state != AVZ_STATE_STOPPED) {
            refuse_state(vm, out, op, AVZ_ERROR_INVALID_STATE_TRANSITION,
                         "restore the virtual machine state", "stopped");
        } else if (vm->left_stopped) {
            /* The framework documents restore into a stopped VM and says nothing about a
             * VM object that already ran: the stricter reading refuses it. */
            op_refuse(out, op, AVZ_ERROR_INVALID_STATE_TRANSITION,
                      "Cannot restore the virtual machine state: this virtual machine object "
                      "has already left the stopped state once; restore into a newly created "
                      "virtual machine.");
        } else {
            op_begin(vm, out, op, AVZ_STATE_RESTORING, knobs->operation_delay_ms);
        }
        return;

    default:
        avz_sim_fatal("internal error: operation kind %" PRId32, op->kind);
    }
}

/* An operation's transitional state ended. */
static void finish_operation(avz_vm *vm, outbox *out, sim_op *op) {
    vm->op = NULL;
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
        if (error == NULL) {
            guest_gone(vm);
            set_state(vm, out, AVZ_STATE_STOPPED);
        } else if (op->origin == AVZ_STATE_RUNNING) {
            enter_running(vm, out);
        } else {
            set_state(vm, out, op->origin);
        }
        break;

    case AVZ_SIM_OP_PAUSE:
        if (error != NULL) {
            enter_running(vm, out);
        } else {
            set_state(vm, out, AVZ_STATE_PAUSED);
        }
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

/* avz_sim_vm_network_disconnect: the delegate's attachmentWasDisconnectedWithError:
 * while the VM is running or paused, for a device it has; ignored otherwise. */
static void handle_network_disconnect(avz_vm *vm, outbox *out, uint32_t index, int64_t code) {
    if (vm->state != AVZ_STATE_RUNNING && vm->state != AVZ_STATE_PAUSED) {
        return;
    }
    if (index >= vm->net_count) {
        return;
    }
    push_event(vm, out, AVZ_EVENT_NETWORK_DISCONNECTED,
               avz_sim_error_create(VZ, (CFIndex)code,
                                    "network device %" PRIu32 ": the network attachment was "
                                    "disconnected (code %" PRId64 ").",
                                    index, code));
}

static void handle_timer(avz_vm *vm, outbox *out, const sim_timer *timer) {
    switch (timer->kind) {
    case TIMER_OPERATION:
        if (vm->op != NULL && vm->op->timer == timer->id) {
            finish_operation(vm, out, vm->op);
        }
        break;
    case TIMER_GUEST_POWER_OFF:
        vm->power_off_timer = 0;
        guest_power_off_due(vm, out);
        break;
    case TIMER_STOP_REQUEST:
        vm->stop_request_timer = 0;
        guest_power_off_due(vm, out);
        break;
    case TIMER_DEFERRED_POWER_OFF:
        vm->deferred_power_off_timer = 0;
        /* Paused again before this turn came: guest_power_off does nothing and the
         * power-off stays pending until the guest next runs. */
        if (vm->power_off_pending) {
            guest_power_off(vm, out);
        }
        break;
    case TIMER_GUEST_CRASH:
        vm->crash_timer = 0;
        guest_crash(vm, out, vm->knobs.crash_code);
        break;
    }
}

/* Balloon target: read or set (rounded down to a MiB, clamped to the host's minimum
 * memory size and the configured memory size). */
static void handle_balloon(avz_vm *vm, sync_call *call) {
    const char *what = call->kind == SYNC_BALLOON_SET ? "set" : "read";
    if (!vm->has_balloon) {
        call->ok = false;
        call->error = avz_sim_error_create(
            VZ, AVZ_ERROR_INVALID_CONFIGURATION,
            "Cannot %s the memory balloon target: the virtual machine has no memory balloon "
            "device.",
            what);
        return;
    }
    if (vm->state != AVZ_STATE_RUNNING && vm->state != AVZ_STATE_PAUSED) {
        call->ok = false;
        call->error = avz_sim_error_create(
            VZ, AVZ_ERROR_INVALID_STATE,
            "Cannot %s the memory balloon target: the virtual machine is %s, not running or "
            "paused.",
            what, state_phrase(vm->state));
        return;
    }
    if (call->kind == SYNC_BALLOON_SET) {
        avz_limits limits;
        avz_get_limits(&limits);
        uint64_t target = call->bytes - call->bytes % MIB;
        if (target < limits.min_memory_size) {
            target = limits.min_memory_size;
        }
        if (target > vm->memory_size) {
            target = vm->memory_size;
        }
        vm->balloon_target = target;
    }
    call->bytes = vm->balloon_target;
    call->ok = true;
}

/* Host vsock listeners: install (replacing) or remove one. A dropped listener goes back
 * to the caller in call->released, to be released outside the mutex. */
static void handle_listener(avz_vm *vm, sync_call *call) {
    bool listen = call->kind == SYNC_VSOCK_LISTEN;
    if (!vm->has_socket_device) {
        call->ok = false;
        call->error = avz_sim_error_create(
            VZ, AVZ_ERROR_INVALID_CONFIGURATION,
            "Cannot %s vsock port %" PRIu32 ": the virtual machine has no socket device.",
            listen ? "listen on" : "stop listening on", call->listener.port);
        if (listen) {
            call->dropped = true; /* the refused listener itself */
            call->released = call->listener;
        }
        return;
    }
    call->ok = true;
    sim_listener *existing = find_listener(vm, call->listener.port);
    if (existing != NULL) {
        call->dropped = true;
        call->released = *existing;
        if (listen) {
            *existing = call->listener;
        } else {
            *existing = vm->listeners[--vm->listener_count];
        }
    } else if (listen) {
        array_reserve((void **)&vm->listeners, &vm->listener_capacity,
                      vm->listener_count + 1, sizeof *vm->listeners);
        vm->listeners[vm->listener_count++] = call->listener;
    }
}

/* requestStopWithError:. */
static void handle_request_stop(avz_vm *vm, sync_call *call) {
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
            "The stop request failed (failure injected by the simulator, code %" PRId64 ").",
            code);
    } else {
        call->ok = true;
        if (!vm->knobs.ignores_stop_request && vm->stop_request_timer == 0) {
            vm->stop_request_timer = timer_add(vm, vm->knobs.stop_delay_ms, TIMER_STOP_REQUEST);
        }
    }
}

/* A synchronous call; marks it done and wakes its caller. */
static void handle_sync(avz_vm *vm, sync_call *call) {
    call->state = vm->state;
    switch (call->kind) {
    case SYNC_STATE:
        break;
    case SYNC_REQUEST_STOP:
        handle_request_stop(vm, call);
        break;
    case SYNC_BALLOON_GET:
    case SYNC_BALLOON_SET:
        handle_balloon(vm, call);
        break;
    case SYNC_VSOCK_LISTEN:
    case SYNC_VSOCK_REMOVE:
        handle_listener(vm, call);
        break;
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
    case TASK_VSOCK_CONNECT:
        handle_vsock_connect(vm, out, task);
        break;
    case TASK_GUEST_VSOCK_CONNECT:
        handle_guest_vsock_connect(vm, out, task->port);
        break;
    case TASK_NETWORK_DISCONNECT:
        handle_network_disconnect(vm, out, task->port, task->code);
        break;
    case TASK_LISTENER_RELEASE: {
        outbox_item *item = outbox_push(out);
        item->kind = OUT_RELEASE;
        item->release = task->release;
        item->context = task->context;
        break;
    }
    }
}

/* ---------------------------------------------------------------------------------- */
/* Virtual machine: the worker thread and its lifetime                                */
/* ---------------------------------------------------------------------------------- */

/* Closes the VM's descriptors and frees what avz_vm_create copied from the
 * configuration. */
static void vm_free_resources(avz_vm *vm) {
    for (size_t i = 0; i < vm->fd_count; i++) {
        close_fd(vm->fds[i]);
    }
    free(vm->fds);
    free(vm->output_fds);
    free(vm->console_fds);
    for (size_t i = 0; i < vm->console_count; i++) {
        free(vm->console_lines[i]);
    }
    free(vm->console_lines);
    free(vm->guest_ports);
}

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
        if (task->kind == TASK_LISTENER_RELEASE) {
            task->release(task->context);
        }
        free(task->path);
        free(task);
    }
    if (vm->op != NULL) {
        avz_sim_fatal("internal error: VM destroyed with an operation in flight");
    }
    /* Every listener still installed is released exactly once. */
    for (size_t i = 0; i < vm->listener_count; i++) {
        if (vm->listeners[i].release != NULL) {
            vm->listeners[i].release(vm->listeners[i].context);
        }
    }
    free(vm->listeners);
    vm_free_resources(vm);
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

/* The VM's own duplicate of a configuration's descriptor for `what`, or -1 with the
 * error set. */
static int vm_dup_fd(avz_vm *vm, int config_fd, const char *what, bool output,
                     CFErrorRef *error) {
    int fd = dup_cloexec(config_fd);
    if (fd < 0) {
        char buf[ERRBUF];
        int e = errno;
        avz_sim_fail(error, POSIX, e,
                     "Cannot create the virtual machine: duplicating the descriptor of %s "
                     "failed: %s.",
                     what, avz_sim_strerror(e, buf, sizeof buf));
        return -1;
    }
    vm_add_fd(vm, fd, output);
    return fd;
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
    vm->has_balloon = config->balloon_count > 0;
    vm->has_socket_device = config->socket_count > 0;
    vm->net_count = config->net_count;
    vm->memory_size = config->memory_size;
    vm->balloon_target = config->memory_size;
    vm->guest_port_count = config->guest_port_count;
    vm->guest_ports = avz_sim_alloc(sizeof *vm->guest_ports * (config->guest_port_count + 1));
    if (config->guest_port_count > 0) {
        memcpy(vm->guest_ports, config->guest_ports,
               sizeof *vm->guest_ports * config->guest_port_count);
    }
    vm->fds = avz_sim_alloc(sizeof *vm->fds * (config->serial_count * 2 +
                                               config->console_count * 2 +
                                               config->net_count + 1));
    vm->output_fds = avz_sim_alloc(sizeof *vm->output_fds * (config->serial_count + 1));
    vm->console_fds = avz_sim_alloc(sizeof *vm->console_fds * (config->console_count + 1));
    vm->console_lines = avz_sim_alloc(sizeof *vm->console_lines * (config->console_count + 1));
    for (size_t i = 0; i < config->serial_count; i++) {
        const sim_serial *serial = &config->serials[i];
        int fds[2] = {serial->read_fd, serial->write_fd};
        for (int j = 0; j < 2; j++) {
            if (fds[j] < 0) {
                continue;
            }
            if (vm_dup_fd(vm, fds[j], "a serial port", j == 1, error) < 0) {
                goto fail_fds;
            }
        }
    }
    for (size_t i = 0; i < config->console_count; i++) {
        const sim_console *console = &config->consoles[i];
        int fds[2] = {console->read_fd, console->write_fd};
        for (int j = 0; j < 2; j++) {
            if (fds[j] < 0) {
                continue;
            }
            int fd = vm_dup_fd(vm, fds[j], "a console port", false, error);
            if (fd < 0) {
                goto fail_fds;
            }
            if (j == 1) {
                size_t size = sizeof CONSOLE_READY_FORMAT + strlen(console->name);
                char *line = avz_sim_alloc(size);
                snprintf(line, size, CONSOLE_READY_FORMAT, console->name);
                vm->console_fds[vm->console_count] = fd;
                vm->console_lines[vm->console_count++] = line;
            }
        }
    }
    for (size_t i = 0; i < config->net_count; i++) {
        if (config->nets[i].fd < 0) {
            continue;
        }
        if (vm_dup_fd(vm, config->nets[i].fd, "a network device", false, error) < 0) {
            goto fail_fds;
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
        vm_free_resources(vm);
        avz_sim_object_free(&vm->base);
        goto fail;
    }
    return vm;

fail_fds:
    vm_free_resources(vm);
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

static bool sync_result(sync_call *call, CFErrorRef *error);

bool avz_vm_request_stop(avz_vm *vm, CFErrorRef *error) {
    vm_check(vm, "avz_vm_request_stop");
    sync_call call = {.kind = SYNC_REQUEST_STOP};
    vm_sync(vm, &call);
    return sync_result(&call, error);
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
    int32_t state = vm_read_state(vm, "avz_vm_can_start");
    return state == AVZ_STATE_STOPPED || state == AVZ_STATE_ERROR;
}

bool avz_vm_can_stop(avz_vm *vm) {
    int32_t state = vm_read_state(vm, "avz_vm_can_stop");
    return state == AVZ_STATE_RUNNING || state == AVZ_STATE_PAUSED;
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
/* Virtual machine: runtime devices                                                   */
/* ---------------------------------------------------------------------------------- */

/* Hands a failed synchronous call's error to the caller. Returns call->ok. */
static bool sync_result(sync_call *call, CFErrorRef *error) {
    if (!call->ok) {
        if (error != NULL) {
            *error = call->error;
        } else {
            CFRelease(call->error);
        }
    }
    return call->ok;
}

bool avz_vm_balloon_target(avz_vm *vm, uint64_t *bytes, CFErrorRef *error) {
    vm_check(vm, "avz_vm_balloon_target");
    REQUIRE(bytes, "avz_vm_balloon_target");
    sync_call call = {.kind = SYNC_BALLOON_GET};
    vm_sync(vm, &call);
    if (call.ok) {
        *bytes = call.bytes;
    }
    return sync_result(&call, error);
}

bool avz_vm_set_balloon_target(avz_vm *vm, uint64_t bytes, CFErrorRef *error) {
    vm_check(vm, "avz_vm_set_balloon_target");
    sync_call call = {.kind = SYNC_BALLOON_SET, .bytes = bytes};
    vm_sync(vm, &call);
    return sync_result(&call, error);
}

void avz_vm_vsock_connect(avz_vm *vm, uint32_t port, avz_connect_fn completion,
                          void *context) {
    vm_check(vm, "avz_vm_vsock_connect");
    sim_task *task = avz_sim_alloc(sizeof *task);
    task->kind = TASK_VSOCK_CONNECT;
    task->connect = completion;
    task->context = context;
    task->port = port;
    CFRetain(vm); /* held until the completion ran */
    vm_post(vm, task);
}

/* Releases the listener a synchronous call dropped. Called on the worker (from a
 * callback) the release is queued instead, so that it runs after the current callback
 * returns — which may be that very listener's accept. */
static void release_dropped(avz_vm *vm, const sync_call *call, bool now) {
    if (!call->dropped || call->released.release == NULL) {
        return;
    }
    if (now || current_worker_vm != vm) {
        call->released.release(call->released.context);
        return;
    }
    sim_task *task = avz_sim_alloc(sizeof *task);
    task->kind = TASK_LISTENER_RELEASE;
    task->release = call->released.release;
    task->context = call->released.context;
    vm_post(vm, task);
}

bool avz_vm_vsock_listen(avz_vm *vm, uint32_t port, avz_accept_fn accept, void *context,
                         avz_context_release_fn release, CFErrorRef *error) {
    vm_check(vm, "avz_vm_vsock_listen");
    REQUIRE(accept, "avz_vm_vsock_listen");
    sync_call call = {.kind = SYNC_VSOCK_LISTEN,
                      .listener = {.port = port,
                                   .accept = accept,
                                   .context = context,
                                   .release = release}};
    vm_sync(vm, &call);
    /* A refused listener was never installed: release it before returning. */
    release_dropped(vm, &call, !call.ok);
    return sync_result(&call, error);
}

bool avz_vm_vsock_remove_listener(avz_vm *vm, uint32_t port, CFErrorRef *error) {
    vm_check(vm, "avz_vm_vsock_remove_listener");
    sync_call call = {.kind = SYNC_VSOCK_REMOVE, .listener = {.port = port}};
    vm_sync(vm, &call);
    release_dropped(vm, &call, false);
    return sync_result(&call, error);
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

void avz_sim_vm_network_disconnect(avz_vm *vm, uint32_t device_index, int64_t code) {
    vm_check(vm, "avz_sim_vm_network_disconnect");
    sim_task *task = avz_sim_alloc(sizeof *task);
    task->kind = TASK_NETWORK_DISCONNECT;
    task->port = device_index;
    task->code = code;
    vm_post(vm, task);
}

void avz_sim_vm_guest_vsock_connect(avz_vm *vm, uint32_t port) {
    vm_check(vm, "avz_sim_vm_guest_vsock_connect");
    sim_task *task = avz_sim_alloc(sizeof *task);
    task->kind = TASK_GUEST_VSOCK_CONNECT;
    task->port = port;
    vm_post(vm, task);
}
