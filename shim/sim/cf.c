/*
 * cf.c — the simulator's object model and its CoreFoundation subset: reference
 * counting, the live-object counter, CFError and CFString.
 */
#if !defined(_GNU_SOURCE) && !defined(_DEFAULT_SOURCE)
#define _DEFAULT_SOURCE 1
#endif

#include "internal.h"
#include "avz_sim.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define OBJECT_MAGIC 0x415a5653u /* alive */
#define DEAD_MAGIC 0x44454144u   /* freed (best effort: the memory is gone) */

/* ---------------------------------------------------------------------------------- */
/* Diagnostics, allocation, time                                                      */
/* ---------------------------------------------------------------------------------- */

void avz_sim_fatal(const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    fputs("applevz simulator: ", stderr);
    vfprintf(stderr, fmt, args);
    fputc('\n', stderr);
    va_end(args);
    fflush(stderr);
    abort();
}

void *avz_sim_alloc(size_t size) {
    void *p = calloc(1, size == 0 ? 1 : size);
    if (p == NULL) {
        avz_sim_fatal("out of memory (%zu bytes)", size);
    }
    return p;
}

char *avz_sim_strdup(const char *string) {
    if (string == NULL) {
        return NULL;
    }
    size_t n = strlen(string) + 1;
    char *copy = avz_sim_alloc(n);
    memcpy(copy, string, n);
    return copy;
}

/* strerror_r is the XSI variant (int) or the GNU one (char *) depending on feature
 * macros; pick whichever this libc declares. */
static const char *strerror_from_int(int result, char *buffer) {
    return result == 0 ? buffer : "unknown error";
}
static const char *strerror_from_ptr(char *result, char *buffer) {
    (void)buffer;
    return result != NULL ? result : "unknown error";
}
#define AVZ_SIM_STRERROR_PICK(result)                                                    \
    _Generic((result), int: strerror_from_int, char *: strerror_from_ptr)

const char *avz_sim_strerror(int errnum, char *buffer, size_t size) {
    if (size > 0) {
        buffer[0] = '\0';
    }
    const char *text =
        AVZ_SIM_STRERROR_PICK(strerror_r(errnum, buffer, size))(strerror_r(errnum, buffer, size),
                                                                 buffer);
    if (text == NULL || text[0] == '\0') {
        snprintf(buffer, size, "error %d", errnum);
        text = buffer;
    }
    return text;
}

uint64_t avz_sim_monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void avz_sim_cond_init_monotonic(pthread_cond_t *cond) {
    pthread_condattr_t attr;
    if (pthread_condattr_init(&attr) != 0 ||
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC) != 0 ||
        pthread_cond_init(cond, &attr) != 0) {
        avz_sim_fatal("cannot create a condition variable on CLOCK_MONOTONIC");
    }
    pthread_condattr_destroy(&attr);
}

int avz_sim_cond_wait_until(pthread_cond_t *cond, pthread_mutex_t *mutex,
                            uint64_t deadline_ns) {
    struct timespec ts;
    ts.tv_sec = (time_t)(deadline_ns / 1000000000ull);
    ts.tv_nsec = (long)(deadline_ns % 1000000000ull);
    return pthread_cond_timedwait(cond, mutex, &ts);
}

/* ---------------------------------------------------------------------------------- */
/* Live objects                                                                       */
/* ---------------------------------------------------------------------------------- */

static pthread_mutex_t live_mutex = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t live_cond;
static pthread_once_t live_once = PTHREAD_ONCE_INIT;
static int64_t live_count;
static unsigned live_waiters;

static void live_init(void) {
    avz_sim_cond_init_monotonic(&live_cond);
}

static void live_add(int64_t delta) {
    pthread_once(&live_once, live_init);
    pthread_mutex_lock(&live_mutex);
    live_count += delta;
    if (live_count < 0) {
        pthread_mutex_unlock(&live_mutex);
        avz_sim_fatal("live-object count went negative");
    }
    if (live_waiters > 0) {
        pthread_cond_broadcast(&live_cond);
    }
    pthread_mutex_unlock(&live_mutex);
}

int64_t avz_sim_live_objects(void) {
    pthread_mutex_lock(&live_mutex);
    int64_t count = live_count;
    pthread_mutex_unlock(&live_mutex);
    return count;
}

bool avz_sim_wait_live_objects(int64_t count, uint32_t timeout_ms) {
    pthread_once(&live_once, live_init);
    uint64_t deadline = avz_sim_monotonic_ns() + (uint64_t)timeout_ms * 1000000ull;
    pthread_mutex_lock(&live_mutex);
    live_waiters++;
    while (live_count != count) {
        int rc = avz_sim_cond_wait_until(&live_cond, &live_mutex, deadline);
        if (rc == ETIMEDOUT) {
            break;
        }
    }
    live_waiters--;
    bool reached = live_count == count;
    pthread_mutex_unlock(&live_mutex);
    return reached;
}

/* ---------------------------------------------------------------------------------- */
/* Objects and reference counting                                                     */
/* ---------------------------------------------------------------------------------- */

void avz_sim_object_init(avz_sim_object *object, const avz_sim_class *cls) {
    object->magic = OBJECT_MAGIC;
    object->cls = cls;
    atomic_init(&object->refcount, 1);
    live_add(1);
}

void avz_sim_object_free(avz_sim_object *object) {
    object->magic = DEAD_MAGIC;
    free(object);
    live_add(-1);
}

avz_sim_object *avz_sim_object_check(CFTypeRef cf, const avz_sim_class *cls,
                                     const char *function) {
    if (cf == NULL) {
        avz_sim_fatal("%s: NULL argument (CoreFoundation would crash here)", function);
    }
    avz_sim_object *object = (avz_sim_object *)cf;
    if (object->magic != OBJECT_MAGIC) {
        avz_sim_fatal("%s: %p is not a live simulator object (already released?)", function,
                      cf);
    }
    if (cls != NULL && object->cls != cls) {
        avz_sim_fatal("%s: %p is a %s, not a %s", function, cf, object->cls->name, cls->name);
    }
    return object;
}

CFTypeRef CFRetain(CFTypeRef cf) {
    avz_sim_object *object = avz_sim_object_check(cf, NULL, "CFRetain");
    long before = atomic_fetch_add_explicit(&object->refcount, 1, memory_order_relaxed);
    if (before <= 0) {
        avz_sim_fatal("CFRetain: %p (%s) has no references left", cf, object->cls->name);
    }
    return cf;
}

void CFRelease(CFTypeRef cf) {
    avz_sim_object *object = avz_sim_object_check(cf, NULL, "CFRelease");
    long before = atomic_fetch_sub_explicit(&object->refcount, 1, memory_order_acq_rel);
    if (before <= 0) {
        avz_sim_fatal("CFRelease: %p (%s) was over-released", cf, object->cls->name);
    }
    if (before == 1) {
        object->cls->last_release(object);
    }
}

/* ---------------------------------------------------------------------------------- */
/* CFString                                                                           */
/* ---------------------------------------------------------------------------------- */

struct __CFString {
    avz_sim_object base;
    CFIndex utf16_length;
    size_t byte_length;
    char bytes[]; /* valid UTF-8, NUL-terminated */
};

static void string_last_release(void *object) {
    avz_sim_object_free(object);
}

static const avz_sim_class string_class = {"CFString", string_last_release};

/* Length of the valid UTF-8 sequence at s[0..n) and its code point, or 0 when the bytes
 * there are not valid UTF-8 (overlong forms, surrogates and values past U+10FFFF
 * included). */
static size_t utf8_sequence(const unsigned char *s, size_t n, uint32_t *code_point) {
    unsigned char c = s[0];
    size_t length;
    uint32_t cp, min;
    if (c < 0x80) {
        *code_point = c;
        return 1;
    } else if ((c & 0xE0) == 0xC0) {
        length = 2;
        cp = c & 0x1Fu;
        min = 0x80;
    } else if ((c & 0xF0) == 0xE0) {
        length = 3;
        cp = c & 0x0Fu;
        min = 0x800;
    } else if ((c & 0xF8) == 0xF0) {
        length = 4;
        cp = c & 0x07u;
        min = 0x10000;
    } else {
        return 0;
    }
    if (n < length) {
        return 0;
    }
    for (size_t i = 1; i < length; i++) {
        if ((s[i] & 0xC0) != 0x80) {
            return 0;
        }
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
        return 0;
    }
    *code_point = cp;
    return length;
}

/* Returns +1: a string holding `utf8`, with invalid bytes replaced by U+FFFD. */
static CFStringRef string_create(const char *utf8) {
    const unsigned char *in = (const unsigned char *)(utf8 != NULL ? utf8 : "");
    size_t n = strlen((const char *)in);
    /* Every input byte becomes at most 3 output bytes. */
    char *scratch = avz_sim_alloc(n * 3 + 1);
    size_t out = 0;
    CFIndex units = 0;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t length = utf8_sequence(in + i, n - i, &cp);
        if (length == 0) {
            memcpy(scratch + out, "\xEF\xBF\xBD", 3);
            out += 3;
            units += 1;
            i += 1;
        } else {
            memcpy(scratch + out, in + i, length);
            out += length;
            units += cp >= 0x10000 ? 2 : 1;
            i += length;
        }
    }
    struct __CFString *string = avz_sim_alloc(sizeof *string + out + 1);
    memcpy(string->bytes, scratch, out);
    string->bytes[out] = '\0';
    string->byte_length = out;
    string->utf16_length = units;
    free(scratch);
    avz_sim_object_init(&string->base, &string_class);
    return string;
}

static const struct __CFString *string_check(CFStringRef string, const char *function) {
    return (const struct __CFString *)avz_sim_object_check(string, &string_class, function);
}

CFIndex CFStringGetLength(CFStringRef string) {
    return string_check(string, "CFStringGetLength")->utf16_length;
}

CFIndex CFStringGetMaximumSizeForEncoding(CFIndex length, CFStringEncoding encoding) {
    if (encoding != kCFStringEncodingUTF8 || length < 0 || length > LONG_MAX / 3) {
        return kCFNotFound;
    }
    /* A UTF-16 unit needs at most 3 bytes (a surrogate pair: 4 bytes for 2 units). */
    return length * 3;
}

Boolean CFStringGetCString(CFStringRef string, char *buffer, CFIndex buffer_size,
                           CFStringEncoding encoding) {
    const struct __CFString *s = string_check(string, "CFStringGetCString");
    if (encoding != kCFStringEncodingUTF8 || buffer == NULL || buffer_size <= 0 ||
        (size_t)buffer_size < s->byte_length + 1) {
        return 0;
    }
    memcpy(buffer, s->bytes, s->byte_length + 1);
    return 1;
}

/* ---------------------------------------------------------------------------------- */
/* CFError                                                                            */
/* ---------------------------------------------------------------------------------- */

struct __CFError {
    avz_sim_object base;
    CFIndex code;
    CFStringRef domain;
    CFStringRef description;
};

static void error_last_release(void *object) {
    struct __CFError *error = object;
    CFRelease(error->domain);
    CFRelease(error->description);
    avz_sim_object_free(&error->base);
}

static const avz_sim_class error_class = {"CFError", error_last_release};

CFErrorRef avz_sim_error_createv(const char *domain, CFIndex code, const char *fmt,
                                 va_list args) {
    va_list copy;
    va_copy(copy, args);
    int n = vsnprintf(NULL, 0, fmt, copy);
    va_end(copy);
    if (n < 0) {
        avz_sim_fatal("cannot format an error description (\"%s\")", fmt);
    }
    char *text = avz_sim_alloc((size_t)n + 1);
    vsnprintf(text, (size_t)n + 1, fmt, args);

    struct __CFError *error = avz_sim_alloc(sizeof *error);
    error->code = code;
    error->domain = string_create(domain);
    error->description = string_create(text);
    free(text);
    avz_sim_object_init(&error->base, &error_class);
    return error;
}

CFErrorRef avz_sim_error_create(const char *domain, CFIndex code, const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    CFErrorRef error = avz_sim_error_createv(domain, code, fmt, args);
    va_end(args);
    return error;
}

bool avz_sim_fail(CFErrorRef *error, const char *domain, CFIndex code, const char *fmt,
                  ...) {
    if (error != NULL) {
        va_list args;
        va_start(args, fmt);
        *error = avz_sim_error_createv(domain, code, fmt, args);
        va_end(args);
    }
    return false;
}

static struct __CFError *error_check(CFErrorRef error, const char *function) {
    return (struct __CFError *)avz_sim_object_check(error, &error_class, function);
}

CFIndex CFErrorGetCode(CFErrorRef err) {
    return error_check(err, "CFErrorGetCode")->code;
}

CFStringRef CFErrorGetDomain(CFErrorRef err) {
    return error_check(err, "CFErrorGetDomain")->domain;
}

CFStringRef CFErrorCopyDescription(CFErrorRef err) {
    return CFRetain(error_check(err, "CFErrorCopyDescription")->description);
}
