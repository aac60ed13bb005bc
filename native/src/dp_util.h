/*
 * dp_util.h — helpers shared by the data plane's sources (rx.c, sq.c): 24-bit PSN
 * arithmetic (IBTA 9.7.1), big-endian header fields, scatter/gather over a list of pieces,
 * and finding the in-flight WQE that holds a PSN. Internal: not part of any interface.
 */
#ifndef RNIC_DP_UTIL_H
#define RNIC_DP_UTIL_H

#include <stdint.h>
#include <string.h>

#include "rnic_dp.h"

/* a - b for 24-bit PSNs, in (-2^23, 2^23] (rnic_psn_diff exports it to core/) */
static inline int32_t dp_psn_diff(uint32_t a, uint32_t b)
{
    uint32_t d = (a - b) & 0xffffff;

    return d > 0x800000 ? (int32_t)d - 0x1000000 : (int32_t)d;
}
static inline uint32_t dp_psn_add(uint32_t a, int32_t n) { return (a + (uint32_t)n) & 0xffffff; }

static inline uint32_t dp_be24(const uint8_t *p) { return (uint32_t)p[0] << 16 | p[1] << 8 | p[2]; }
static inline uint32_t dp_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | p[2] << 8 | p[3];
}
static inline uint64_t dp_be64(const uint8_t *p) { return (uint64_t)dp_be32(p) << 32 | dp_be32(p + 4); }
static inline uint32_t dp_le32(const uint8_t *p)
{
    return (uint32_t)p[3] << 24 | (uint32_t)p[2] << 16 | p[1] << 8 | p[0];
}
static inline void dp_put24(uint8_t *p, uint32_t v) { p[0] = v >> 16; p[1] = v >> 8; p[2] = v; }
static inline void dp_put32(uint8_t *p, uint32_t v)
{
    p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v;
}
static inline void dp_put64(uint8_t *p, uint64_t v) { dp_put32(p, v >> 32); dp_put32(p + 4, (uint32_t)v); }

/* Copy n bytes out of memory a client can write, once: the barrier keeps the compiler from
 * reading the source again in place of the copy (rnic_abi.h: copy, then validate). */
static inline void dp_copy_shared(void *dst, const void *src, size_t n)
{
    memcpy(dst, src, n);
    __asm__ __volatile__("" ::: "memory");
}

/* Copy n bytes between buf and offset off of the pieces (to the pieces when `in`); returns
 * the bytes that did not fit. */
static inline uint32_t dp_pieces_copy(const struct rnic_dp_piece *pieces, uint32_t npieces,
                                      uint64_t off, uint8_t *buf, uint32_t n, int in)
{
    for (uint32_t i = 0; i < npieces && n; i++) {
        uint64_t take;

        if (off >= pieces[i].len) {
            off -= pieces[i].len;
            continue;
        }
        take = pieces[i].len - off < n ? pieces[i].len - off : n;
        if (in)
            memcpy(pieces[i].ptr + off, buf, take);
        else
            memcpy(buf, pieces[i].ptr + off, take);
        buf += take;
        n -= (uint32_t)take;
        off = 0;
    }
    return n;
}

/* The in-flight WQE whose PSN range holds psn, or NULL. */
static inline struct rnic_dp_swqe *dp_wqe_at(struct rnic_dp_qp *qp, uint32_t psn)
{
    for (uint32_t i = qp->sq_head; i != qp->sq_next; i++) {
        struct rnic_dp_swqe *w = &qp->swqes[i & qp->swqe_mask];
        int32_t d = dp_psn_diff(psn, w->first_psn);

        if (d >= 0 && (uint32_t)d < w->npkts)
            return w;
    }
    return NULL;
}

/* Keep the compiler from moving stores across this point: the journal's order (txn.c) is
 * program order, which x86 keeps for stores, and a killed process's stores stay. */
static inline void dp_barrier(void) { __atomic_signal_fence(__ATOMIC_SEQ_CST); }

/* cq.c: locks with the writer's lock_id, and the CQ push a journal records (t may be NULL) */
void dp_lock(struct rnic_dp_dev *dev, uint32_t *l);
void dp_unlock(uint32_t *l);
int dp_cq_push(struct rnic_dp_dev *dev, struct rnic_dp_cq *cq, const struct rnic_cqe *e,
               uint32_t solicited, struct rnic_dp_txn *t);
void dp_cq_fill(struct rnic_dp_dev *dev, struct rnic_dp_cq *cq, uint32_t slot,
                const struct rnic_cqe *e, uint32_t solicited);

/* txn.c: a change of a QP's record. dp_txn_open takes the checkpoint and returns 1, or 0
 * when a change of the QP is open already (the outer one commits); dp_txn_close commits
 * what it opened and does its effects; dp_txn_checkpoint commits and opens again. The
 * dp_fx_* note an effect (done at once when no change is open: core/'s direct calls). */
int dp_txn_open(struct rnic_dp_qp *qp);
void dp_txn_close(struct rnic_dp_dev *dev, struct rnic_dp_qp *qp, int opened);
void dp_txn_checkpoint(struct rnic_dp_dev *dev, struct rnic_dp_qp *qp);
void dp_fx_sq_cons(struct rnic_dp_qp *qp, uint32_t cons);
void dp_fx_rq_cons(struct rnic_dp_qp *qp, uint32_t cons);
void dp_fx_cqe(struct rnic_dp_dev *dev, struct rnic_dp_qp *qp, struct rnic_dp_cq *cq,
               const struct rnic_cqe *e, uint32_t solicited);

#endif /* RNIC_DP_UTIL_H */
