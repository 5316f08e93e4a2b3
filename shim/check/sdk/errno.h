/* errno.h — compile-check stand-in (NOT Apple's header): Darwin's errno. */
#ifndef AVZ_CHECK_ERRNO_H
#define AVZ_CHECK_ERRNO_H
extern int *__error(void);
#define errno (*__error())
#define EBADF 9
#define EINVAL 22
#endif
