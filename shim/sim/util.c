/*
 * util.c — small file-descriptor, memory and randomness helpers shared by the simulator.
 * See README.md beside this file for what the simulator models.
 */
#if !defined(_GNU_SOURCE) && !defined(_DEFAULT_SOURCE)
#define _DEFAULT_SOURCE 1
#endif

#include "internal.h"
#include "avz_sim.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

void avz_sim_array_reserve(void **items, size_t *capacity, size_t needed, size_t size) {
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

int avz_sim_open_cloexec(const char *path, int flags, mode_t mode) {
    int fd;
    do {
        fd = open(path, flags | O_CLOEXEC, mode);
    } while (fd < 0 && errno == EINTR);
    return fd;
}

bool avz_sim_write_all(int fd, const void *data, size_t size) {
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

ssize_t avz_sim_read_full(int fd, void *data, size_t size) {
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

void avz_sim_close_fd(int fd) {
    if (fd >= 0) {
        close(fd);
    }
}

void avz_sim_fill_random(uint8_t *buffer, size_t size) {
    int fd = avz_sim_open_cloexec("/dev/urandom", O_RDONLY, 0);
    if (fd >= 0) {
        ssize_t n = avz_sim_read_full(fd, buffer, size);
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

int avz_sim_hex_digit(char c) {
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

int avz_sim_dup_cloexec(int fd) {
    return fcntl(fd, F_DUPFD_CLOEXEC, 0);
}
