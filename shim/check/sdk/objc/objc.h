/*
 * objc/objc.h — compile-check stand-in (NOT Apple's header).
 *
 * Written for applevz's shim compile check on non-Apple hosts: just the
 * Objective-C runtime basics that the shim (shim/applevz*.m) and Foundation.h below need.
 * `id`, `Class`, `SEL` and `instancetype` are built into clang.
 */
#ifndef AVZ_CHECK_OBJC_OBJC_H
#define AVZ_CHECK_OBJC_OBJC_H

#include <stdbool.h>

/* BOOL is `bool` on Apple silicon and `signed char` on Intel Macs. */
#if defined(__arm64__) || defined(__aarch64__)
typedef bool BOOL;
#else
typedef signed char BOOL;
#endif

#define YES __objc_yes
#define NO __objc_no

#ifndef nil
#define nil ((id)0)
#endif
#ifndef Nil
#define Nil ((Class)0)
#endif

#endif
