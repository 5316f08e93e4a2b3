/* unistd.h — compile-check stand-in (NOT Apple's header): what the shim uses. */
#ifndef AVZ_CHECK_UNISTD_H
#define AVZ_CHECK_UNISTD_H
#define F_OK 0
int access(const char *path, int mode);
int close(int fildes);
int dup(int fildes);
#endif
