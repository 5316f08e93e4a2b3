/*
 * config.c — configurations: the object, CPU and memory, boot loaders, platform, storage,
 * validation, and the simulator's configuration knobs.
 * See README.md beside this file for what the simulator models.
 */
#if !defined(_GNU_SOURCE) && !defined(_DEFAULT_SOURCE)
#define _DEFAULT_SOURCE 1
#endif

#include "internal.h"
#include "avz_sim.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define EFI_MAGIC "AVZSIM-EFI-VARIABLE-STORE 1\n"

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
        avz_sim_close_fd(config->nets[i].fd);
    }
    free(config->nets);
    for (size_t i = 0; i < config->serial_count; i++) {
        avz_sim_close_fd(config->serials[i].read_fd);
        avz_sim_close_fd(config->serials[i].write_fd);
    }
    free(config->serials);
    for (size_t i = 0; i < config->share_count; i++) {
        share_free_contents(&config->shares[i]);
    }
    free(config->shares);
    for (size_t i = 0; i < config->console_count; i++) {
        free(config->consoles[i].name);
        avz_sim_close_fd(config->consoles[i].read_fd);
        avz_sim_close_fd(config->consoles[i].write_fd);
    }
    free(config->consoles);
    free(config->guest_ports);
    avz_sim_object_free(&config->base);
}

static const avz_sim_class config_class = {"avz_config", config_last_release};

avz_config *avz_sim_config_check(avz_config *config, const char *function) {
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
    avz_sim_machine_identifier_fresh(config->machine_identifier);
    avz_sim_object_init(&config->base, &config_class);
    return config;
}

void avz_config_set_cpu_count(avz_config *config, uint32_t cpu_count) {
    avz_sim_config_check(config, "avz_config_set_cpu_count")->cpu_count = cpu_count;
}

void avz_config_set_memory_size(avz_config *config, uint64_t memory_size) {
    avz_sim_config_check(config, "avz_config_set_memory_size")->memory_size = memory_size;
}

/* A boot file (kernel, initial RAM disk) must be a readable regular file. */
static bool check_boot_file(const char *what, const char *path, CFErrorRef *error) {
    char buf[ERRBUF];
    if (path == NULL || path[0] == '\0') {
        return avz_sim_fail(error, VZ, AVZ_ERROR_INVALID_CONFIGURATION,
                            "Invalid virtual machine configuration: no %s path was given.",
                            what);
    }
    int fd = avz_sim_open_cloexec(path, O_RDONLY | O_NONBLOCK, 0);
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
    avz_sim_config_check(config, "avz_config_set_linux_boot_loader");
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
    avz_sim_config_check(config, "avz_config_set_efi_boot_loader");
    char buf[ERRBUF];
    if (variable_store_path == NULL || variable_store_path[0] == '\0') {
        return avz_sim_fail(error, VZ, AVZ_ERROR_INVALID_CONFIGURATION,
                            "Invalid virtual machine configuration: no EFI variable store "
                            "path was given.");
    }
    const char *path = variable_store_path;
    if (create) {
        int fd = avz_sim_open_cloexec(path, O_WRONLY | O_CREAT | O_TRUNC, FRAMEWORK_FILE_MODE);
        if (fd < 0) {
            int e = errno;
            return avz_sim_fail(error, POSIX, e,
                                "Cannot create the EFI variable store %s: %s.", path,
                                avz_sim_strerror(e, buf, sizeof buf));
        }
        bool ok = avz_sim_write_all(fd, EFI_MAGIC, sizeof EFI_MAGIC - 1);
        int e = errno;
        close(fd);
        if (!ok) {
            return avz_sim_fail(error, POSIX, e,
                                "Cannot write the EFI variable store %s: %s.", path,
                                avz_sim_strerror(e, buf, sizeof buf));
        }
    } else {
        int fd = avz_sim_open_cloexec(path, O_RDONLY | O_NONBLOCK, 0);
        if (fd < 0) {
            int e = errno;
            return avz_sim_fail(error, POSIX, e, "Cannot open the EFI variable store %s: %s.",
                                path, avz_sim_strerror(e, buf, sizeof buf));
        }
        char head[sizeof EFI_MAGIC - 1];
        ssize_t n = avz_sim_read_full(fd, head, sizeof head);
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
    avz_sim_config_check(config, "avz_config_set_generic_platform");
    if (machine_identifier == NULL) {
        avz_sim_machine_identifier_fresh(config->machine_identifier);
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
    avz_sim_config_check(config, "avz_config_add_storage_device");
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
    int fd = avz_sim_open_cloexec(path, (read_only ? O_RDONLY : O_RDWR) | O_NONBLOCK, 0);
    if (fd < 0) {
        int e = errno;
        return avz_sim_fail(error, POSIX, e, "Cannot open the disk image %s for %s: %s.", path,
                            read_only ? "reading" : "reading and writing",
                            avz_sim_strerror(e, buf, sizeof buf));
    }
    close(fd);
    avz_sim_array_reserve((void **)&config->disks, &config->disk_capacity, config->disk_count + 1,
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

bool avz_sim_config_validate(const avz_config *config, CFErrorRef *error) {
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
    return avz_sim_config_validate(avz_sim_config_check(config, "avz_config_validate"), error);
}

CFErrorRef avz_sim_save_restore_unsupported_error(const char *what) {
    return avz_sim_error_create(VZ, AVZ_ERROR_NOT_SUPPORTED,
                                "Cannot %s: save/restore needs macOS 14 on Apple silicon, and "
                                "this host does not support it.",
                                what);
}

bool avz_config_validate_save_restore(avz_config *config, CFErrorRef *error) {
    avz_sim_config_check(config, "avz_config_validate_save_restore");
    if (config->knobs.save_restore_unsupported || avz_sim_host_is_intel()) {
        if (error != NULL) {
            *error =
                avz_sim_save_restore_unsupported_error("save or restore virtual machine state");
        }
        return false;
    }
    const char *unsavable = avz_sim_config_unsavable(config);
    if (unsavable != NULL) {
        return avz_sim_fail(error, VZ, AVZ_ERROR_INVALID_CONFIGURATION,
                            "Invalid virtual machine configuration: this configuration cannot "
                            "be saved (%s).",
                            unsavable);
    }
    return true;
}

/* Devices practice shows the framework refuses to save (fidelity rule 19): a directory
 * sharing device (directory and Rosetta shares alike: both are virtio-fs devices) and a
 * console device. Whether the framework saves the others is not known; the knob covers
 * what cannot be derived. */
const char *avz_sim_config_unsavable(const avz_config *config) {
    if (config->share_count > 0) {
        return "it has a directory sharing device, which cannot be saved";
    }
    if (config->console_count > 0) {
        return "it has a console device, which cannot be saved";
    }
    if (config->knobs.not_savable) {
        return "it has a device whose state cannot be saved";
    }
    return NULL;
}

/* Knobs. */

void avz_sim_config_set_boot_delay_ms(avz_config *config, uint32_t ms) {
    avz_sim_config_check(config, "avz_sim_config_set_boot_delay_ms")->knobs.boot_delay_ms = ms;
}

void avz_sim_config_set_stop_delay_ms(avz_config *config, uint32_t ms) {
    avz_sim_config_check(config, "avz_sim_config_set_stop_delay_ms")->knobs.stop_delay_ms = ms;
}

void avz_sim_config_set_operation_delay_ms(avz_config *config, uint32_t ms) {
    avz_sim_config_check(config, "avz_sim_config_set_operation_delay_ms")
        ->knobs.operation_delay_ms = ms;
}

void avz_sim_config_set_ignores_stop_request(avz_config *config, bool ignores) {
    avz_sim_config_check(config, "avz_sim_config_set_ignores_stop_request")
        ->knobs.ignores_stop_request = ignores;
}

void avz_sim_config_set_power_off_after_ms(avz_config *config, uint32_t ms) {
    avz_sim_config_check(config, "avz_sim_config_set_power_off_after_ms")
        ->knobs.power_off_after_ms = ms;
}

void avz_sim_config_set_crash_after_ms(avz_config *config, uint32_t ms, int64_t code) {
    avz_config *c = avz_sim_config_check(config, "avz_sim_config_set_crash_after_ms");
    c->knobs.crash_after_ms = ms;
    c->knobs.crash_code = code;
}

void avz_sim_config_set_save_restore_unsupported(avz_config *config, bool unsupported) {
    avz_sim_config_check(config, "avz_sim_config_set_save_restore_unsupported")
        ->knobs.save_restore_unsupported = unsupported;
}

void avz_sim_config_set_not_savable(avz_config *config, bool not_savable) {
    avz_sim_config_check(config, "avz_sim_config_set_not_savable")->knobs.not_savable = not_savable;
}

void avz_sim_config_set_vsock_unanswered(avz_config *config, bool unanswered) {
    avz_sim_config_check(config, "avz_sim_config_set_vsock_unanswered")->knobs.vsock_unanswered =
        unanswered;
}

void avz_sim_config_add_guest_vsock_listener(avz_config *config, uint32_t port) {
    avz_sim_config_check(config, "avz_sim_config_add_guest_vsock_listener");
    avz_sim_array_reserve((void **)&config->guest_ports, &config->guest_port_capacity,
                          config->guest_port_count + 1, sizeof *config->guest_ports);
    config->guest_ports[config->guest_port_count++] = port;
}
