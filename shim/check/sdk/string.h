/* string.h — compile-check stand-in (NOT Apple's header): what the shim uses. */
#ifndef AVZ_CHECK_STRING_H
#define AVZ_CHECK_STRING_H
#include <stddef.h>
char *strerror(int errnum);
size_t strlen(const char *s);
void *memcpy(void *restrict dst, const void *restrict src, size_t n);
#endif
