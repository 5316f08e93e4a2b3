/*
 * cf.h — the CoreFoundation subset provided by the simulator (shim/sim/).
 *
 * The Rust side calls these functions under their real CoreFoundation names and types,
 * so the same code runs against CoreFoundation.framework on macOS and against the
 * simulator everywhere else. Keep this list minimal: every declaration here must exist,
 * with exactly this type, in the real CoreFoundation.
 *
 * Every simulator object (CFError, CFString, avz_config, avz_vm) is reference counted
 * and released with CFRelease, like its CoreFoundation counterpart. As in
 * CoreFoundation, passing NULL or an object that is not alive is a programming error:
 * the simulator prints what went wrong and aborts instead of corrupting memory.
 */
#ifndef APPLEVZ_SIM_CF_H
#define APPLEVZ_SIM_CF_H

#include "../../include/applevz.h"

#if defined(__APPLE__)
#error "shim/sim/ is the simulator for non-Apple targets; on Apple targets use CoreFoundation"
#endif

#ifdef __cplusplus
extern "C" {
#endif

typedef signed long CFIndex;
typedef unsigned char Boolean;
typedef uint32_t CFStringEncoding;
typedef const struct __CFString *CFStringRef;

/* The only encoding the simulator converts to. */
#define kCFStringEncodingUTF8 0x08000100u

/* Returned by CFStringGetMaximumSizeForEncoding when it has no answer. */
#define kCFNotFound ((CFIndex)-1)

/* Adds one reference; returns `cf`. */
CFTypeRef CFRetain(CFTypeRef cf);
/* Drops one reference; the object is destroyed when the last one goes. */
void CFRelease(CFTypeRef cf);

/* The error's code (VZErrorDomain: AVZ_ERROR_*; NSPOSIXErrorDomain: errno). */
CFIndex CFErrorGetCode(CFErrorRef err);
/* Get rule (+0): the domain string is owned by the error. */
CFStringRef CFErrorGetDomain(CFErrorRef err);
/* Create rule (+1): the caller releases the description. */
CFStringRef CFErrorCopyDescription(CFErrorRef err);

/* Length in UTF-16 code units, as CoreFoundation counts. */
CFIndex CFStringGetLength(CFStringRef string);
/* Largest number of bytes `length` UTF-16 units can need in `encoding` (without the
 * terminating NUL); kCFNotFound for encodings other than UTF-8 or on overflow. */
CFIndex CFStringGetMaximumSizeForEncoding(CFIndex length, CFStringEncoding encoding);
/* Copies the string, NUL-terminated, into `buffer` (`buffer_size` bytes). False when it
 * does not fit or `encoding` is not kCFStringEncodingUTF8. */
Boolean CFStringGetCString(CFStringRef string, char *buffer, CFIndex buffer_size,
                           CFStringEncoding encoding);

#ifdef __cplusplus
}
#endif

#endif /* APPLEVZ_SIM_CF_H */
