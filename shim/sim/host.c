/*
 * host.c — the simulated host: architecture, Rosetta, limits, machine identifiers.
 * See README.md beside this file for what the simulator models.
 */
#if !defined(_GNU_SOURCE) && !defined(_DEFAULT_SOURCE)
#define _DEFAULT_SOURCE 1
#endif

#include "internal.h"
#include "avz_sim.h"

#include <inttypes.h>
#include <string.h>
#include <unistd.h>

/* The simulated host (avz_sim_set_host_architecture, avz_sim_set_rosetta_installed):
 * plain process-wide atomics, read whenever a rule depends on them. */
static atomic_int host_architecture = AVZ_SIM_HOST_APPLE_SILICON;

static atomic_bool host_rosetta_installed = true;

bool avz_sim_host_is_intel(void) {
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
    return !avz_sim_host_is_intel();
}

int32_t avz_rosetta_availability(void) {
    if (avz_sim_host_is_intel()) {
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

void avz_sim_machine_identifier_fresh(uint8_t out[MACHINE_ID_SIZE]) {
    memcpy(out, MACHINE_ID_MAGIC, MACHINE_ID_MAGIC_SIZE);
    avz_sim_fill_random(out + MACHINE_ID_MAGIC_SIZE, MACHINE_ID_SIZE - MACHINE_ID_MAGIC_SIZE);
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
    avz_sim_machine_identifier_fresh(buffer);
    return true;
}
