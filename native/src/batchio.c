/*
 * batchio.c — batched, non-blocking UDP datagram I/O (recvmmsg / sendmmsg), IPv4.
 *
 * Buffers are one contiguous array of count slots of buf_size bytes. The message headers
 * live on the stack, bounded by RNIC_MAX_BATCH; nothing is allocated per call.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1 /* recvmmsg, sendmmsg */
#endif
#include <errno.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "rnic_dp.h"

int rnic_recv_batch(int fd, uint8_t *bufs, uint32_t buf_size, uint32_t count,
                    uint32_t *lens, uint32_t *addrs_be, uint16_t *ports)
{
    struct mmsghdr msgs[RNIC_MAX_BATCH];
    struct iovec iov[RNIC_MAX_BATCH];
    struct sockaddr_in from[RNIC_MAX_BATCH];

    if (count > RNIC_MAX_BATCH || !lens || (count && !bufs))
        return -EINVAL;
    if (count == 0)
        return 0;
    memset(msgs, 0, sizeof(msgs[0]) * count);
    for (uint32_t i = 0; i < count; i++) {
        iov[i].iov_base = bufs + (size_t)i * buf_size;
        iov[i].iov_len = buf_size;
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        msgs[i].msg_hdr.msg_name = &from[i];
        msgs[i].msg_hdr.msg_namelen = sizeof(from[i]);
    }
    /* MSG_TRUNC: msg_len is the datagram's real length, so the caller can see truncation. */
    int n = recvmmsg(fd, msgs, count, MSG_DONTWAIT | MSG_TRUNC, NULL);
    if (n < 0)
        return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -errno;
    for (int i = 0; i < n; i++) {
        int v4 = msgs[i].msg_hdr.msg_namelen >= sizeof(struct sockaddr_in) &&
                 from[i].sin_family == AF_INET;
        lens[i] = msgs[i].msg_len;
        if (addrs_be)
            addrs_be[i] = v4 ? from[i].sin_addr.s_addr : 0;
        if (ports)
            ports[i] = v4 ? ntohs(from[i].sin_port) : 0;
    }
    return n;
}

int rnic_send_batch(int fd, const uint8_t *bufs, uint32_t buf_size, const uint32_t *lens,
                    uint32_t count, const uint32_t *addrs_be, const uint16_t *ports)
{
    struct mmsghdr msgs[RNIC_MAX_BATCH];
    struct iovec iov[RNIC_MAX_BATCH];
    struct sockaddr_in to[RNIC_MAX_BATCH];

    if (count > RNIC_MAX_BATCH || !lens || (count && !bufs) || (!addrs_be != !ports))
        return -EINVAL;
    if (count == 0)
        return 0;
    memset(msgs, 0, sizeof(msgs[0]) * count);
    for (uint32_t i = 0; i < count; i++) {
        if (lens[i] > buf_size)
            return -EINVAL;
        iov[i].iov_base = (void *)(bufs + (size_t)i * buf_size);
        iov[i].iov_len = lens[i];
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        if (addrs_be) {
            memset(&to[i], 0, sizeof(to[i]));
            to[i].sin_family = AF_INET;
            to[i].sin_addr.s_addr = addrs_be[i];
            to[i].sin_port = htons(ports[i]);
            msgs[i].msg_hdr.msg_name = &to[i];
            msgs[i].msg_hdr.msg_namelen = sizeof(to[i]);
        }
    }
    int n = sendmmsg(fd, msgs, count, MSG_DONTWAIT);
    if (n < 0)
        return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -errno;
    return n;
}
