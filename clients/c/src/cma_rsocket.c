/* cma_rsocket.c — rsocket(7) for rnicd's librdmacm. rsockets (a sockets API over RDMA
 * connections) are not offered: rsocket() answers EOPNOTSUPP, so no descriptor is ever an
 * rsocket, and every other r* call is what librdmacm does with an ordinary descriptor: the
 * system call itself (rping, ucmatose and udaddy wait on their event channel with rpoll). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <rdma/rsocket.h>
#include <stdarg.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "conn.h"

#define RS_EXPORT __attribute__((visibility("default")))

RS_EXPORT int rsocket(int domain, int type, int protocol)
{
    (void)domain; (void)type; (void)protocol;
    rnic_log("librdmacm: rsockets are not offered by rnicd (EOPNOTSUPP)");
    errno = EOPNOTSUPP;
    return -1;
}

RS_EXPORT int rbind(int s, const struct sockaddr *a, socklen_t l) { return bind(s, a, l); }
RS_EXPORT int rlisten(int s, int backlog) { return listen(s, backlog); }
RS_EXPORT int raccept(int s, struct sockaddr *a, socklen_t *l) { return accept(s, a, l); }
RS_EXPORT int rconnect(int s, const struct sockaddr *a, socklen_t l) { return connect(s, a, l); }
RS_EXPORT int rshutdown(int s, int how) { return shutdown(s, how); }
RS_EXPORT int rclose(int s) { return close(s); }
RS_EXPORT ssize_t rrecv(int s, void *b, size_t n, int f) { return recv(s, b, n, f); }
RS_EXPORT ssize_t rrecvfrom(int s, void *b, size_t n, int f, struct sockaddr *a, socklen_t *l)
{
    return recvfrom(s, b, n, f, a, l);
}
RS_EXPORT ssize_t rrecvmsg(int s, struct msghdr *m, int f) { return recvmsg(s, m, f); }
RS_EXPORT ssize_t rsend(int s, const void *b, size_t n, int f) { return send(s, b, n, f); }
RS_EXPORT ssize_t rsendto(int s, const void *b, size_t n, int f, const struct sockaddr *a,
                          socklen_t l)
{
    return sendto(s, b, n, f, a, l);
}
RS_EXPORT ssize_t rsendmsg(int s, const struct msghdr *m, int f) { return sendmsg(s, m, f); }
RS_EXPORT ssize_t rread(int s, void *b, size_t n) { return read(s, b, n); }
RS_EXPORT ssize_t rreadv(int s, const struct iovec *v, int n) { return readv(s, v, n); }
RS_EXPORT ssize_t rwrite(int s, const void *b, size_t n) { return write(s, b, n); }
RS_EXPORT ssize_t rwritev(int s, const struct iovec *v, int n) { return writev(s, v, n); }
RS_EXPORT int rpoll(struct pollfd *fds, nfds_t n, int timeout) { return poll(fds, n, timeout); }
RS_EXPORT int rselect(int n, fd_set *r, fd_set *w, fd_set *e, struct timeval *t)
{
    return select(n, r, w, e, t);
}
RS_EXPORT int rgetpeername(int s, struct sockaddr *a, socklen_t *l) { return getpeername(s, a, l); }
RS_EXPORT int rgetsockname(int s, struct sockaddr *a, socklen_t *l) { return getsockname(s, a, l); }
RS_EXPORT int rsetsockopt(int s, int level, int name, const void *v, socklen_t l)
{
    if (level == SOL_RDMA) {
        errno = ENOTSOCK;          /* an rsocket option on a descriptor that is none */
        return -1;
    }
    return setsockopt(s, level, name, v, l);
}
RS_EXPORT int rgetsockopt(int s, int level, int name, void *v, socklen_t *l)
{
    if (level == SOL_RDMA) {
        errno = ENOTSOCK;
        return -1;
    }
    return getsockopt(s, level, name, v, l);
}
RS_EXPORT int rfcntl(int s, int cmd, ...)
{
    va_list ap;
    va_start(ap, cmd);
    long arg = va_arg(ap, long);
    va_end(ap);
    return fcntl(s, cmd, arg);
}

/* RDMA-mapped buffers exist only on rsockets */
RS_EXPORT off_t riomap(int s, void *b, size_t n, int prot, int flags, off_t off)
{
    (void)s; (void)b; (void)n; (void)prot; (void)flags; (void)off;
    errno = ENOTSOCK;
    return -1;
}
RS_EXPORT int riounmap(int s, void *b, size_t n)
{
    (void)s; (void)b; (void)n;
    errno = ENOTSOCK;
    return -1;
}
RS_EXPORT size_t riowrite(int s, const void *b, size_t n, off_t off, int flags)
{
    (void)s; (void)b; (void)n; (void)off; (void)flags;
    errno = ENOTSOCK;
    return 0;
}
