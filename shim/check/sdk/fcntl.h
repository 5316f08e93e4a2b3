/* fcntl.h — compile-check stand-in (NOT Apple's header): what the shim uses, Darwin values. */
#ifndef AVZ_CHECK_FCNTL_H
#define AVZ_CHECK_FCNTL_H
#define F_DUPFD 0
#define F_GETFD 1
#define F_SETFD 2
#define FD_CLOEXEC 1
#define F_DUPFD_CLOEXEC 67
int fcntl(int fildes, int cmd, ...);
#endif
