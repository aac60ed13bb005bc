/*
 * rnic_opcodes.h — BTH opcodes and their headers (IBTA vol 1 9.2, 9.3; XRC Annex A14.4):
 * wire definitions only. One table, rnic_op_table, says per opcode which extended headers
 * follow the BTH, its kind, its place in a message and the QP types that carry it;
 * tests/unit/test_opcodes_c.py checks it entry by entry against rnicd/wire/opcodes.py.
 * Like rnic_dp.h, fed to cffi's cdef (keep plain declarations).
 */
#ifndef RNIC_OPCODES_H
#define RNIC_OPCODES_H

#include <stdint.h>

/* Header lengths in bytes (IBTA 9.3.1-9.3.9, A14.4.2, Annex A17: ICRC) */
#define RNIC_BTH_LEN 12
#define RNIC_XRCETH_LEN 4
#define RNIC_DETH_LEN 8
#define RNIC_RETH_LEN 16
#define RNIC_ATOMICETH_LEN 28
#define RNIC_AETH_LEN 4
#define RNIC_ATOMICACKETH_LEN 8
#define RNIC_IMMDT_LEN 4
#define RNIC_IETH_LEN 4
#define RNIC_ICRC_LEN 4

/* BTH fields (9.3.1) and AETH syndromes (9.3.6) */
#define RNIC_BTH_SE 0x80            /* byte 1: solicited event */
#define RNIC_BTH_PAD_SHIFT 4        /* byte 1: pad count, bits 5..4 */
#define RNIC_BTH_TVER_MASK 0x0f     /* byte 1: transport header version, 0 */
#define RNIC_BTH_ACKREQ 0x80        /* byte 8: acknowledge request */
#define RNIC_DEFAULT_PKEY 0xffff    /* bytes 2..3 (10.9.1.1: the default partition) */
#define RNIC_AETH_KIND_SHIFT 5      /* syndrome bits 7..5: 0 ACK, 1 RNR NAK, 3 NAK */
#define RNIC_AETH_ACK 0x1f          /* ACK with the "invalid" credit count: no credits */
#define RNIC_AETH_NAK_SEQ 0x60      /* NAK, PSN sequence error (9.7.5.2.4, code 0) */

/* Transport bits 7..5 of the opcode (9.2; XRC A14.4.1) */
#define RNIC_OPT_RC 0x00
#define RNIC_OPT_UC 0x20
#define RNIC_OPT_RD 0x40
#define RNIC_OPT_UD 0x60
#define RNIC_OPT_XRC 0xa0
#define RNIC_OPT_MASK 0xe0

/* Operation bits 4..0 (9.2 Table 38): the opcode is RNIC_OPT_x | RNIC_OP_y */
#define RNIC_OP_SEND_FIRST 0x00
#define RNIC_OP_SEND_MIDDLE 0x01
#define RNIC_OP_SEND_LAST 0x02
#define RNIC_OP_SEND_LAST_WITH_IMMEDIATE 0x03
#define RNIC_OP_SEND_ONLY 0x04
#define RNIC_OP_SEND_ONLY_WITH_IMMEDIATE 0x05
#define RNIC_OP_RDMA_WRITE_FIRST 0x06
#define RNIC_OP_RDMA_WRITE_MIDDLE 0x07
#define RNIC_OP_RDMA_WRITE_LAST 0x08
#define RNIC_OP_RDMA_WRITE_LAST_WITH_IMMEDIATE 0x09
#define RNIC_OP_RDMA_WRITE_ONLY 0x0a
#define RNIC_OP_RDMA_WRITE_ONLY_WITH_IMMEDIATE 0x0b
#define RNIC_OP_RDMA_READ_REQUEST 0x0c
#define RNIC_OP_RDMA_READ_RESPONSE_FIRST 0x0d
#define RNIC_OP_RDMA_READ_RESPONSE_MIDDLE 0x0e
#define RNIC_OP_RDMA_READ_RESPONSE_LAST 0x0f
#define RNIC_OP_RDMA_READ_RESPONSE_ONLY 0x10
#define RNIC_OP_ACKNOWLEDGE 0x11
#define RNIC_OP_ATOMIC_ACKNOWLEDGE 0x12
#define RNIC_OP_COMPARE_SWAP 0x13
#define RNIC_OP_FETCH_ADD 0x14
#define RNIC_OP_SEND_LAST_WITH_INVALIDATE 0x16
#define RNIC_OP_SEND_ONLY_WITH_INVALIDATE 0x17
#define RNIC_OP_MASK 0x1f

/* rnic_opinfo.hdrs: extended headers after the BTH, bits in wire order (9.2) */
#define RNIC_HDR_XRCETH 0x01
#define RNIC_HDR_DETH 0x02
#define RNIC_HDR_RETH 0x04
#define RNIC_HDR_ATOMICETH 0x08
#define RNIC_HDR_AETH 0x10
#define RNIC_HDR_ATOMICACKETH 0x20
#define RNIC_HDR_IMMDT 0x40
#define RNIC_HDR_IETH 0x80

/* rnic_opinfo.kind */
#define RNIC_KIND_SEND 1
#define RNIC_KIND_WRITE 2
#define RNIC_KIND_READ_REQ 3
#define RNIC_KIND_READ_RESP 4
#define RNIC_KIND_ACK 5
#define RNIC_KIND_ATOMIC 6
#define RNIC_KIND_ATOMIC_ACK 7

/* rnic_opinfo.flags: FIRST and LAST both set is ONLY, neither is MIDDLE (9.4) */
#define RNIC_OPF_VALID 0x01
#define RNIC_OPF_FIRST 0x02
#define RNIC_OPF_LAST 0x04
#define RNIC_OPF_PAYLOAD 0x08     /* may carry payload (SEND, WRITE, READ response) */
#define RNIC_OPF_REQUEST 0x10     /* requester -> responder */

/* rnic_opinfo.qp_types: bits 1 << enum ibv_qp_type */
#define RNIC_QPT_BIT_RC 0x0004
#define RNIC_QPT_BIT_UC 0x0008
#define RNIC_QPT_BIT_UD 0x0010
#define RNIC_QPT_BIT_XRC 0x0600   /* IBV_QPT_XRC_SEND (9) and IBV_QPT_XRC_RECV (10) */

struct rnic_opinfo {
    uint8_t hdrs;           /* RNIC_HDR_* */
    uint8_t hdr_len;        /* bytes of those headers */
    uint8_t kind;           /* RNIC_KIND_*, 0: not an opcode rnicd knows */
    uint8_t flags;          /* RNIC_OPF_* */
    uint16_t qp_types;      /* RNIC_QPT_BIT_* of the QPs whose packets take it */
    uint16_t _rsvd;
};

/* Indexed by the whole opcode byte; RD and CNP are not in it (flags 0). */
extern const struct rnic_opinfo rnic_op_table[256];

#endif /* RNIC_OPCODES_H */
