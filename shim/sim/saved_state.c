/*
 * saved_state.c — saved states: the configuration fingerprint, writing the state file on save
 * and checking it on restore.
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
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define STATE_MAGIC "AVZSIM-STATE 1\n"

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

uint64_t avz_sim_config_fingerprint(const avz_config *config) {
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

void avz_sim_save_discard(sim_op *op) {
    if (op->save_fd >= 0) {
        close(op->save_fd);
        op->save_fd = -1;
        unlink(op->path);
    }
}

CFErrorRef avz_sim_save_prepare(avz_vm *vm, sim_op *op) {
    char buf[ERRBUF];
    if (vm->unsavable != NULL) {
        return avz_sim_error_create(VZ, AVZ_ERROR_SAVE,
                                    "Cannot save the virtual machine state: this configuration "
                                    "cannot be saved (%s).",
                                    vm->unsavable);
    }
    int fd = avz_sim_open_cloexec(op->path, O_WRONLY | O_CREAT | O_EXCL, FRAMEWORK_FILE_MODE);
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

CFErrorRef avz_sim_save_finish(avz_vm *vm, sim_op *op) {
    char buf[ERRBUF];
    char content[64];
    int n = snprintf(content, sizeof content, STATE_MAGIC "config=%016" PRIx64 "\n",
                     vm->fingerprint);
    bool ok = avz_sim_write_all(op->save_fd, content, (size_t)n) && fsync(op->save_fd) == 0;
    int e = errno;
    if (!ok) {
        avz_sim_save_discard(op);
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

CFErrorRef avz_sim_restore_check(avz_vm *vm, const char *path) {
    char buf[ERRBUF];
    const char *prefix = "Cannot restore the virtual machine state from";
    int fd = avz_sim_open_cloexec(path, O_RDONLY | O_NONBLOCK, 0);
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
    ssize_t n = avz_sim_read_full(fd, content, sizeof content - 1);
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
        int d = avz_sim_hex_digit(line[7 + i]);
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
