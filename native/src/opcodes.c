/*
 * opcodes.c — rnic_op_table (rnic_opcodes.h): IBTA 9.2 Table 38 for RC, UC and UD, and
 * Annex A14.4.1 for XRC (RC's operations; every XRC request carries an XRCETH, A14.4.2;
 * every UD packet a DETH, 9.3.3).
 */
#include "rnic_opcodes.h"

#define HLEN(h) (((h) & RNIC_HDR_XRCETH ? RNIC_XRCETH_LEN : 0)                      \
                 + ((h) & RNIC_HDR_DETH ? RNIC_DETH_LEN : 0)                        \
                 + ((h) & RNIC_HDR_RETH ? RNIC_RETH_LEN : 0)                        \
                 + ((h) & RNIC_HDR_ATOMICETH ? RNIC_ATOMICETH_LEN : 0)              \
                 + ((h) & RNIC_HDR_AETH ? RNIC_AETH_LEN : 0)                        \
                 + ((h) & RNIC_HDR_ATOMICACKETH ? RNIC_ATOMICACKETH_LEN : 0)        \
                 + ((h) & RNIC_HDR_IMMDT ? RNIC_IMMDT_LEN : 0)                      \
                 + ((h) & RNIC_HDR_IETH ? RNIC_IETH_LEN : 0))
#define IS_REQ(k) ((k) == RNIC_KIND_SEND || (k) == RNIC_KIND_WRITE                   \
                   || (k) == RNIC_KIND_READ_REQ || (k) == RNIC_KIND_ATOMIC)
#define HAS_PAY(k) ((k) == RNIC_KIND_SEND || (k) == RNIC_KIND_WRITE || (k) == RNIC_KIND_READ_RESP)
/* the headers of transport t's packet of kind k: h plus XRCETH (XRC requests) or DETH (UD) */
#define THDRS(t, k, h) ((h) | ((t) == RNIC_OPT_XRC && IS_REQ(k) ? RNIC_HDR_XRCETH : 0)    \
                        | ((t) == RNIC_OPT_UD ? RNIC_HDR_DETH : 0))
#define QPT(t) ((t) == RNIC_OPT_RC ? RNIC_QPT_BIT_RC : (t) == RNIC_OPT_UC ? RNIC_QPT_BIT_UC \
                : (t) == RNIC_OPT_UD ? RNIC_QPT_BIT_UD : RNIC_QPT_BIT_XRC)
#define F RNIC_OPF_FIRST
#define M 0
#define L RNIC_OPF_LAST
#define O (RNIC_OPF_FIRST | RNIC_OPF_LAST)
#define E(t, op, k, pos, h)                                                          \
    [(t) | RNIC_OP_##op] = { THDRS(t, RNIC_KIND_##k, h), HLEN(THDRS(t, RNIC_KIND_##k, h)), \
                             RNIC_KIND_##k,                                         \
                             RNIC_OPF_VALID | (pos)                                 \
                             | (IS_REQ(RNIC_KIND_##k) ? RNIC_OPF_REQUEST : 0)        \
                             | (HAS_PAY(RNIC_KIND_##k) ? RNIC_OPF_PAYLOAD : 0), QPT(t), 0 },

/* SEND and RDMA WRITE: RC, UC, XRC (UC has nothing else, 9.8) */
#define SEND_WRITE(t)                                                                \
    E(t, SEND_FIRST, SEND, F, 0)                                                     \
    E(t, SEND_MIDDLE, SEND, M, 0)                                                    \
    E(t, SEND_LAST, SEND, L, 0)                                                      \
    E(t, SEND_LAST_WITH_IMMEDIATE, SEND, L, RNIC_HDR_IMMDT)                          \
    E(t, SEND_ONLY, SEND, O, 0)                                                      \
    E(t, SEND_ONLY_WITH_IMMEDIATE, SEND, O, RNIC_HDR_IMMDT)                          \
    E(t, RDMA_WRITE_FIRST, WRITE, F, RNIC_HDR_RETH)                                  \
    E(t, RDMA_WRITE_MIDDLE, WRITE, M, 0)                                             \
    E(t, RDMA_WRITE_LAST, WRITE, L, 0)                                               \
    E(t, RDMA_WRITE_LAST_WITH_IMMEDIATE, WRITE, L, RNIC_HDR_IMMDT)                   \
    E(t, RDMA_WRITE_ONLY, WRITE, O, RNIC_HDR_RETH)                                   \
    E(t, RDMA_WRITE_ONLY_WITH_IMMEDIATE, WRITE, O, RNIC_HDR_RETH | RNIC_HDR_IMMDT)
/* the rest of the reliable transports' operations: RC, XRC */
#define RELIABLE(t)                                                                  \
    SEND_WRITE(t)                                                                    \
    E(t, RDMA_READ_REQUEST, READ_REQ, O, RNIC_HDR_RETH)                              \
    E(t, RDMA_READ_RESPONSE_FIRST, READ_RESP, F, RNIC_HDR_AETH)                      \
    E(t, RDMA_READ_RESPONSE_MIDDLE, READ_RESP, M, 0)                                 \
    E(t, RDMA_READ_RESPONSE_LAST, READ_RESP, L, RNIC_HDR_AETH)                       \
    E(t, RDMA_READ_RESPONSE_ONLY, READ_RESP, O, RNIC_HDR_AETH)                       \
    E(t, ACKNOWLEDGE, ACK, O, RNIC_HDR_AETH)                                         \
    E(t, ATOMIC_ACKNOWLEDGE, ATOMIC_ACK, O, RNIC_HDR_AETH | RNIC_HDR_ATOMICACKETH)   \
    E(t, COMPARE_SWAP, ATOMIC, O, RNIC_HDR_ATOMICETH)                                \
    E(t, FETCH_ADD, ATOMIC, O, RNIC_HDR_ATOMICETH)                                   \
    E(t, SEND_LAST_WITH_INVALIDATE, SEND, L, RNIC_HDR_IETH)                          \
    E(t, SEND_ONLY_WITH_INVALIDATE, SEND, O, RNIC_HDR_IETH)

const struct rnic_opinfo rnic_op_table[256] = {
    RELIABLE(RNIC_OPT_RC)
    SEND_WRITE(RNIC_OPT_UC)
    E(RNIC_OPT_UD, SEND_ONLY, SEND, O, 0)
    E(RNIC_OPT_UD, SEND_ONLY_WITH_IMMEDIATE, SEND, O, RNIC_HDR_IMMDT)
    RELIABLE(RNIC_OPT_XRC)
};

#undef F
#undef M
#undef L
#undef O
#undef E
#undef SEND_WRITE
#undef RELIABLE
#undef HLEN
#undef IS_REQ
#undef HAS_PAY
#undef THDRS
#undef QPT
