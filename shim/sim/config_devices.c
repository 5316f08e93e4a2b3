/*
 * config_devices.c — configuration devices: network, entropy, balloon and socket devices,
 * directory and Rosetta shares, serial and console ports.
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
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

static bool parse_mac(const char *text, uint8_t mac[6]) {
    if (strlen(text) != 17) {
        return false;
    }
    for (int i = 0; i < 6; i++) {
        const char *p = text + i * 3;
        int hi = avz_sim_hex_digit(p[0]), lo = avz_sim_hex_digit(p[1]);
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
        avz_sim_fill_random(mac, 6);
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
    avz_sim_array_reserve((void **)&config->nets, &config->net_capacity, config->net_count + 1,
                          sizeof *config->nets);
    sim_net *net = &config->nets[config->net_count++];
    memcpy(net->mac, mac, sizeof net->mac);
    net->fd = fd;
    net->mtu = mtu;
}

bool avz_config_add_nat_network_device(avz_config *config, const char *mac_address,
                                       CFErrorRef *error) {
    avz_sim_config_check(config, "avz_config_add_nat_network_device");
    uint8_t mac[6];
    if (!mac_from_text(mac_address, mac, error)) {
        return false;
    }
    config_add_net(config, mac, -1, 0);
    return true;
}

#define MTU_DEFAULT 1500u

#define MTU_MAX 65535u

bool avz_config_add_file_handle_network_device(avz_config *config, int socket_fd,
                                               const char *mac_address, uint32_t mtu,
                                               CFErrorRef *error) {
    avz_sim_config_check(config, "avz_config_add_file_handle_network_device");
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
    int fd = avz_sim_dup_cloexec(socket_fd);
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
    avz_sim_config_check(config, "avz_config_add_entropy_device")->entropy_count++;
    return true;
}

bool avz_config_add_memory_balloon_device(avz_config *config, CFErrorRef *error) {
    (void)error;
    avz_sim_config_check(config, "avz_config_add_memory_balloon_device")->balloon_count++;
    return true;
}

bool avz_config_add_socket_device(avz_config *config, CFErrorRef *error) {
    (void)error;
    avz_sim_config_check(config, "avz_config_add_socket_device")->socket_count++;
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
    avz_sim_array_reserve((void **)&config->shares, &config->share_capacity,
                          config->share_count + 1, sizeof *config->shares);
    sim_share *share = &config->shares[config->share_count++];
    memset(share, 0, sizeof *share);
    share->tag = avz_sim_strdup(tag);
    return share;
}

bool avz_config_add_directory_share(avz_config *config, const char *tag,
                                    const char *const *names, const char *const *paths,
                                    const bool *read_only, size_t count, CFErrorRef *error) {
    avz_sim_config_check(config, "avz_config_add_directory_share");
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
    avz_sim_config_check(config, "avz_config_add_rosetta_share");
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
    avz_sim_array_reserve((void **)&config->serials, &config->serial_capacity,
                          config->serial_count + 1, sizeof *config->serials);
    config->serials[config->serial_count].file = file;
    config->serials[config->serial_count].read_fd = read_fd;
    config->serials[config->serial_count].write_fd = write_fd;
    config->serial_count++;
}

bool avz_config_add_serial_port_file(avz_config *config, const char *path, bool append,
                                     CFErrorRef *error) {
    avz_sim_config_check(config, "avz_config_add_serial_port_file");
    char buf[ERRBUF];
    if (path == NULL || path[0] == '\0') {
        return avz_sim_fail(error, POSIX, ENOENT,
                            "Cannot open the serial port file: no path was given.");
    }
    int fd = avz_sim_open_cloexec(path, O_CREAT | O_WRONLY | (append ? O_APPEND : O_TRUNC),
                                  FRAMEWORK_FILE_MODE);
    if (fd < 0) {
        int e = errno;
        return avz_sim_fail(error, POSIX, e, "Cannot open the serial port file %s: %s.", path,
                            avz_sim_strerror(e, buf, sizeof buf));
    }
    config_add_serial(config, true, -1, fd);
    return true;
}

/* Duplicates a read and a write descriptor (-1: none) for a port named `what`. */
static bool dup_port_fds(const char *what, int read_fd, int write_fd, int *r, int *w,
                         CFErrorRef *error) {
    char buf[ERRBUF];
    *r = *w = -1;
    if (read_fd != -1 && (*r = avz_sim_dup_cloexec(read_fd)) < 0) {
        int e = errno;
        return avz_sim_fail(error, POSIX, e,
                            "Cannot use file descriptor %d for reading from the %s: %s.",
                            read_fd, what, avz_sim_strerror(e, buf, sizeof buf));
    }
    if (write_fd != -1 && (*w = avz_sim_dup_cloexec(write_fd)) < 0) {
        int e = errno;
        avz_sim_close_fd(*r);
        *r = -1;
        return avz_sim_fail(error, POSIX, e,
                            "Cannot use file descriptor %d for writing to the %s: %s.",
                            write_fd, what, avz_sim_strerror(e, buf, sizeof buf));
    }
    return true;
}

bool avz_config_add_serial_port_fds(avz_config *config, int read_fd, int write_fd,
                                    CFErrorRef *error) {
    avz_sim_config_check(config, "avz_config_add_serial_port_fds");
    int r, w;
    if (!dup_port_fds("serial port", read_fd, write_fd, &r, &w, error)) {
        return false;
    }
    config_add_serial(config, false, r, w);
    return true;
}

bool avz_config_add_console_port(avz_config *config, const char *name, bool is_console,
                                 int read_fd, int write_fd, CFErrorRef *error) {
    avz_sim_config_check(config, "avz_config_add_console_port");
    if (name == NULL || name[0] == '\0') {
        return avz_sim_fail(error, VZ, AVZ_ERROR_INVALID_CONFIGURATION,
                            "Invalid virtual machine configuration: a console port needs a "
                            "name.");
    }
    int r, w;
    if (!dup_port_fds("console port", read_fd, write_fd, &r, &w, error)) {
        return false;
    }
    avz_sim_array_reserve((void **)&config->consoles, &config->console_capacity,
                          config->console_count + 1, sizeof *config->consoles);
    sim_console *console = &config->consoles[config->console_count++];
    console->name = avz_sim_strdup(name);
    console->is_console = is_console;
    console->read_fd = r;
    console->write_fd = w;
    return true;
}
