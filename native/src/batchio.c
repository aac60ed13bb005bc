/*
 * batchio.c — batched, non-blocking UDP datagram I/O (recvmmsg / sendmmsg), IPv4, with UDP
 * GSO and GRO for runs of equal-size RoCEv2 datagrams.
 *
 * Buffers are one contiguous array of count slots of buf_size bytes. The message headers
 * live on the stack, bounded by RNIC_MAX_BATCH; nothing is allocated per call.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1 /* recvmmsg, sendmmsg */
#endif
#include <errno.h>
#include <netinet/in.h>
#include <netinet/udp.h> /* UDP_SEGMENT (GSO), UDP_GRO */
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "rnic_dp.h"

/* recvmmsg into count buffers; with segs, each buffer's GRO segment size (UDP_GRO). */
static int recv_some(int fd, uint8_t *bufs, uint32_t buf_size, uint32_t count, uint32_t *lens,
                     uint32_t *segs, uint32_t *addrs_be, uint16_t *ports)
{
    struct mmsghdr msgs[RNIC_MAX_BATCH];
    struct iovec iov[RNIC_MAX_BATCH];
    struct sockaddr_in from[RNIC_MAX_BATCH];
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } ctl[RNIC_MAX_BATCH];

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
        if (segs) {
            msgs[i].msg_hdr.msg_control = ctl[i].buf;
            msgs[i].msg_hdr.msg_controllen = sizeof(ctl[i].buf);
        }
    }
    /* MSG_TRUNC: msg_len is the datagram's real length, so the caller can see truncation. */
    int n = recvmmsg(fd, msgs, count, MSG_DONTWAIT | MSG_TRUNC, NULL);
    if (n < 0)
        return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -errno;
    for (int i = 0; i < n; i++) {
        struct msghdr *h = &msgs[i].msg_hdr;
        int v4 = h->msg_namelen >= sizeof(struct sockaddr_in) && from[i].sin_family == AF_INET;

        lens[i] = msgs[i].msg_len;
        if (segs) {
            segs[i] = lens[i];
            for (struct cmsghdr *c = CMSG_FIRSTHDR(h); c; c = CMSG_NXTHDR(h, c)) {
                int size;

                if (c->cmsg_level == IPPROTO_UDP && c->cmsg_type == UDP_GRO
                    && c->cmsg_len >= CMSG_LEN(sizeof(int))) {
                    memcpy(&size, CMSG_DATA(c), sizeof(size));
                    if (size > 0)
                        segs[i] = (uint32_t)size;
                }
            }
        }
        if (addrs_be)
            addrs_be[i] = v4 ? from[i].sin_addr.s_addr : 0;
        if (ports)
            ports[i] = v4 ? ntohs(from[i].sin_port) : 0;
    }
    return n;
}

int rnic_recv_batch(int fd, uint8_t *bufs, uint32_t buf_size, uint32_t count,
                    uint32_t *lens, uint32_t *addrs_be, uint16_t *ports)
{
    return recv_some(fd, bufs, buf_size, count, lens, NULL, addrs_be, ports);
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

int rnic_recv_gro(int fd, uint8_t *bufs, uint32_t buf_size, uint32_t count, uint32_t *lens,
                  uint32_t *segs, uint32_t *addrs_be, uint16_t *ports)
{
    return segs ? recv_some(fd, bufs, buf_size, count, lens, segs, addrs_be, ports) : -EINVAL;
}

/* Datagrams from i on that one GSO send can carry: one length, one address. */
static uint32_t gso_run(const uint32_t *lens, const uint32_t *addrs_be, uint32_t i,
                        uint32_t count)
{
    uint32_t n = 1;

    while (i + n < count && n < RNIC_GSO_MAX_SEGS && lens[i + n] == lens[i]
           && addrs_be[i + n] == addrs_be[i] && (uint64_t)(n + 1) * lens[i] <= RNIC_GSO_MAX_BYTES)
        n++;
    return n;
}

int rnic_send_gso(int fd, uint8_t *bufs, uint32_t buf_size, const uint32_t *lens,
                  uint32_t count, const uint32_t *addrs_be, uint16_t port)
{
    struct mmsghdr msgs[RNIC_MAX_BATCH];
    struct iovec iov[RNIC_MAX_BATCH];
    struct sockaddr_in to[RNIC_MAX_BATCH];
    union {
        char buf[CMSG_SPACE(sizeof(uint16_t))];
        struct cmsghdr align;
    } ctl[RNIC_MAX_BATCH];
    uint32_t nmsg = 0, runs[RNIC_MAX_BATCH], done = 0;
    int n;

    if (count > RNIC_MAX_BATCH || !lens || !addrs_be || (count && !bufs))
        return -EINVAL;
    memset(msgs, 0, sizeof(msgs[0]) * count);
    for (uint32_t i = 0; i < count; i += runs[nmsg++]) {
        uint32_t run = gso_run(lens, addrs_be, i, count), len = lens[i];
        struct msghdr *h = &msgs[nmsg].msg_hdr;

        if (len > buf_size || len < 4)
            return -EINVAL;
        runs[nmsg] = run;
        for (uint32_t k = 1; k < run; k++) {        /* the kernel gives segment k ID k */
            uint8_t *icrc = bufs + (size_t)(i + k) * buf_size + len - 4;
            uint32_t v = (uint32_t)icrc[0] | (uint32_t)icrc[1] << 8 | (uint32_t)icrc[2] << 16
                         | (uint32_t)icrc[3] << 24;

            rnic_roce_icrc_put(icrc, v ^ rnic_roce_icrc_id_xor(len - 4, (uint16_t)k));
        }
        for (uint32_t k = 0; k < run; k++) {
            iov[i + k].iov_base = bufs + (size_t)(i + k) * buf_size;
            iov[i + k].iov_len = len;
        }
        h->msg_iov = &iov[i];
        h->msg_iovlen = run;
        memset(&to[nmsg], 0, sizeof(to[nmsg]));
        to[nmsg].sin_family = AF_INET;
        to[nmsg].sin_addr.s_addr = addrs_be[i];
        to[nmsg].sin_port = htons(port);
        h->msg_name = &to[nmsg];
        h->msg_namelen = sizeof(to[nmsg]);
        if (run > 1) {
            struct cmsghdr *c;
            uint16_t size = (uint16_t)len;

            h->msg_control = ctl[nmsg].buf;
            h->msg_controllen = sizeof(ctl[nmsg].buf);
            c = CMSG_FIRSTHDR(h);
            c->cmsg_level = IPPROTO_UDP;
            c->cmsg_type = UDP_SEGMENT;
            c->cmsg_len = CMSG_LEN(sizeof(size));
            memcpy(CMSG_DATA(c), &size, sizeof(size));
        }
    }
    if (nmsg == 0)
        return 0;
    n = sendmmsg(fd, msgs, nmsg, MSG_DONTWAIT);
    if (n < 0)
        return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -errno;
    for (int m = 0; m < n; m++)
        done += runs[m];
    return (int)done;
}
