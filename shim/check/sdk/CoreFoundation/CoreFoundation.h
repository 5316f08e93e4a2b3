/*
 * CoreFoundation/CoreFoundation.h — compile-check stand-in (NOT Apple's header).
 *
 * The CoreFoundation types applevz.h names, and the CF functions the Rust side
 * calls (it may call only functions that both the real CoreFoundation and the
 * simulator in shim/sim/ provide, with identical types). The objc_bridge
 * attributes make ARC demand __bridge casts between NSError * and CFErrorRef
 * (and NSString * / CFStringRef) exactly as the real SDK does.
 */
#ifndef AVZ_CHECK_COREFOUNDATION_H
#define AVZ_CHECK_COREFOUNDATION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef unsigned char Boolean;
typedef signed long CFIndex;
typedef uint32_t UInt32;
typedef UInt32 CFStringEncoding;

#define kCFStringEncodingUTF8 ((CFStringEncoding)0x08000100)

typedef const void *CFTypeRef;

#if defined(__OBJC__)
@class NSString, NSError;
typedef const struct __attribute__((objc_bridge(NSString))) __CFString *CFStringRef;
typedef struct __attribute__((objc_bridge(NSError))) __CFError *CFErrorRef;
#else
typedef const struct __CFString *CFStringRef;
typedef struct __CFError *CFErrorRef;
#endif

typedef CFStringRef CFErrorDomain;

/* Memory management: CFRetain returns its argument, which the caller then owns. */
CFTypeRef CFRetain(CFTypeRef cf);
void CFRelease(CFTypeRef cf);

/* CFError ("Get" = borrowed result, "Copy" = +1 result). */
CFIndex CFErrorGetCode(CFErrorRef err);
CFErrorDomain CFErrorGetDomain(CFErrorRef err);
CFStringRef CFErrorCopyDescription(CFErrorRef err);

/* CFString. */
CFIndex CFStringGetLength(CFStringRef theString);
CFIndex CFStringGetMaximumSizeForEncoding(CFIndex length, CFStringEncoding encoding);
Boolean CFStringGetCString(CFStringRef theString, char *buffer, CFIndex bufferSize,
                           CFStringEncoding encoding);

#ifdef __cplusplus
}
#endif

#endif
