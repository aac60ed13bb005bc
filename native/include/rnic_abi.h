/*
 * rnic_abi.h — THE shared-memory ABI between rnicd and its clients.
 *
 * Every queue (SQ, RQ, SRQ, CQ) is a ring in its own memfd mapping:
 *
 *   offset 0    struct rnic_ring_hdr (256 bytes, four cache lines)
 *   offset 256  num_entries entries of entry_size bytes each
 *
 * Indices (prod, cons) are free-running uint32 counters; the slot of index i is
 * i & (num_entries - 1) (num_entries is a power of two). A ring is full when
 * prod - cons == num_entries. Each index has exactly one writer:
 *
 *   ring   producer (writes prod)   consumer (writes cons)
 *   SQ     client (post_send)       daemon, when the WQE is retired (completed, signaled or not)
 *   RQ     client (post_recv)       daemon, when the WQE is consumed by an incoming message
 *   SRQ    client (post_srq_recv)   daemon, likewise
 *   CQ     daemon                   client (poll_cq)
 *
 * Writers publish with release stores, readers load with acquire (rnic_ring_* helpers
 * below, C11 atomics). The daemon never trusts anything a client wrote: it copies an entry
 * out before validating it and treats an impossible index as a fatal QP/CQ error.
 *
 * This header is included by the daemon's data plane, by the Python client (through
 * cffi) and by any C client. Bump RNIC_ABI_VERSION on any layout change.
 */
#ifndef RNIC_ABI_H
#define RNIC_ABI_H

#include <stdint.h>

#define RNIC_ABI_VERSION 2   /* 2: memory windows (BIND_MW, LOCAL_INV, SEND_WITH_INV) */
#define RNIC_RING_MAGIC 0x524e4943u /* "RNIC" */
#define RNIC_RING_HDR_SIZE 256

enum rnic_ring_kind {
    RNIC_RING_SQ = 1,
    RNIC_RING_RQ = 2,
    RNIC_RING_SRQ = 3,
    RNIC_RING_CQ = 4,
};

/* rnic_ring_hdr.arm values (CQ only): set by the client in req_notify, cleared by the
 * daemon when it signals the completion channel (IBTA 11.4.2.2 request completion
 * notification). */
enum rnic_cq_arm {
    RNIC_CQ_DISARMED = 0,
    RNIC_CQ_ARM_NEXT = 1,      /* next completion of any kind */
    RNIC_CQ_ARM_SOLICITED = 2, /* next solicited or error completion */
};

struct rnic_ring_hdr {
    /* line 0: written once by the daemon at creation, read-only afterwards */
    uint32_t magic;       /* RNIC_RING_MAGIC */
    uint32_t abi_version; /* RNIC_ABI_VERSION */
    uint32_t kind;        /* enum rnic_ring_kind */
    uint32_t entry_size;  /* bytes per entry, multiple of 16 */
    uint32_t num_entries; /* power of two */
    uint32_t max_sge;     /* SGEs an entry can hold */
    uint32_t max_inline;  /* SQ: inline bytes an entry can hold */
    uint32_t _rsvd0[9];
    /* line 1: producer index */
    uint32_t prod;
    uint32_t _rsvd1[15];
    /* line 2: consumer index */
    uint32_t cons;
    uint32_t _rsvd2[15];
    /* line 3: notification state */
    uint32_t arm;       /* CQ: enum rnic_cq_arm, client sets, daemon clears */
    uint32_t events;    /* CQ: completion events signalled (daemon increments) */
    uint32_t polling;   /* daemon sets while it polls this context: doorbell may be skipped */
    uint32_t error;     /* daemon sets non-zero when the queue entered an error state */
    uint32_t doorbell;  /* SQ/RQ: 1 + the index (in hello's doorbell_fds) of the doorbell that
                         * wakes the engine serving the queue; 0: not known, ring them all */
    uint32_t poller_cpu; /* CQ: 1 + the CPU of the client's last empty poll, which then
                          * yielded; an engine on that CPU that writes a CQE takes it (0) and
                          * yields the CPU to the poller (docs/engines.md). Only a hint: 0,
                          * what a client that does not set it leaves, is none. */
    uint32_t _rsvd3[10];
};

/* Scatter/gather element, as struct ibv_sge. */
struct rnic_sge {
    uint64_t addr;   /* client virtual address inside the MR */
    uint32_t length;
    uint32_t lkey;
};

/* rnic_send_wqe.send_flags: the IBV_SEND_* values of libibverbs. */
#define RNIC_SEND_FENCE 1u
#define RNIC_SEND_SIGNALED 2u
#define RNIC_SEND_SOLICITED 4u
#define RNIC_SEND_INLINE 8u

/* Send work request (struct ibv_send_wr, flattened). 64-byte header followed by
 * num_sge struct rnic_sge, or by inline_len bytes of data when RNIC_SEND_INLINE.
 *
 * IBV_WR_BIND_MW (IBTA 10.6.7.2: a local operation, completed in SQ order) carries
 * ibv_send_wr.bind_mw in the fields named bind_*: remote_addr is bind_info.addr,
 * bind_length its length, bind_mw the window's handle, bind_lkey the lkey of bind_info.mr
 * (0: no MR, a type 1 unbind), bind_access its mw_access_flags, rkey the window's new rkey
 * (ibv_inc_rkey of the old one: same index, new key byte), num_sge 0.
 * IBV_WR_LOCAL_INV and IBV_WR_SEND_WITH_INV carry the rkey to invalidate in
 * invalidate_rkey, which shares imm_data's place as in ibv_send_wr (ABI version 2). */
struct rnic_send_wqe {
    uint64_t wr_id;
    uint64_t remote_addr;  /* RDMA and atomic; BIND_MW: bind_info.addr */
    union {
        uint64_t compare_add;  /* atomic: compare (CMP_AND_SWP) or add (FETCH_AND_ADD) */
        uint64_t bind_length;  /* BIND_MW: bind_info.length (0: unbind a type 1 window) */
    };
    union {
        uint64_t swap;         /* atomic: swap (CMP_AND_SWP) */
        struct {
            uint32_t bind_mw;      /* BIND_MW: the window's handle (alloc_mw) */
            uint32_t bind_lkey;    /* BIND_MW: lkey of bind_info.mr, 0 for none */
        };
    };
    uint8_t opcode;        /* enum ibv_wr_opcode */
    uint8_t _rsvd0;
    uint16_t num_sge;
    uint32_t send_flags;   /* RNIC_SEND_* */
    union {
        uint32_t imm_data;         /* value of wr.imm_data; sent big-endian on the wire */
        uint32_t invalidate_rkey;  /* LOCAL_INV, SEND_WITH_INV (the IETH of 9.3.9) */
    };
    uint32_t rkey;         /* RDMA and atomic; BIND_MW: the window's new rkey */
    uint32_t inline_len;
    union {
        uint32_t ah;           /* UD: address handle */
        uint32_t bind_access;  /* BIND_MW: bind_info.mw_access_flags (IBV_ACCESS_*) */
    };
    union {
        uint32_t remote_qpn;   /* UD */
        uint32_t remote_srqn;  /* XRC INI QP: the responder's XRC SRQ, sent in the XRCETH
                                * (qp_type.xrc.remote_srqn, IBTA Annex A14) */
    };
    uint32_t remote_qkey;  /* UD */
    struct rnic_sge sg[];
};

/* Receive work request (struct ibv_recv_wr, flattened): 16-byte header + SGEs. */
struct rnic_recv_wqe {
    uint64_t wr_id;
    uint32_t num_sge;
    uint32_t _rsvd0;
    struct rnic_sge sg[];
};

/* Completion (struct ibv_wc). 64 bytes. */
struct rnic_cqe {
    uint64_t wr_id;
    uint32_t status;     /* enum ibv_wc_status */
    uint32_t opcode;     /* enum ibv_wc_opcode */
    uint32_t vendor_err;
    uint32_t byte_len;
    union {
        uint32_t imm_data;          /* IBV_WC_WITH_IMM: value as the sender gave it */
        uint32_t invalidated_rkey;  /* IBV_WC_WITH_INV: the rkey a SEND_WITH_INV invalidated */
    };
    uint32_t qp_num;
    uint32_t src_qp;
    uint32_t wc_flags;   /* IBV_WC_WITH_IMM, IBV_WC_GRH, ... */
    uint16_t pkey_index;
    uint16_t slid;
    uint8_t sl;
    uint8_t dlid_path_bits;
    uint16_t _rsvd0;
    uint32_t _rsvd1[4];
};

#define RNIC_SEND_WQE_HDR_SIZE 64
#define RNIC_RECV_WQE_HDR_SIZE 16
#define RNIC_CQE_SIZE 64

#endif /* RNIC_ABI_H */
