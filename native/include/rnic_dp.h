/*
 * rnic_dp.h — data-plane functions of rnicd._native (not part of the shared-memory ABI).
 *
 * Conventions: functions that can fail return 0 (or a count) on success and -errno on
 * failure; they check every bound they are given and never allocate. native/build_ffi.py
 * feeds this file (comments and preprocessor lines stripped) to cffi's cdef, so keep it
 * to plain C declarations that cffi can parse.
 */
#ifndef RNIC_DP_H
#define RNIC_DP_H

#include <stddef.h>
#include <stdint.h>

#include "rnic_abi.h"
#include "rnic_opcodes.h"

/* Largest count rnic_recv_batch / rnic_send_batch accept in one call. */
#define RNIC_MAX_BATCH 64
/* Most segments of one UDP GSO send (the kernel's UDP_MAX_SEGMENTS), and most bytes (an
 * IPv4 UDP datagram's payload). */
#define RNIC_GSO_MAX_SEGS 64
#define RNIC_GSO_MAX_BYTES 65507
/* Largest message, and largest RDMA READ DMA length (IBTA 9.4.1: 2^31 bytes). */
#define RNIC_DP_MAX_MSG 2147483648u

/* IBV_ACCESS_* bits (rdma-core's enum ibv_access_flags) the checks take */
#define RNIC_DP_ACC_LOCAL_WRITE 1
#define RNIC_DP_ACC_REMOTE_WRITE 2
#define RNIC_DP_ACC_REMOTE_READ 4
#define RNIC_DP_ACC_REMOTE_ATOMIC 8

/* a - b for 24-bit PSNs (IBTA 9.7.1), in (-2^23, 2^23]: the one definition, which
 * core/ calls as wire.roce.psn_diff. */
int32_t rnic_psn_diff(uint32_t a, uint32_t b);

/* rnic_cpu_features() bits: which accelerated paths this CPU runs. */
#define RNIC_CPU_PCLMUL 1
#define RNIC_CPU_SSE42 2
#define RNIC_CPU_VPCLMUL 4

/* ---- crc.c ---------------------------------------------------------------------------- */

/* CRC-32 (IEEE 802.3, reflected 0xEDB88320) with zlib's conventions: pass 0 to start,
 * pass the previous result to continue. Same value as zlib.crc32(buf, crc). */
uint32_t rnic_crc32(uint32_t crc, const uint8_t *buf, size_t len);
/* CRC-32C (Castagnoli, reflected 0x82F63B78; RFC 3385, used by MPA RFC 5044), same
 * conventions as rnic_crc32. */
uint32_t rnic_crc32c(uint32_t crc, const uint8_t *buf, size_t len);
/* Table-only (slicing-by-8) versions, for tests and for CPUs without the instructions. */
uint32_t rnic_crc32_sw(uint32_t crc, const uint8_t *buf, size_t len);
uint32_t rnic_crc32c_sw(uint32_t crc, const uint8_t *buf, size_t len);
/* RNIC_CPU_* bits of the paths rnic_crc32 / rnic_crc32c dispatch to. */
uint32_t rnic_cpu_features(void);

/* ---- icrc.c --------------------------------------------------------------------------- */

/* RoCEv2 ICRC (IBTA Annex A17.3.3) of pkt = BTH + extension headers + payload + pad,
 * without the 4-byte ICRC, as carried in IPv4 (src/dst in network byte order) and UDP
 * (ports in host byte order). Returns the CRC as zlib.crc32 would; rnic_roce_icrc_put
 * writes it in wire order. */
uint32_t rnic_roce_icrc_v4(const uint8_t *pkt, size_t len, uint32_t src_ip_be,
                           uint32_t dst_ip_be, uint16_t sport, uint16_t dport);
/* What to XOR into rnic_roce_icrc_v4's value (computed for IPv4 Identification 0) for the
 * same packet of len bytes carried with Identification ip_id: segment k of a UDP GSO send
 * carries ID k (icrc.c). */
uint32_t rnic_roce_icrc_id_xor(size_t len, uint16_t ip_id);
/* Check the ICRC ending pkt[0..len) (BTH .. ICRC) of a datagram received through a UDP
 * socket, which cannot see the IPv4 header: accepted for Identification 0 (what every
 * datagram rnicd sends alone carries), id_hint (the segment's index in a GRO batch, 0 if
 * unknown), or 1..RNIC_GSO_MAX_SEGS-1 (a GSO segment split by a kernel or NIC on the way).
 * Returns 1 if it matches. A corrupted packet passes with probability 64 / 2^32. */
int rnic_roce_icrc_check_v4(const uint8_t *pkt, size_t len, uint32_t src_ip_be,
                            uint32_t dst_ip_be, uint16_t sport, uint16_t dport, uint16_t id_hint);
/* Store an ICRC value in its 4 wire bytes (least significant byte first). */
void rnic_roce_icrc_put(uint8_t *dst, uint32_t icrc);

/* ---- ring.c --------------------------------------------------------------------------- */

uint32_t rnic_load_acquire(const uint32_t *p);
void rnic_store_release(uint32_t *p, uint32_t v);
uint32_t rnic_xchg(uint32_t *p, uint32_t v);
uint32_t rnic_fetch_add(uint32_t *p, uint32_t v);

/* Bytes of a ring mapping: header + entries, rounded up to 4096. */
size_t rnic_ring_bytes(uint32_t entry_size, uint32_t num_entries);
/* Zero the ring in base[0..size) and fill its header; -EINVAL on bad geometry. */
int rnic_ring_init(void *base, size_t size, uint32_t kind, uint32_t entry_size,
                   uint32_t num_entries, uint32_t max_sge, uint32_t max_inline);
/* Entry of index idx (free-running). Trusts h->entry_size / h->num_entries: use it only on
 * a header this process initialised or validated. */
void *rnic_ring_entry(struct rnic_ring_hdr *h, uint32_t idx);

/* ---- place.c -------------------------------------------------------------------------- */

/* Bounds-checked placement: -ERANGE unless off + n <= len (without wrapping). */
int rnic_copy_in(uint8_t *dst, size_t dst_len, size_t off, const uint8_t *src, size_t n);
int rnic_copy_out(uint8_t *dst, const uint8_t *src, size_t src_len, size_t off, size_t n);

/* ---- batchio.c ------------------------------------------------------------------------ */

/* Receive up to count (<= RNIC_MAX_BATCH) IPv4 UDP datagrams without blocking into
 * bufs[i * buf_size]. lens[i] is the datagram's full length: lens[i] > buf_size means it
 * was truncated. addrs_be[i] (network order) and ports[i] (host order) give the source;
 * either may be NULL. Returns the number received, 0 if none is waiting, or -errno. */
int rnic_recv_batch(int fd, uint8_t *bufs, uint32_t buf_size, uint32_t count,
                    uint32_t *lens, uint32_t *addrs_be, uint16_t *ports);
/* The same from a socket with UDP_GRO on (buf_size at least 65535): segs[i] is the size of
 * the segments buffer i holds (the last may be shorter), lens[i] when it holds one. */
int rnic_recv_gro(int fd, uint8_t *bufs, uint32_t buf_size, uint32_t count, uint32_t *lens,
                  uint32_t *segs, uint32_t *addrs_be, uint16_t *ports);
/* rnic_send_batch for RoCEv2 datagrams to port, with UDP GSO: each run of consecutive
 * datagrams of one length to one address (at most RNIC_GSO_MAX_SEGS, RNIC_GSO_MAX_BYTES)
 * goes as one send the kernel segments; segment k of a run carries IPv4 Identification k,
 * so its ICRC (computed for 0) is adjusted here (rnic_roce_icrc_id_xor). Returns the
 * datagrams sent (0 if the socket buffer is full), or -errno. */
int rnic_send_gso(int fd, uint8_t *bufs, uint32_t buf_size, const uint32_t *lens,
                  uint32_t count, const uint32_t *addrs_be, uint16_t port);
/* Send count (<= RNIC_MAX_BATCH) datagrams bufs[i * buf_size], lens[i] bytes each, to
 * addrs_be[i]:ports[i] (both NULL for a connected socket), without blocking. Returns the
 * number sent (0 if the socket buffer is full), or -errno. */
int rnic_send_batch(int fd, const uint8_t *bufs, uint32_t buf_size, const uint32_t *lens,
                    uint32_t count, const uint32_t *addrs_be, const uint16_t *ports);

/* ---- hdr.c ---------------------------------------------------------------------------- */

/* The fields of a packet's transport headers; rnic_op_table[opcode] says which are written. */
struct rnic_hdr {
    uint8_t opcode;
    uint8_t se;             /* BTH solicited event */
    uint8_t ackreq;         /* BTH AckReq */
    uint8_t pad;            /* BTH pad count, 0..3 */
    uint32_t dest_qp;
    uint32_t psn;
    uint32_t xrc_srqn;      /* XRCETH */
    uint32_t qkey;          /* DETH */
    uint32_t src_qp;        /* DETH */
    uint32_t rkey;          /* RETH, AtomicETH */
    uint32_t dma_len;       /* RETH */
    uint64_t va;            /* RETH, AtomicETH */
    uint64_t swap_add;      /* AtomicETH */
    uint64_t compare;       /* AtomicETH */
    uint64_t orig;          /* AtomicAckETH */
    uint32_t msn;           /* AETH */
    uint32_t imm;           /* ImmDt, or the IETH's R_Key (wire order as an integer) */
    uint8_t syndrome;       /* AETH */
    uint8_t _rsvd[7];
};

/* Write the BTH (default P_Key, TVer 0) and the extended headers of h->opcode to out, which
 * has room for RNIC_BTH_LEN + rnic_op_table[opcode].hdr_len bytes; returns that many, or 0
 * for an opcode not in the table. The one header writer of the data plane. */
uint32_t rnic_hdr_build(uint8_t *out, const struct rnic_hdr *h);

/* ---- rx.c: the responder's fast path (IBTA 9.7.3-9.7.5) --------------------------------- */

/* rnic_dp_mr.flags */
#define RNIC_DP_KEY_MW 1        /* a memory window (IBTA 10.6.7): an rkey, never an lkey */
#define RNIC_DP_KEY_INVALID 2   /* a window not bound, or invalidated: no access at all */

/* A registered region, or a memory window bound to one, as the data plane sees it (IBTA
 * 10.6, 10.6.7). core/ fills one per MR and per window and puts it in
 * rnic_dp_dev.mrs[key >> 8]: windows are entries of the same key table, so that one check
 * (rnic_dp_mr_check) decides every access. A window's base/iova/length/access are its
 * own (inside its MR's), its pd the window's. */
struct rnic_dp_mr {
    uint8_t *base;          /* the daemon's mapping of byte 0 */
    uint64_t iova;          /* the client's address of byte 0 (0 for a zero-based window) */
    uint64_t length;
    uint64_t pd;            /* identity of the protection domain */
    uint32_t rkey;
    uint32_t access;        /* IBV_ACCESS_* */
    uint32_t flags;         /* RNIC_DP_KEY_*; 0 for an MR */
    uint32_t qpn;           /* a type 2B window: the one QP it serves (10.6.7.2.2); 0: any */
};

/* An address handle (IBTA 11.2.2): a UD send WQE names one by its handle, the index of
 * rnic_dp_dev.ahs that core/ gives it; only a QP of the same PD may use it (11.4.1.1). */
struct rnic_dp_ah {
    uint64_t pd;            /* identity of its protection domain */
    uint32_t ip_be;         /* where its datagrams go (RoCEv2: the GID's IPv4 address) */
    uint32_t _rsvd;
};

/* rnic_dp_qp.msg: the message the responder is in the middle of. */
#define RNIC_DP_MSG_NONE 0
#define RNIC_DP_MSG_SEND 1  /* a SEND, received by core/ */
#define RNIC_DP_MSG_WRITE 2 /* an RDMA WRITE, placed at write_ptr */
#define RNIC_DP_MSG_DROP 3  /* UC: the rest of an abandoned message is dropped (IBTA 9.8)   */

/* A result the responder keeps for duplicates of an atomic (9.7.5.1.4). */
struct rnic_dp_atomic_result {
    uint32_t psn;
    uint32_t valid;
    uint64_t orig;
};

/* rnic_dp_txn.state (txn.c; docs/failover.md has the order and the invariants) */
#define RNIC_DP_TXN_NONE 0      /* the QP's record is consistent */
#define RNIC_DP_TXN_OPEN 1      /* being changed: a crash rolls it back to snap */
#define RNIC_DP_TXN_COMMIT 2    /* changed: a crash finishes the effects listed */
/* rnic_dp_txn.effects: what a change does outside the QP's record, after it commits */
#define RNIC_DP_FX_ATOMIC 1     /* store atomic_new at atomic_at (the atomic lock is held) */
#define RNIC_DP_FX_SQ_CONS 2    /* publish the SQ's consumer index sq_cons */
#define RNIC_DP_FX_RQ_CONS 4    /* publish the RQ's consumer index rq_cons */
#define RNIC_DP_FX_CQE 8        /* push cqe to cq (cq_slotted: into slot cq_slot) */
/* Bytes the checkpoint may take (the QP record from recv_held up to cwnd) */
#define RNIC_DP_SNAP_BYTES 384

/* The journal of one QP's record: an engine killed between any two instructions leaves
 * either a consistent record, or one the daemon rolls back (OPEN) or forward (COMMIT) with
 * rnic_dp_recover. Only the QP's own engine (or core/, with it held) writes it. */
struct rnic_dp_txn {
    uint32_t state;         /* RNIC_DP_TXN_* */
    uint32_t effects;       /* RNIC_DP_FX_* */
    uint32_t sq_cons;
    uint32_t rq_cons;
    uint32_t cq_slot;
    uint32_t cq_slotted;    /* cq_slot is taken: the CQE is published once prod passes it */
    uint32_t solicited;
    uint32_t atomic_slot;   /* the replay-cache slot the atomic wrote, and what it held */
    struct rnic_dp_atomic_result atomic_old;
    struct rnic_dp_cq *cq;
    uint64_t *atomic_at;
    uint64_t atomic_new;
    struct rnic_cqe cqe;
    uint8_t snap[384];      /* RNIC_DP_SNAP_BYTES (cffi's cdef takes only a literal) */
};

/* Hard state of an RC or UC QP: the one copy, shared by the data plane and core/roce/,
 * which handles every packet the data plane hands back. The fields from recv_held up to
 * cwnd are what a change may touch (the journal's checkpoint, txn.c): hard state, and the
 * configuration beside it, which only changes with the engine held. */
struct rnic_dp_qp {
    uint32_t qpn;
    uint32_t fast;          /* non-zero: the data plane may handle in-order WRITEs */
    uint32_t unreliable;    /* UC (IBTA 9.8): UC opcodes, no ACKs/NAKs, a send WQE completes
                             * once its last packet is sent, no READ or atomic WQEs */
    uint32_t recv_held;     /* UC: the receive WQE of an abandoned SEND (recv_wr_id,
                             * recv_pieces), kept for the next SEND (IBTA 9.8) */
    uint32_t peer_ip_be;    /* packets from elsewhere are not this connection's */
    uint32_t mtu;           /* path MTU in bytes */
    uint32_t access;        /* qp_access_flags */
    uint32_t epsn;          /* expected PSN */
    uint32_t msn;           /* message sequence number (AETH) */
    uint32_t ack_pending;   /* an ACK for epsn - 1 is owed */
    uint32_t nak_sent;      /* a sequence NAK was sent for the current gap */
    uint32_t msg;           /* RNIC_DP_MSG_* */
    uint64_t pd;
    uint8_t *write_ptr;     /* WRITE: where the next byte goes */
    uint64_t write_left;    /* WRITE: bytes still expected */
    uint64_t write_len;     /* WRITE: the RETH DMA length */
    uint64_t fast_pkts;     /* packets the data plane handled for this QP */

    /* SEND being received: its receive WQE's buffers, resolved (rnic_dp_recv_begin) */
    uint64_t recv_wr_id;
    uint64_t recv_off;      /* bytes received so far */
    uint32_t recv_npieces;
    uint32_t recv_max_sge;  /* the receive SGE cap (may be 0); recv_pieces holds max(1, it) */
    /* RDMA READ being answered (IBTA 9.7.4.1.5): rnic_dp_read_begin sets it up, and
     * rnic_dp_read_continue queues its responses as the transmit buffer has room */
    const uint8_t *rd_src;
    uint32_t rd_len;        /* its DMA length */
    uint32_t rd_psn;        /* PSN of its first response */
    uint32_t rd_msn;        /* the MSN its AETHs carry */
    uint32_t rd_next;       /* responses queued so far ... */
    uint32_t rd_npkts;      /* ... of this many; 0: no READ being answered */
    uint32_t atomic_next;   /* the slot of atomics[] the next result takes */
    struct rnic_dp_piece *recv_pieces;
    /* the receive queue the data plane takes WQEs from; NULL with an SRQ (core/ takes) */
    struct rnic_ring_hdr *rq;
    uint8_t *rq_entries;
    uint32_t rq_mask;
    uint32_t rq_entry_size;
    struct rnic_dp_cq *rcq;

    /* requester and completer (IBTA 9.7.1-9.7.2, 9.7.5.1); see sq.c */
    uint32_t dest_qpn;
    uint32_t una;           /* oldest PSN not yet acknowledged or answered */
    uint32_t send_psn;      /* next PSN to transmit (rewound for go-back-N) */
    uint32_t next_psn;      /* next PSN to assign to a fetched WQE */
    uint32_t high_psn;      /* PSN after the highest ever sent: below it is a resend */
    uint32_t sq_head;       /* SQ index of the oldest WQE not retired (the ring's cons) */
    uint32_t sq_next;       /* SQ index of the next WQE to fetch */
    uint32_t sq_sig_all;
    uint32_t retry_cnt;     /* attributes ... */
    uint32_t rnr_retry;
    uint32_t retry_left;    /* ... and what is left of them since the last progress */
    uint32_t rnr_left;
    uint32_t rewound;       /* went back N at this una already: repeat only if forced */
    uint32_t rnr_wait;      /* waiting out an RNR NAK: send nothing */
    uint32_t send_ok;       /* the QP is in RTS: the requester may send */
    uint32_t swqe_mask;     /* swqes has swqe_mask + 1 entries, one per SQ slot */
    double cwnd;            /* congestion window in packets (AIMD) */
    double timeout_s;       /* local ACK timeout, 0: none (IBTA 9.7.6.1.3) */
    double retrans_at;      /* when the retransmit timer fires, 0: not armed */
    struct rnic_dp_swqe *swqes;
    struct rnic_ring_hdr *sq;
    struct rnic_dp_cq *scq;
    uint8_t *sq_entries;    /* the SQ ring's entries, with the daemon's own geometry */
    uint32_t sq_entry_size;
    uint32_t max_send_sge;  /* the QP's cap (may be 0) */
    uint32_t max_inline;
    uint32_t sq_piece_stride;   /* pieces per SQ slot in sq_pieces: max(1, max_send_sge) */
    struct rnic_dp_piece *sq_pieces;
    uint64_t sent_pkts;
    uint64_t retransmitted_pkts;
    /* XRC (IBTA Annex A14): non-zero for an XRC INI or TGT QP, whose packets take opcodes
     * 0xa0 | RC's and whose requests carry an XRCETH (swqe xrc_srqn). The receive fast path
     * leaves them to core/ (fast stays 0). */
    uint32_t xrc;
    /* UD (IBTA 9.8.3; unreliable is set too: no ACKs, a WQE completes once sent): SEND and
     * SEND with immediate only, one packet each (at most mtu bytes), to the WQE's QPN at its
     * AH's address, with a DETH. The data plane sends them in RTS (send_ok) like UC's, and
     * receives datagrams while fast is set (core/ sets it in RTR, RTS and SQD with an RQ of
     * its own): rx_ud. core/ takes the rest (a bad WQE; an SRQ, no WQE posted, a WQE too
     * small, a bad Q_Key) with the same rnic_dp_swqe_load, rnic_dp_recv_begin/_place and
     * rnic_dp_ud_grh. */
    uint32_t ud;
    uint32_t qkey;          /* UD: the QP's Q_Key (9.8.2) */
    /* engines (engine.c): the engine that serves it (the send CQ's, docs/engines.md), and
     * that engine's soft bookkeeping: core/ was asked to pump / run the timer (core/ clears
     * the flag when it has), the ring indices last looked at, and the event index after the
     * last datagram handed to core/ (its later ones follow it there, in order) */
    uint32_t engine;
    uint32_t eng_pump_posted;
    uint32_t eng_timer_posted;
    uint32_t eng_seen_sq;
    uint32_t eng_seen_rq;
    uint32_t eng_last_slow;
    /* loss recovery (rnic_dp_psn_check, rnic_dp_go_back, rnic_dp_timer) */
    uint32_t nak_high;      /* responder: the highest PSN seen since its sequence NAK */
    uint32_t resp_queued;   /* responder: core/ holds responses behind the READ being
                             * answered; nothing may overtake them */
    uint32_t probe_stage;   /* requester: RNIC_DP_PROBE_* (rnic_dp_timer; soft) */
    double rewind_holdoff;  /* requester: an implied NAK goes back again only after this */
    /* what recovery did, under rxe's counter names (core/ adds them to the QP's) */
    uint64_t out_of_seq_request;    /* responder: requests past ePSN, dropped */
    uint64_t duplicate_request;     /* responder: requests before ePSN */
    uint64_t rcvd_seq_err;          /* requester: sequence NAKs received */
    uint64_t nak_seq_retries;       /* requester: go-back-N rounds they started */
    uint64_t timeout_retries;       /* requester: rounds the retransmit timer started */
    uint64_t implied_nak_seq_err;   /* requester: rounds a lost READ/atomic response started */
    uint64_t early_retransmits;     /* requester: rounds the probe started (rnic_dp_timer) */
    uint64_t duplicate_response;    /* requester: ACKs and responses before una, dropped */
    uint64_t out_of_seq_response;   /* requester: rounds a READ response gap started */
    /* requester soft state (lost in a failover, rebuilt from the next ACKs): the smoothed
     * round trip, the one PSN being timed (Karn: never a resent one), the probe deadline */
    double srtt;            /* seconds, 0: no sample yet */
    double rtt_sent;        /* when rtt_psn was sent */
    double probe_at;        /* 0: not armed */
    double probe_s;         /* the probe's interval, doubled each time it fires */
    uint32_t rtt_psn;
    uint32_t rtt_timing;    /* rtt_psn is being timed */
    uint32_t cut_psn;       /* high_psn when the window was last cut: losses below it ... */
    uint32_t cut_valid;     /* ... do not cut it again (rnic_dp_go_back) */
    uint32_t max_rd_atomic; /* READs and atomics in flight at most (attribute; 0 counts as 1) */
    /* responder: the results of the last atomics executed, replayed to duplicates, never
     * executed twice (9.7.5.1.4); max_dest_rd_atomic of them (0 counts as 1) */
    uint32_t max_dest_rd_atomic;
    uint32_t _rsvd3;
    struct rnic_dp_atomic_result atomics[16];   /* RNIC_DP_ATOMIC_RESULTS (cffi: a literal) */
    struct rnic_dp_txn txn;
};

/* A completion queue as the data plane writes it (the ring of rnic_abi.h). */
struct rnic_dp_cq {
    struct rnic_ring_hdr *hdr;
    uint8_t *entries;
    uint32_t mask;          /* num_entries - 1 */
    uint32_t id;            /* core/'s handle, reported in rnic_dp_dev.notify */
    uint32_t overflow;      /* set when a CQE was lost to overrun (IBV_EVENT_CQ_ERR) */
    uint32_t has_channel;   /* a completion channel may be signalled */
    uint32_t lock;          /* CQE writers of several engines take turns (rnic_dp_cq_push) */
    int32_t chan_fd;        /* the channel's eventfd, as the daemon numbers it; -1: none */
    uint32_t engine;        /* the engine of its comp_vector */
    uint32_t _rsvd;
};

/* A send WQE in flight, fetched and validated by core/ (slot = SQ index & swqe_mask).
 * Whoever finishes it sets status; rnic_dp_retire completes finished WQEs in order. */
struct rnic_dp_piece {
    uint8_t *ptr;
    uint64_t len;
};
struct rnic_dp_swqe {
    uint64_t wr_id;
    uint64_t remote_addr;
    uint32_t idx;           /* SQ index, free-running */
    uint32_t opcode;        /* IBV_WR_* */
    uint32_t flags;         /* IBV_SEND_* */
    uint32_t imm;
    uint32_t rkey;
    uint32_t length;
    uint32_t first_psn;
    uint32_t npkts;         /* PSNs it consumes */
    int32_t status;         /* -1 while in flight, else enum ibv_wc_status */
    uint32_t wc_opcode;     /* enum ibv_wc_opcode of its completion */
    uint32_t npieces;       /* gather list of a SEND/WRITE payload ... */
    uint32_t xrc_srqn;      /* XRC: the XRCETH's SRQ number (rnic_send_wqe.remote_srqn) */
    uint32_t dest_qpn;      /* UD: where it goes, from the WQE and its AH (rnic_dp_ah) ... */
    uint32_t dest_ip_be;
    uint32_t qkey;          /* ... and the DETH's Q_Key */
    struct rnic_dp_piece *pieces;   /* ... in the QP's piece array (sq_piece_stride a slot) */
    uint64_t compare_add;   /* atomics: compare (CMP_AND_SWP) or add (FETCH_AND_ADD) */
    uint64_t swap;          /* CMP_AND_SWP: the swap value */
};

/* Atomic results a QP keeps for duplicates: the device's max_qp_rd_atom. */
#define RNIC_DP_ATOMIC_RESULTS 16
/* Response packets one READ request asks for at most: a READ goes out as requests of this
 * many, so that a responder never bursts more than the window (docs/architecture.md). */
#define RNIC_DP_READ_CHUNK 64
/* Largest congestion window, smallest one, and how often a long message asks for an ACK.
 * Go-back-N resends about a window per loss, yet below ~32 packets a 64 KiB stream on
 * these 2-CPU machines is bound by its round trip (the engines share the CPUs with the
 * programs): under drop=0.01 a floor of 4 gave 455 MB/s, 16: 485, 32: 545, 64: 525. */
#define RNIC_DP_WINDOW 128
#define RNIC_DP_MIN_WINDOW 32
#define RNIC_DP_ACKREQ_EVERY 32

/* The tables and counters of one device. core/ owns the arrays and keeps them filled. */
struct rnic_dp_dev {
    uint32_t ip_be;                 /* our address, network order */
    uint16_t port;                  /* our UDP port (the ICRC covers it) */
    uint16_t rx_ip_id;              /* the datagram being received: its index in a GRO
                                     * batch, its likely IPv4 ID (rnic_roce_icrc_check_v4) */
    struct rnic_dp_qp **qps;        /* indexed by QPN, qps_len entries */
    uint32_t qps_len;
    uint32_t mrs_len;
    struct rnic_dp_mr **mrs;        /* indexed by key >> 8, mrs_len entries */
    struct rnic_dp_ah **ahs;        /* indexed by AH handle, ahs_len entries */
    uint32_t ahs_len;
    uint32_t *acks;                 /* QPNs that came to owe an ACK, in order */
    uint32_t acks_len;              /* capacity of acks */
    uint32_t nacks;                 /* entries used; core/ resets it after sending ACKs */
    uint64_t fast_pkts;             /* datagrams the data plane handled */
    uint64_t slow_pkts;             /* datagrams handed to core/: the slow-path events */
    /* datagrams to send, in order: tx_cap buffers of tx_buf_size bytes */
    uint8_t *tx_bufs;
    uint32_t *tx_lens;
    uint32_t *tx_addrs_be;
    uint32_t tx_buf_size;
    uint32_t tx_cap;
    uint32_t ntx;
    uint32_t notify_cap;
    uint32_t *notify;               /* ids of CQs to signal, or that overran */
    uint32_t nnotify;
    int32_t *notify_fds;            /* engines: notify[i]'s channel fd here, -1: core/'s */
    int32_t *fdmap;                 /* engines: daemon fd number -> this process's fd + 1
                                     * (0: none) */
    uint32_t fdmap_len;             /* 0: the daemon's own table (core/ signals channels) */
    uint32_t pumps_cap;
    uint32_t *pumps;                /* QPNs that need core/: requester (fetch, READ, ...)
                                     * or READ responses still to produce */
    uint32_t npumps;
    uint32_t lock_id;               /* what this writer puts in the locks it takes (an
                                     * engine: its pid; core/: 1), so that the locks of an
                                     * engine that died can be broken (rnic_dp_lock_break) */
    uint32_t *atomic_lock;          /* the device's one lock of RDMA atomics (shared by
                                     * core/ and the engines; IBV_ATOMIC_HCA) */
    double now;                     /* the time of the current call, set by core/ */
    uint32_t cpu_tag;               /* engines: 1 + the CPU it is pinned to; 0: core/ */
    uint32_t poller_here;           /* a CQE went to a CQ whose poller waits on this CPU
                                     * (rnic_ring_hdr.poller_cpu): the engine yields */
};

/* ---- sq.c: the requester's and completer's common case -------------------------------- */

/* rnic_dp_pump results */
#define RNIC_DP_PUMP_IDLE 0         /* window full, nothing to send, or not allowed to send */
#define RNIC_DP_PUMP_FETCH 1        /* every fetched WQE is sent: core/ may fetch more */
#define RNIC_DP_PUMP_SLOW 2         /* the WQE at send_psn is core/'s (none is today) */
#define RNIC_DP_PUMP_TX_FULL 3      /* the transmit buffer is full: drain it, call again */

/* Append one CQE; signal the channel when armed (IBTA 11.4.2.2). 0, or -ENOSPC on overrun
 * (the CQE is lost and cq->overflow set). Writers take the CQ's lock with their lock_id. */
int rnic_dp_cq_push(struct rnic_dp_dev *dev, struct rnic_dp_cq *cq, const struct rnic_cqe *e,
                    uint32_t solicited);
/* Break a lock (a CQ's, the atomic lock) if lock_id (an engine that died) holds it: 1 if
 * it did. */
int rnic_dp_lock_break(uint32_t *lock, uint32_t lock_id);

/* ---- txn.c: the journal that makes a QP's changes crash-consistent -------------------- */

/* Make the record of a QP that the engine dead_id (its lock_id) was changing when it died
 * consistent, before any lock that engine held is broken: an OPEN change is rolled back to
 * its checkpoint (send WQEs it found acknowledged stay so: una moves past them), a
 * COMMITted one has its effects finished. Returns the state it found (RNIC_DP_TXN_*); for
 * any but NONE the caller breaks the locks, then retires the finished WQEs
 * (rnic_dp_retire): their ACK will not come again. */
uint32_t rnic_dp_recover(struct rnic_dp_dev *dev, struct rnic_dp_qp *qp, uint32_t dead_id);
/* Complete finished WQEs from the head of the SQ, in order (IBTA 10.8.3); returns how
 * many were retired. */
uint32_t rnic_dp_retire(struct rnic_dp_dev *dev, struct rnic_dp_qp *qp);
/* Every request PSN <= psn is acknowledged (coalesced ACK, 9.7.5.1.2): finish the SEND and
 * WRITE WQEs it covers and move una. Returns -1, or the first PSN of an unanswered READ or
 * atomic that psn covers: its response was lost and core/ must re-issue it. */
int64_t rnic_dp_ack(struct rnic_dp_dev *dev, struct rnic_dp_qp *qp, uint32_t psn);
/* una moved on from old_una: grow the window, refill the retry budgets and restart the
 * retransmit timer (IBTA 9.7.6.1.3: the timer measures time without progress). */
void rnic_dp_progress(struct rnic_dp_dev *dev, struct rnic_dp_qp *qp, uint32_t old_una);
/* WQEs posted and not fetched yet: prod - sq_next, or -EPROTO when the producer index is
 * impossible (behind the fetch position or more than a ring ahead of the oldest WQE):
 * core/ then fails the QP (rnic_abi.h). */
int rnic_dp_sq_pending(const struct rnic_dp_qp *qp);
/* Copy the SQ entry at sq_next out of the client's ring, once, and validate the copy into
 * its descriptor (IBTA 10.8.3.1, 11.4.1.1): opcode, inline length, SGE count against the
 * QP's cap, each lkey (rnic_dp_mr_check; LOCAL_WRITE for READ and atomic results), total
 * length (UD: one packet).
 * status is -1 for a good WQE, else the enum ibv_wc_status it completes with. hdr (may be
 * NULL) receives the copied header. */
void rnic_dp_swqe_load(struct rnic_dp_dev *dev, struct rnic_dp_qp *qp,
                       struct rnic_send_wqe *hdr);
/* Take the loaded descriptor at sq_next: give a good one its PSNs and advance sq_next.
 * -EAGAIN (nothing taken) while its last PSN would be 2^23 or more past una: PSN distance
 * is only defined below that (IBTA 9.7.1). */
int rnic_dp_swqe_commit(struct rnic_dp_qp *qp);
/* Fetch WQEs (rnic_dp_swqe_load, _commit). Stops at an empty ring, when the window is
 * covered, at a WQE that must wait for responses (a READ or atomic beyond max_rd_atomic, a
 * fenced WQE behind READs/atomics: IBTA 10.8.3.3; PSNs 2^23 past una), or at one core/ must
 * fetch (BIND_MW, LOCAL_INV, anything wrong, a corrupt index): returns how many it fetched,
 * or before any, -EAGAIN (wait) or -1 (core/'s). */
int rnic_dp_fetch(struct rnic_dp_dev *dev, struct rnic_dp_qp *qp);
/* Transmit what the window allows from send_psn, fetching as it goes (RNIC_DP_PUMP_*). */
int rnic_dp_pump(struct rnic_dp_dev *dev, struct rnic_dp_qp *qp);
/* rnic_dp_resp_psn_check results */
#define RNIC_DP_RESP_STALE 1    /* before una: a duplicate or an old round's, counted */
#define RNIC_DP_RESP_BAD 2      /* beyond every request sent */
/* The completer's PSN check: an ACK or response for psn answers a request in flight,
 * [una, next_psn) (9.7.5.1.2). 0, or why it is dropped. */
int rnic_dp_resp_psn_check(struct rnic_dp_qp *qp, uint32_t psn);
/* An RDMA READ response for psn, in flight (rnic_dp_resp_psn_check), with n payload bytes
 * (9.7.5.1.3): it implicitly acknowledges the requests before its READ; in sequence (psn is
 * una) it is placed and the last one completes the WQE; after a gap the READ is asked again
 * from una (rnic_dp_go_back, forced by a LAST: it ends a lossy round). 0, or -ENOENT (no
 * unfinished READ holds psn: nothing changed), -EMSGSIZE (not the length the READ expects
 * there: IBV_WC_BAD_RESP_ERR for the WQE). The caller then calls rnic_dp_progress, _retire,
 * _pump. */
int rnic_dp_read_resp(struct rnic_dp_dev *dev, struct rnic_dp_qp *qp, uint32_t psn, int last,
                      const uint8_t *data, uint32_t n);
/* An atomic ACK for psn, in flight, with the original remote value orig (9.7.5.1.3): it
 * implicitly acknowledges the requests before its atomic; the value goes to the WQE's buffer
 * (host order) and completes it. 0, or -ENOENT (not an unfinished atomic at una: nothing
 * placed). The caller then calls rnic_dp_progress, _retire, _pump. */
int rnic_dp_atomic_ack(struct rnic_dp_dev *dev, struct rnic_dp_qp *qp, uint32_t psn,
                       uint64_t orig);
/* Go back N (IBTA 9.7.5.1): retransmit from psn, halve the window, stop the timer. Rounds
 * that several packets of one loss would start (implied NAKs, response gaps) go back once per
 * una, or again a quarter of the ACK timeout later; force goes back regardless (a sequence NAK,
 * the timer). Returns 1 if it went back, 0 if held off. */
int rnic_dp_go_back(struct rnic_dp_dev *dev, struct rnic_dp_qp *qp, uint32_t psn, int force);
/* rnic_dp_ack, and an unanswered READ or atomic that psn covers lost its response (an
 * implied NAK, 9.7.5.1.3): go back N to it (rnic_dp_go_back, not forced), so that the pump
 * re-issues it. */
void rnic_dp_ack_through(struct rnic_dp_dev *dev, struct rnic_dp_qp *qp, uint32_t psn);
/* A sequence NAK for psn received (9.7.5.2.3): everything before psn is acknowledged
 * (rnic_dp_ack_through), then go back N to psn, unless an earlier READ/atomic is being
 * re-issued. The caller then calls rnic_dp_progress, _retire and _pump, as for an ACK. */
void rnic_dp_nak_seq(struct rnic_dp_dev *dev, struct rnic_dp_qp *qp, uint32_t psn);
/* The probe: requests outstanding this long without progress (a lost ACK or NAK, the tail
 * of a burst, a peer engine that was not scheduled) are asked about before the ACK timeout,
 * without spending a retry: PROBE_RTTS smoothed round trips, at least PROBE_MIN_US, doubled
 * each time it fires without progress (rnic_dp_deadline takes it only while it comes before
 * the ACK timeout). It resends one packet, una's, with AckReq, as TCP's tail loss probe
 * does: an ACK that was lost or late then costs one duplicate instead of a window. If the
 * responder takes that packet and nothing after it, what followed was discarded behind a
 * lost sequence NAK: rnic_dp_progress goes back N from there. When the oldest request is a
 * READ or atomic not yet answered the probe goes back N (it is one packet anyway); not at
 * all while a READ's responses are arriving: they come at the responder's pace. */
#define RNIC_DP_PROBE_RTTS 2
#define RNIC_DP_PROBE_MIN_US 250
#define RNIC_DP_PROBE_NONE 0    /* not fired since the last progress */
#define RNIC_DP_PROBE_ONE 1     /* fired: pump resends una's packet first */
#define RNIC_DP_PROBE_SENT 2    /* that packet went out */
/* The request packet psn (taking PSNs up to next) went out: count a resend (below high_psn),
 * time a fresh one if none is being timed, start the timers. pump calls it, and core/ for
 * the READ and atomic requests it sends. */
void rnic_dp_sent(struct rnic_dp_dev *dev, struct rnic_dp_qp *qp, uint32_t psn, uint32_t next);
/* Start the retransmit timer and the probe unless they run (requests are outstanding). */
void rnic_dp_arm_timer(struct rnic_dp_dev *dev, struct rnic_dp_qp *qp);
/* When rnic_dp_timer has something to do next (the probe or the ACK timeout); 0: nothing. */
double rnic_dp_deadline(const struct rnic_dp_qp *qp);
/* rnic_dp_timer results */
#define RNIC_DP_TIMER_IDLE 0        /* not expired, or nothing outstanding (timer stopped) */
#define RNIC_DP_TIMER_RETRY 1       /* went back N to una: pump */
#define RNIC_DP_TIMER_EXCEEDED 2    /* retry_cnt exhausted (9.7.6.1.3): fail the head WQE */
/* The timers at dev->now. The retransmit timer (IBTA 9.7.6.1.3): an expired deadline with
 * requests outstanding spends one retry and goes back N to una. Before it, the probe goes
 * back N once without spending one (the ACK timeout runs on). The RNR timer is core/'s. */
int rnic_dp_timer(struct rnic_dp_dev *dev, struct rnic_dp_qp *qp);
/* Queue an ACKNOWLEDGE packet (AETH: syndrome, the QP's MSN) for psn (IBTA 9.7.5.2).
 * 0, or -ENOSPC when the transmit buffer is full. */
int rnic_dp_send_aeth(struct rnic_dp_dev *dev, struct rnic_dp_qp *qp, uint32_t syndrome,
                      uint32_t psn);
/* One coalesced ACK (for epsn - 1) for every QP listed in dev->acks that still owes one;
 * empties the list. The caller leaves room for dev->nacks datagrams. Returns ACKs queued. */
uint32_t rnic_dp_flush_acks(struct rnic_dp_dev *dev);
/* Start answering a READ of len bytes at src whose first response has PSN psn (IBTA
 * 9.7.4.1.5): returns the PSNs its responses take, or -EMSGSIZE when len exceeds
 * RNIC_DP_MAX_MSG (NAK Invalid Request), -EBUSY while another READ is being answered.
 * Nothing is queued: rnic_dp_read_continue does that. The AETHs carry the QP's MSN now. */
int rnic_dp_read_begin(struct rnic_dp_qp *qp, uint32_t psn, const uint8_t *src, uint64_t len);
/* Queue READ responses (FIRST, MIDDLE..., LAST or ONLY; AETH on all but MIDDLE) while the
 * transmit buffer has room; returns how many are still to go (0: done, READ state cleared). */
uint32_t rnic_dp_read_continue(struct rnic_dp_dev *dev, struct rnic_dp_qp *qp);
/* Scatter n bytes to offset off of a WQE's local buffers (a READ's destination); 0, or
 * -EMSGSIZE if they do not fit. */
int rnic_dp_swqe_place(struct rnic_dp_swqe *w, uint64_t off, const uint8_t *data, uint32_t n);
/* Queue a datagram core/ built (so that all datagrams go out in one order); -ENOSPC when
 * the transmit buffer is full, -EMSGSIZE when it does not fit a buffer. */
int rnic_dp_tx_push(struct rnic_dp_dev *dev, const uint8_t *data, uint32_t len,
                    uint32_t dst_ip_be);

/* Execute the in-order atomic request at psn (9.4.5, after the PSN, sequence and opcode
 * checks; its length checked): 8-aligned va (else -EINVAL: NAK Invalid Request), the rkey
 * for REMOTE_ATOMIC (rnic_dp_mr_check's reason: NAK Remote Access Error), then the
 * operation, its result kept for duplicates, ePSN and MSN advanced. 0 with *orig the
 * original value, or the reason (nothing changed). */
int rnic_dp_atomic(struct rnic_dp_dev *dev, struct rnic_dp_qp *qp, uint32_t psn, int cas,
                   uint64_t va, uint32_t rkey, uint64_t swap_add, uint64_t compare,
                   uint64_t *orig);
/* The kept result of the atomic at psn, for a duplicate: 0 with *orig, or -ENOENT (evicted:
 * the requester went back further than max_dest_rd_atomic allows). */
int rnic_dp_atomic_replay(const struct rnic_dp_qp *qp, uint32_t psn, uint64_t *orig);
/* Queue the ATOMIC ACKNOWLEDGE for psn (AETH: ACK, the QP's MSN; AtomicAckETH: orig).
 * 0, or -ENOSPC when the transmit buffer is full. */
int rnic_dp_send_atomic_ack(struct rnic_dp_dev *dev, struct rnic_dp_qp *qp, uint32_t psn,
                            uint64_t orig);
/* Start receiving a SEND into the buffers of a receive WQE (IBTA 10.6.3.2: each lkey an MR
 * of the QP's PD with LOCAL_WRITE, covering its range). 0, or -EACCES (the WQE completes
 * with IBV_WC_LOC_PROT_ERR), -EINVAL (more SGEs than the QP allows). */
int rnic_dp_recv_begin(struct rnic_dp_dev *dev, struct rnic_dp_qp *qp, uint64_t wr_id,
                       const struct rnic_sge *sg, uint32_t num_sge);
/* Place n bytes of the SEND at its current offset; -EMSGSIZE if the buffers are too small. */
int rnic_dp_recv_place(struct rnic_dp_qp *qp, const uint8_t *data, uint32_t n);
/* The 40 bytes a UD receive buffer gets before the payload (IBTA 11.4.1.1), for RoCEv2 over
 * IPv4 (A17.4.5.2): 20 bytes of zero, then the datagram's IPv4 header (roce_len: its UDP
 * payload, BTH to ICRC; ID 0, DF, TTL 64, no checksum, as the socket does not tell them). */
#define RNIC_UD_GRH_LEN 40
void rnic_dp_ud_grh(uint8_t *grh, uint32_t src_ip_be, uint32_t dst_ip_be, uint32_t roce_len);

/* ---- check.c: checks the fast path makes and core/ calls (never rewrites) ------------- */

/* The one memory-key check (IBTA 10.6.3.2; windows 10.6.7.2): [addr, addr + len) of key for
 * an access needing the IBV_ACCESS_* bits `access`. A local access (no REMOTE_* bit: an
 * lkey, which names an MR, never a window) needs pd only (qp may be NULL); a remote one (an
 * rkey: an MR or a bound window) also needs the QP's qp_access_flags to allow it, and a type
 * 2B window to be bound to qp. The key must be of PD pd, allow `access` and cover the
 * range. 0 with *ptr the memory (NULL when len is 0: a zero-length access names no memory,
 * 9.7.4.1.5), or -ENOKEY (no such key), -EPERM (another PD's, or another QP's window),
 * -EACCES (access not allowed), -ERANGE (out of bounds): an rkey's failure is a NAK Remote
 * Access Error (9.7.5.2.4), an lkey's completes with IBV_WC_LOC_PROT_ERR. */
int rnic_dp_mr_check(const struct rnic_dp_dev *dev, const struct rnic_dp_qp *qp, uint64_t pd,
                     uint32_t key, uint64_t addr, uint64_t len, uint32_t access, uint8_t **ptr);
/* The responder's opcode-sequence check (9.7.5.1): a FIRST or ONLY only between messages,
 * a MIDDLE or LAST only inside a message of its kind (qp->msg). 0 or -EPROTO (RC: NAK
 * Invalid Request; UC: the packet is dropped). */
int rnic_dp_seq_check(const struct rnic_dp_qp *qp, uint8_t opcode);
/* rnic_dp_psn_check results */
#define RNIC_DP_PSN_NEW 0       /* psn is ePSN: the next checks decide */
#define RNIC_DP_PSN_DUP 1       /* a duplicate (9.7.5.1.4): a SEND or WRITE is acknowledged
                                 * again, a READ re-executed, an atomic replayed */
#define RNIC_DP_PSN_NAK 2       /* out of sequence, and a sequence NAK for ePSN is due now */
#define RNIC_DP_PSN_DROP 3      /* out of sequence, dropped silently */
/* The responder's first check, the PSN (9.7.5.1, RC): counts duplicates and out-of-sequence
 * requests, and decides the sequence NAK: one per gap (9.7.5.2.3), and again when the PSNs
 * go backwards (the requester began a new round that lost ePSN too). A lost NAK is the
 * requester's probe's to find (rnic_dp_timer): NAKing again for the old round's later
 * packets made the requester go back twice, a window of duplicates per loss. */
int rnic_dp_psn_check(struct rnic_dp_qp *qp, uint32_t psn);
/* The responder's opcode-validity check, after the sequence check and before resources,
 * length and key (9.7.5.1; rxe's check_op_valid): an RDMA WRITE, READ or atomic request
 * needs the QP's REMOTE_WRITE, _READ or _ATOMIC access. 0 or -EACCES (RC: NAK Invalid
 * Request; UC: the message is dropped). */
int rnic_dp_op_check(const struct rnic_dp_qp *qp, uint8_t opcode);
/* The responder's payload length check (9.7.7.1): FIRST and MIDDLE carry exactly one PMTU,
 * LAST 1 to PMTU bytes, ONLY 0 to PMTU. 0 or -EMSGSIZE (NAK Invalid Request). */
int rnic_dp_len_check(const struct rnic_dp_qp *qp, uint8_t opcode, uint32_t plen);
/* One RDMA WRITE packet, after the PSN, sequence and resource checks: its length (as
 * rnic_dp_len_check, and against what the RETH's DMA length leaves: a LAST or ONLY carries
 * exactly the rest), then on a FIRST or ONLY the RETH's rkey (rnic_dp_mr_check), then the
 * bytes are placed and the message advanced (qp->msg, write_*; write_len is the RETH's DMA
 * length); a LAST or ONLY ends it and counts it in the MSN. 0, or -EMSGSIZE (NAK Invalid
 * Request) or rnic_dp_mr_check's reason (NAK Remote Access Error); nothing changes then. */
int rnic_dp_write(const struct rnic_dp_dev *dev, struct rnic_dp_qp *qp, uint8_t opcode,
                  uint64_t va, uint32_t rkey, uint32_t dma_len, const uint8_t *payload,
                  uint32_t plen);

/* Try the fast path on one datagram from src_ip_be:sport. Returns 1 if it was handled
 * (placed, state advanced, ACK owed noted), 0 if core/ must handle it. Never both. */
int rnic_dp_rx_one(struct rnic_dp_dev *dev, const uint8_t *pkt, uint32_t len,
                   uint32_t src_ip_be, uint16_t sport);
/* The same over n datagrams in bufs[i * buf_size] (lens, sources as rnic_recv_batch gives
 * them). Writes the indices core/ must handle to slow[] and returns their count. */
uint32_t rnic_dp_rx_batch(struct rnic_dp_dev *dev, const uint8_t *bufs, uint32_t buf_size,
                          const uint32_t *lens, const uint32_t *addrs_be,
                          const uint16_t *ports, uint32_t n, uint32_t *slow);

/* ---- fault.c -------------------------------------------------------------------------- */

/* Fault injection state (rnicd/core/fault.py fills it): each rate as a threshold out of
 * 2^32 (0: never, 2^32: always), the generator, and what it did. */
struct rnic_fault {
    uint64_t drop, dup, reorder, delay, corrupt;
    uint64_t rng;
    uint64_t n_drop, n_dup, n_reorder, n_delay, n_corrupt;
    double delay_s, reorder_s;  /* how long a delayed / a reordered datagram is held */
};
/* rnic_fault_mark's marks */
#define RNIC_FAULT_SEND 0
#define RNIC_FAULT_DROP 1
#define RNIC_FAULT_DELAY 2      /* held back delay_ms */
#define RNIC_FAULT_REORDER 3    /* held back reorder_ms: later datagrams overtake it */
#define RNIC_FAULT_HOLD 2       /* the bit DELAY and REORDER share */
#define RNIC_FAULT_DUP 4        /* or'ed: sent twice */
/* Decide each queued datagram's fate (marks[i]) in FaultInjector's order: drop; corrupt
 * (one bit flipped in place); delay, else reorder; duplicate. The indices of the held ones
 * (delay, reorder) go to held[], up to held_cap (beyond, they are sent now); returns how
 * many. The caller copies them out before rnic_fault_compact. */
uint32_t rnic_fault_mark(struct rnic_dp_dev *dev, struct rnic_fault *f, uint8_t *marks,
                         uint32_t *held, uint32_t held_cap);
/* Remove the dropped and held datagrams from the transmit buffer and append a copy of each
 * duplicated one that is sent now, while there is room; returns the duplicates that found
 * none. */
uint32_t rnic_fault_compact(struct rnic_dp_dev *dev, const uint8_t *marks);
/* A held datagram (mark with RNIC_FAULT_HOLD): how many copies wait (2 if duplicated) and,
 * in *hold_s, for how long. */
uint32_t rnic_fault_held(const struct rnic_fault *f, uint8_t mark, double *hold_s);

/* ---- steer.c -------------------------------------------------------------------------- */

/* Most sockets (engines) one steering program spreads over. */
#define RNIC_STEER_MAX 1024
/* Attach to fd's SO_REUSEPORT group the program that sends each datagram to socket
 * (DestQP mod nsocks), counting the group's sockets in the order they were bound: an engine
 * owns the QPs whose number is its index modulo nsocks (docs/engines.md). 0 or -errno. */
int rnic_steer_by_qpn(int fd, uint32_t nsocks);

/* ---- arena.c: the state arena (shared with the engines) ------------------------------- */

/* The arena's mapping in this process, created on first use (NULL if that failed). */
void *rnic_arena_base(void);
/* size bytes (64-byte aligned, 4096 from 4032 bytes up) of the arena, zeroed, or NULL.
 * Pages never used are not touched (they read as zeros): a large table costs no memory
 * until it is written. */
void *rnic_arena_alloc(size_t size);
void rnic_arena_free(void *p);
/* Bytes in live blocks. */
uint64_t rnic_arena_used(void);

/* ---- engine.c: the engines (docs/engines.md) ------------------------------------------ */

/* rnic_engine.state */
#define RNIC_ENGINE_RUN 0       /* working, or spinning through a loop */
#define RNIC_ENGINE_SLEEP 1     /* at a safe point, touching nothing: in epoll_wait (or about
                                 * to be), or yielding the CPU while idle */
#define RNIC_ENGINE_HELD 2      /* stopped at a safe point while core/ works */
#define RNIC_ENGINE_EXITED 3

/* rnic_engine_event.kind: what an engine hands to core/ */
#define RNIC_EV_PACKET 1        /* a datagram for the slow path: data[len] from src:sport */
#define RNIC_EV_PUMP 2          /* QP id needs core/'s requester (READ/atomic WQEs, a QP not
                                 * in RTS, UD, XRC, a bad WQE) */
#define RNIC_EV_TIMER 3         /* the retransmit timer of QP id expired */
#define RNIC_EV_NOTIFY 4        /* CQ id overran, or its channel is core/'s to signal */
/* largest datagram an event carries (a 4096-byte payload with every RoCE header) */
#define RNIC_EV_DATA 4224

struct rnic_engine_event {
    uint32_t kind;
    uint32_t id;
    uint32_t len;
    uint32_t src_ip_be;
    uint16_t sport;
    uint16_t ip_id;             /* the datagram's index in its GRO batch (ICRC check) */
    uint32_t _rsvd1[3];
    uint8_t data[4224];         /* RNIC_EV_DATA (cffi's cdef takes only a literal here) */
};

/* rnic_engine_cmd.op: the daemon's commands, on the engine's command socket */
#define RNIC_ENGINE_CMD_MAP 1       /* map the passed memfd at addr (len bytes from off) */
#define RNIC_ENGINE_CMD_UNMAP 2     /* unmap [addr, addr + len) */
#define RNIC_ENGINE_CMD_FD 3        /* keep the passed fd as the daemon's number dfd */
#define RNIC_ENGINE_CMD_CLOSE_FD 4  /* forget dfd */
#define RNIC_ENGINE_FD_DOORBELL 1   /* CMD_FD flags: a doorbell eventfd to wait on */

struct rnic_engine_cmd {
    uint32_t op;
    int32_t dfd;
    uint32_t flags;
    uint32_t _rsvd;
    uint64_t addr;
    uint64_t len;
    uint64_t off;
};

/* One engine, in the arena: what the daemon and the engine share. */
struct rnic_engine {
    uint32_t id;
    int32_t cpu;            /* the CPU it is pinned to, -1: none */
    int32_t pid;
    uint32_t state;         /* RNIC_ENGINE_* */
    uint32_t pause_req;     /* core/ asks it to hold at its next safe point */
    uint32_t hold_waiting;  /* it waits in poll for the hold to end */
    uint32_t stop;
    uint32_t ev_overflow;   /* an event was lost: core/ looks at every QP and CQ */
    uint32_t ev_prod;       /* events: the engine produces ... */
    uint32_t ev_cons;       /* ... core/ consumes once it has handled one */
    uint32_t ev_cap;        /* a power of two */
    uint32_t nqps;          /* the QPs it serves: qpns[0..nqps) */
    uint32_t qps_cap;
    uint32_t fault_on;
    uint32_t udp_gso;       /* send runs with UDP GSO, receive with GRO (off if refused) */
    uint32_t _rsvd2;
    uint32_t *qpns;
    struct rnic_engine_event *events;
    struct rnic_dp_dev *dev;    /* its own transmit buffer and lists; the shared tables */
    struct rnic_fault fault;
    double spin_s;          /* spin this long after the last work, then sleep */
    double started;         /* CLOCK_MONOTONIC seconds */
    int32_t sock_fd;        /* its UDP socket in the port's SO_REUSEPORT group */
    int32_t cmd_fd;         /* command socket (SOCK_SEQPACKET) */
    int32_t resume_fd;      /* eventfd: the hold is over */
    int32_t wake_fd;        /* eventfd: events wait for core/ */
    uint16_t peer_port;     /* UDP port of the peers (4791) */
    uint16_t _rsvd0;
    uint32_t rx_backlog;    /* datagrams received and not handled yet (core/'s ring full) */
    uint64_t rx_pkts;
    uint64_t tx_pkts;
    uint64_t events_posted;
    uint64_t ev_dropped;
    uint64_t wakeups;
    uint64_t loops;
    uint64_t busy_ns;
    uint64_t tx_dropped_busy;
    uint64_t tx_errors;
    uint64_t rx_drop_oversize;
    uint64_t fault_no_room;
    uint64_t channel_events;    /* completion channels it signalled itself */
    uint64_t spin_yielded;      /* spins ended early: a yield found the CPU taken */
    uint64_t poller_yields;     /* yields to a program polling here for a CQE just written */
    uint64_t heartbeat;         /* counts up at least every RNIC_ENGINE_BEAT_MS, held or not:
                                 * one that stops is hung (docs/engines.md) */
};

/* An engine's heartbeat comes at least this often (its longest sleep, its held poll). */
#define RNIC_ENGINE_BEAT_MS 250

/* CLOCK_MONOTONIC in seconds (asyncio's loop.time() on Linux). */
double rnic_monotonic(void);
/* Fork the engine: the child runs it (C only) until stop or the daemon's death; returns the
 * child's pid, or -errno. A pause_req set before (a substitute forked while core/ works)
 * holds it at its first safe point. */
int rnic_engine_spawn(struct rnic_engine *e);
/* Hold the engine at a safe point (it then touches no QP, CQ or MR state) so that core/ may
 * work: 0, -ESRCH (it exited, or pidfd, -1 for none, shows it died) or -ETIMEDOUT (hung).
 * rnic_engine_release lets it go on. */
int rnic_engine_hold(struct rnic_engine *e, double timeout_s, int pidfd);
void rnic_engine_release(struct rnic_engine *e);
/* core/'s side of the event ring, with the engine held: the datagrams at its head that the
 * fast path takes now (on dev, core/'s own; usually those that only followed an earlier
 * slow one of their QP), consumed in order; stops at the first it does not take, or at any
 * other event, which core/ then handles. Returns how many it took. */
uint32_t rnic_engine_take_fast(struct rnic_engine *e, struct rnic_dp_dev *dev);
/* Send a command (with fd, or -1) and wait for the engine's answer: 0 or -errno. */
int rnic_engine_command(int sock, const struct rnic_engine_cmd *c, int fd, double timeout_s);

#endif /* RNIC_DP_H */
