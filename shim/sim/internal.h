/*
 * internal.h — shared between the simulator's own files only (not installed, not
 * part of the ABI). Every name here carries the avz_sim_ prefix and hidden visibility.
 */
#ifndef APPLEVZ_SIM_INTERNAL_H
#define APPLEVZ_SIM_INTERNAL_H

#include "cf.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#if defined(__GNUC__) || defined(__clang__)
#define AVZ_SIM_HIDDEN __attribute__((visibility("hidden")))
#define AVZ_SIM_PRINTF(fmt, args) __attribute__((format(printf, fmt, args)))
#else
#define AVZ_SIM_HIDDEN
#define AVZ_SIM_PRINTF(fmt, args)
#endif

#define AVZ_SIM_VZ_DOMAIN "VZErrorDomain"
#define AVZ_SIM_POSIX_DOMAIN "NSPOSIXErrorDomain"

/* The class of a simulator object: its name (for diagnostics) and what happens when
 * its reference count reaches zero. */
typedef struct avz_sim_class {
    const char *name;
    void (*last_release)(void *object);
} avz_sim_class;

/* The common header every simulator object starts with. */
typedef struct avz_sim_object {
    uint32_t magic;
    const avz_sim_class *cls;
    atomic_long refcount;
} avz_sim_object;

/* Initialises the header with one reference and counts one more live object. */
AVZ_SIM_HIDDEN void avz_sim_object_init(avz_sim_object *object, const avz_sim_class *cls);
/* Frees an object whose reference count reached zero and counts one live object less.
 * `object` is the start of the malloc'd block. */
AVZ_SIM_HIDDEN void avz_sim_object_free(avz_sim_object *object);
/* Returns `cf` as an object of class `cls`; aborts with a message naming `function`
 * when it is NULL, not alive or of another class (`cls` NULL: any class). */
AVZ_SIM_HIDDEN avz_sim_object *avz_sim_object_check(CFTypeRef cf, const avz_sim_class *cls,
                                                   const char *function);

/* Prints "applevz simulator: <message>" to stderr and aborts. */
_Noreturn AVZ_SIM_HIDDEN void avz_sim_fatal(const char *fmt, ...) AVZ_SIM_PRINTF(1, 2);

/* Allocation that aborts when memory is exhausted. */
AVZ_SIM_HIDDEN void *avz_sim_alloc(size_t size);
AVZ_SIM_HIDDEN char *avz_sim_strdup(const char *string); /* NULL stays NULL */

/* Returns +1: a new CFError. The description is formatted with printf rules. */
AVZ_SIM_HIDDEN CFErrorRef avz_sim_error_create(const char *domain, CFIndex code,
                                               const char *fmt, ...) AVZ_SIM_PRINTF(3, 4);
AVZ_SIM_HIDDEN CFErrorRef avz_sim_error_createv(const char *domain, CFIndex code,
                                                const char *fmt, va_list args);
/* Stores a new error in *error when `error` is non-NULL; always returns false so that
 * a failing function can `return avz_sim_fail(...)`. */
AVZ_SIM_HIDDEN bool avz_sim_fail(CFErrorRef *error, const char *domain, CFIndex code,
                                 const char *fmt, ...) AVZ_SIM_PRINTF(4, 5);

/* Thread-safe strerror: writes into `buffer` when needed and returns the text. */
AVZ_SIM_HIDDEN const char *avz_sim_strerror(int errnum, char *buffer, size_t size);

/* CLOCK_MONOTONIC in nanoseconds, and condition variables that wait on it. */
AVZ_SIM_HIDDEN uint64_t avz_sim_monotonic_ns(void);
AVZ_SIM_HIDDEN void avz_sim_cond_init_monotonic(pthread_cond_t *cond);
/* pthread_cond_timedwait until the monotonic `deadline_ns`; returns its result. */
AVZ_SIM_HIDDEN int avz_sim_cond_wait_until(pthread_cond_t *cond, pthread_mutex_t *mutex,
                                           uint64_t deadline_ns);

#endif /* APPLEVZ_SIM_INTERNAL_H */
