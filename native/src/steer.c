/*
 * steer.c — kernel steering of RoCEv2 datagrams to the engine that owns their QP (docs/
 * engines.md): the engines' UDP sockets share port 4791 in one SO_REUSEPORT group, and a
 * classic BPF program, which the kernel runs on each datagram's UDP payload, picks the
 * socket from the BTH's destination QP. Unprivileged (SO_ATTACH_REUSEPORT_CBPF needs no
 * capability).
 */
#include <errno.h>
#include <linux/filter.h>
#include <sys/socket.h>

#include "rnic_dp.h"

#ifndef SO_ATTACH_REUSEPORT_CBPF
#define SO_ATTACH_REUSEPORT_CBPF 51
#endif

int rnic_steer_by_qpn(int fd, uint32_t nsocks)
{
    if (nsocks == 0 || nsocks > RNIC_STEER_MAX)
        return -EINVAL;
    struct sock_filter code[] = {
        /* BTH bytes 4..7: 8 reserved bits, then DestQP (IBTA 9.2); the load is big-endian.
         * A datagram shorter than that ends the program with 0: the first socket. */
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, 4),
        BPF_STMT(BPF_ALU | BPF_AND | BPF_K, 0x00ffffff),
        BPF_STMT(BPF_ALU | BPF_MOD | BPF_K, nsocks),
        BPF_STMT(BPF_RET | BPF_A, 0),
    };
    struct sock_fprog prog = {.len = sizeof(code) / sizeof(code[0]), .filter = code};

    if (setsockopt(fd, SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, &prog, sizeof(prog)) < 0)
        return -errno;
    return 0;
}
