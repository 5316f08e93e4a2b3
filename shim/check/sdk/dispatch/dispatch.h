/*
 * dispatch/dispatch.h — compile-check stand-in (NOT Apple's header).
 *
 * Under Objective-C (as on a Mac with OS_OBJECT_USE_OBJC) dispatch objects are
 * Objective-C objects, so ARC retains and releases dispatch_queue_t like any
 * other object: no dispatch_retain/dispatch_release, and a queue captured by a
 * block is retained by the block.
 */
#ifndef AVZ_CHECK_DISPATCH_H
#define AVZ_CHECK_DISPATCH_H

#include <stddef.h>
#include <stdint.h>
#include <objc/NSObject.h>

#pragma clang assume_nonnull begin

@protocol OS_object <NSObject>
@end
@protocol OS_dispatch_object <OS_object>
@end
@protocol OS_dispatch_queue <OS_dispatch_object>
@end
@protocol OS_dispatch_queue_attr <OS_dispatch_object>
@end

typedef NSObject<OS_dispatch_object> *dispatch_object_t;
typedef NSObject<OS_dispatch_queue> *dispatch_queue_t;
typedef NSObject<OS_dispatch_queue_attr> *dispatch_queue_attr_t;

typedef void (^dispatch_block_t)(void);
typedef void (*dispatch_function_t)(void *_Nullable);

#define DISPATCH_QUEUE_SERIAL ((dispatch_queue_attr_t _Nullable)0)

#define AVZ_DISPATCH_AVAILABLE(v) __attribute__((availability(macos, introduced = v)))

typedef enum : unsigned long {
    DISPATCH_AUTORELEASE_FREQUENCY_INHERIT AVZ_DISPATCH_AVAILABLE(10.12) = 0,
    DISPATCH_AUTORELEASE_FREQUENCY_WORK_ITEM AVZ_DISPATCH_AVAILABLE(10.12) = 1,
    DISPATCH_AUTORELEASE_FREQUENCY_NEVER AVZ_DISPATCH_AVAILABLE(10.12) = 2,
} dispatch_autorelease_frequency_t;

/* Not a +1 result (unlike dispatch_queue_create): the SDK does not mark it
 * DISPATCH_RETURNS_RETAINED, so ARC treats the attribute as autoreleased. */
AVZ_DISPATCH_AVAILABLE(10.12) __attribute__((warn_unused_result)) dispatch_queue_attr_t
dispatch_queue_attr_make_with_autorelease_frequency(dispatch_queue_attr_t _Nullable attr,
                                                    dispatch_autorelease_frequency_t frequency);

AVZ_DISPATCH_AVAILABLE(10.6) __attribute__((ns_returns_retained, warn_unused_result))
dispatch_queue_t dispatch_queue_create(const char *_Nullable label,
                                       dispatch_queue_attr_t _Nullable attr);

/* <dispatch/time.h> */
typedef uint64_t dispatch_time_t;
#define DISPATCH_TIME_NOW (0ull)
#define NSEC_PER_SEC 1000000000ull
AVZ_DISPATCH_AVAILABLE(10.6) __attribute__((warn_unused_result)) dispatch_time_t
dispatch_time(dispatch_time_t when, int64_t delta);

AVZ_DISPATCH_AVAILABLE(10.6) void dispatch_async(dispatch_queue_t queue, dispatch_block_t block);
AVZ_DISPATCH_AVAILABLE(10.6) void dispatch_after(dispatch_time_t when, dispatch_queue_t queue,
                                                 dispatch_block_t block);
AVZ_DISPATCH_AVAILABLE(10.6) void dispatch_sync(dispatch_queue_t queue,
                                                __attribute__((noescape)) dispatch_block_t block);

AVZ_DISPATCH_AVAILABLE(10.7) void dispatch_queue_set_specific(
    dispatch_queue_t queue, const void *key, void *_Nullable context,
    dispatch_function_t _Nullable destructor);
AVZ_DISPATCH_AVAILABLE(10.7) __attribute__((warn_unused_result)) void *_Nullable
dispatch_get_specific(const void *key);

#pragma clang assume_nonnull end

#endif
