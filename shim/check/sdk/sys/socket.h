/* sys/socket.h — compile-check stand-in (NOT Apple's header): what the shim uses,
 * Darwin values. */
#ifndef AVZ_CHECK_SYS_SOCKET_H
#define AVZ_CHECK_SYS_SOCKET_H
typedef unsigned int socklen_t;
#define SOCK_STREAM 1
#define SOCK_DGRAM 2
#define SOL_SOCKET 0xffff
#define SO_TYPE 0x1008
int getsockopt(int socket, int level, int option_name, void *option_value,
               socklen_t *option_len);
#endif
