/* errno.h — compile-check stand-in (NOT Apple's header): Darwin's errno. */
#ifndef AVZ_CHECK_ERRNO_H
#define AVZ_CHECK_ERRNO_H
extern int *__error(void);
#define errno (*__error())
#define ENOENT 2
#define EBADF 9
#define ENOTDIR 20
#define EINVAL 22
#define ENOTSOCK 38
#endif
