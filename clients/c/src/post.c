/*
 * post.c — post_send / post_recv / post_srq_recv: each work request is checked, then its WQE
 * is written into the shared ring (native/include/rnic_abi.h) and published with one release
 * store of prod; sends ring the doorbell eventfd once per call unless the daemon polls.
 * No socket message per post. On the first bad WR the ones before it stay posted and *bad
 * names it (ibv_post_send(3)). The daemon re-checks everything it reads from a ring
 * (keys, bounds, access): a bad lkey completes with an error status, as on hardware.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>

#include "priv.h"

#define OPB(op) (1u << (op))
/* Operations each transport service supports (IBTA vol 1 ch. 9/10: UD carries sends only; UC
 * adds RDMA writes; RC adds reads, atomics and invalidation). */
static const uint32_t SEND_OPS[] = {
    [IBV_QPT_RC] = OPB(IBV_WR_SEND) | OPB(IBV_WR_SEND_WITH_IMM) | OPB(IBV_WR_RDMA_WRITE) |
                   OPB(IBV_WR_RDMA_WRITE_WITH_IMM) | OPB(IBV_WR_RDMA_READ) |
                   OPB(IBV_WR_ATOMIC_CMP_AND_SWP) | OPB(IBV_WR_ATOMIC_FETCH_AND_ADD) |
                   OPB(IBV_WR_LOCAL_INV) | OPB(IBV_WR_SEND_WITH_INV) | OPB(IBV_WR_BIND_MW),
    [IBV_QPT_UC] = OPB(IBV_WR_SEND) | OPB(IBV_WR_SEND_WITH_IMM) | OPB(IBV_WR_RDMA_WRITE) |
                   OPB(IBV_WR_RDMA_WRITE_WITH_IMM),
    [IBV_QPT_UD] = OPB(IBV_WR_SEND) | OPB(IBV_WR_SEND_WITH_IMM),
    /* an XRC initiator carries RC's sends, RDMA and atomics (IBTA Annex A14) */
    [IBV_QPT_XRC_SEND] = OPB(IBV_WR_SEND) | OPB(IBV_WR_SEND_WITH_IMM) | OPB(IBV_WR_RDMA_WRITE) |
                         OPB(IBV_WR_RDMA_WRITE_WITH_IMM) | OPB(IBV_WR_RDMA_READ) |
                         OPB(IBV_WR_ATOMIC_CMP_AND_SWP) | OPB(IBV_WR_ATOMIC_FETCH_AND_ADD),
};
uint32_t rnic_send_ops(enum ibv_qp_type t)
{
    return (unsigned)t < sizeof(SEND_OPS) / sizeof(SEND_OPS[0]) ? SEND_OPS[t] : 0;
}

#define INLINE_OPS (OPB(IBV_WR_SEND) | OPB(IBV_WR_SEND_WITH_IMM) | OPB(IBV_WR_RDMA_WRITE) | \
                    OPB(IBV_WR_RDMA_WRITE_WITH_IMM) | OPB(IBV_WR_SEND_WITH_INV))
#define RDMA_OPS (OPB(IBV_WR_RDMA_WRITE) | OPB(IBV_WR_RDMA_WRITE_WITH_IMM) | OPB(IBV_WR_RDMA_READ))
#define ATOMIC_OPS (OPB(IBV_WR_ATOMIC_CMP_AND_SWP) | OPB(IBV_WR_ATOMIC_FETCH_AND_ADD))
#define FLAGS_OK (IBV_SEND_FENCE | IBV_SEND_SIGNALED | IBV_SEND_SOLICITED | IBV_SEND_INLINE)

static inline void *slot(struct rring *r, uint32_t idx)
{
    return r->ents + (size_t)(idx & (r->n - 1)) * r->es;
}

/* Is the ring full at index prod? Re-reads cons (the daemon advances it). */
static inline int ring_full(struct rring *r, uint32_t prod, uint32_t *cons)
{
    if (prod - *cons < r->limit)
        return 0;
    *cons = ld_acq(&r->hdr->cons);
    return prod - *cons >= r->limit;
}

static int write_send(struct rnic_qp *qp, struct ibv_send_wr *wr, struct rnic_send_wqe *w)
{
    enum ibv_wr_opcode op = wr->opcode;
    uint32_t qpt = qp->qp.qp_type;
    if ((unsigned)op >= 32 || qpt >= sizeof(SEND_OPS) / sizeof(SEND_OPS[0]) ||
        !(SEND_OPS[qpt] & OPB(op)))
        return EINVAL;
    if (wr->send_flags & ~(unsigned)FLAGS_OK)
        return EINVAL;
    if (wr->num_sge < 0)
        return EINVAL;
    if ((OPB(op) & ATOMIC_OPS) &&
        (wr->wr.atomic.remote_addr % 8 || wr->num_sge != 1 || wr->sg_list[0].length != 8))
        return EINVAL;
    uint32_t inline_len = 0;
    if (wr->send_flags & IBV_SEND_INLINE) {
        if (!(OPB(op) & INLINE_OPS))
            return EINVAL;
        uint32_t cap = qp->cap.max_inline_data;
        if (cap > qp->sq.max_inline)
            cap = qp->sq.max_inline;
        if (cap > qp->sq.es - RNIC_SEND_WQE_HDR_SIZE)
            cap = qp->sq.es - RNIC_SEND_WQE_HDR_SIZE;
        for (int i = 0; i < wr->num_sge; i++) {
            if (wr->sg_list[i].length > cap - inline_len)
                return EINVAL;      /* more inline data than max_inline_data */
            inline_len += wr->sg_list[i].length;
        }
    } else {
        uint32_t max = qp->cap.max_send_sge < qp->sq.max_sge ? qp->cap.max_send_sge : qp->sq.max_sge;
        if (op == IBV_WR_LOCAL_INV || op == IBV_WR_BIND_MW ? wr->num_sge != 0 : (uint32_t)wr->num_sge > max)
            return EINVAL;
    }
    if (qpt == IBV_QPT_UD && !wr->wr.ud.ah)
        return EINVAL;
    const struct ibv_mw_bind_info *bi = &wr->bind_mw.bind_info;
    if (op == IBV_WR_BIND_MW &&      /* IBTA 10.6.7.2: the window and MR of this PD */
        (!wr->bind_mw.mw || wr->bind_mw.mw->context != qp->qp.context ||
         (bi->mr && bi->mr->pd != wr->bind_mw.mw->pd) || (!bi->mr && (bi->addr || bi->length))))
        return EINVAL;
    memset(w, 0, RNIC_SEND_WQE_HDR_SIZE);
    w->wr_id = wr->wr_id;
    w->opcode = (uint8_t)op;
    w->send_flags = wr->send_flags;
    if (op == IBV_WR_SEND_WITH_IMM || op == IBV_WR_RDMA_WRITE_WITH_IMM)
        /* wr->imm_data is a __be32: its bytes are the wire's ImmDt (IBTA 9.4.3); the WQE
         * holds the value as a host integer, which rnicd sends big-endian */
        w->imm_data = be32toh(wr->imm_data);
    else if (op == IBV_WR_SEND_WITH_INV || op == IBV_WR_LOCAL_INV)
        w->invalidate_rkey = wr->invalidate_rkey;
    if (OPB(op) & RDMA_OPS) {
        w->remote_addr = wr->wr.rdma.remote_addr;
        w->rkey = wr->wr.rdma.rkey;
    } else if (OPB(op) & ATOMIC_OPS) {
        w->remote_addr = wr->wr.atomic.remote_addr;
        w->rkey = wr->wr.atomic.rkey;
        w->compare_add = wr->wr.atomic.compare_add;
        w->swap = wr->wr.atomic.swap;
    }
    if (op == IBV_WR_BIND_MW) {       /* after the fields they share a place with */
        w->bind_mw = wr->bind_mw.mw->handle;
        w->bind_lkey = bi->mr ? bi->mr->lkey : 0;
        w->remote_addr = bi->addr;
        w->bind_length = bi->length;
        w->bind_access = bi->mw_access_flags;
        w->rkey = wr->bind_mw.rkey;
    }
    if (qpt == IBV_QPT_XRC_SEND)
        w->remote_srqn = wr->qp_type.xrc.remote_srqn & 0xffffff;
    if (qpt == IBV_QPT_UD) {
        w->ah = wr->wr.ud.ah->handle;
        w->remote_qpn = wr->wr.ud.remote_qpn & 0xffffff;
        w->remote_qkey = wr->wr.ud.remote_qkey;
    }
    if (wr->send_flags & IBV_SEND_INLINE) {
        uint8_t *d = (uint8_t *)w + RNIC_SEND_WQE_HDR_SIZE;
        for (int i = 0; i < wr->num_sge; i++) {
            memcpy(d, (const void *)(uintptr_t)wr->sg_list[i].addr, wr->sg_list[i].length);
            d += wr->sg_list[i].length;
        }
        w->inline_len = inline_len;
        w->num_sge = 0;
    } else {
        for (int i = 0; i < wr->num_sge; i++) {
            w->sg[i].addr = wr->sg_list[i].addr;
            w->sg[i].length = wr->sg_list[i].length;
            w->sg[i].lkey = wr->sg_list[i].lkey;
        }
        w->num_sge = (uint16_t)wr->num_sge;
    }
    return 0;
}

int rnic_post_send(struct ibv_qp *ibqp, struct ibv_send_wr *wr, struct ibv_send_wr **bad)
{
    return rnic_post_send_list(ibqp, wr, bad, 0);
}

/* all_or_none (the ibv_wr_* batch of wr_complete): on a bad WR none of the list is posted. */
int rnic_post_send_list(struct ibv_qp *ibqp, struct ibv_send_wr *wr, struct ibv_send_wr **bad,
                        int all_or_none)
{
    struct rnic_qp *qp = container(ibqp, struct rnic_qp, qp);
    struct rring *r = &qp->sq;
    enum ibv_qp_state st = ibqp->state;
    if (!qp->has_sq || ((st == IBV_QPS_RESET || st == IBV_QPS_INIT || st == IBV_QPS_RTR) &&
                        !ld_acq(&r->hdr->error))) {
        *bad = wr;
        return EINVAL;              /* IBTA 10.8.1: sends are posted in RTS, SQD, SQE, ERR */
    }
    int rc = 0;
    pthread_spin_lock(&qp->sq_lock);
    uint32_t prod = r->hdr->prod, start = prod, cons = ld_acq(&r->hdr->cons);
    for (; wr; wr = wr->next) {
        if (ring_full(r, prod, &cons)) {
            rc = ENOMEM;
            break;
        }
        rc = write_send(qp, wr, slot(r, prod));
        if (rc)
            break;
        prod++;
    }
    if (rc && all_or_none)
        prod = start;             /* written slots past prod are never read */
    if (prod != start) {
        st_rel(&r->hdr->prod, prod);
        rnic_doorbell(rctx(ibqp->context), r);
    }
    pthread_spin_unlock(&qp->sq_lock);
    if (rc)
        *bad = wr;
    return rc;
}

static int post_recv_ring(struct rnic_ctx *c, struct rring *r, pthread_spinlock_t *lock,
                          uint32_t max_sge, struct ibv_recv_wr *wr, struct ibv_recv_wr **bad)
{
    int rc = 0;
    if (max_sge > r->max_sge)
        max_sge = r->max_sge;
    pthread_spin_lock(lock);
    uint32_t prod = r->hdr->prod, start = prod, cons = ld_acq(&r->hdr->cons);
    for (; wr; wr = wr->next) {
        if (wr->num_sge < 0 || (uint32_t)wr->num_sge > max_sge) {
            rc = EINVAL;
            break;
        }
        if (ring_full(r, prod, &cons)) {
            rc = ENOMEM;
            break;
        }
        struct rnic_recv_wqe *w = slot(r, prod);
        w->wr_id = wr->wr_id;
        w->num_sge = (uint32_t)wr->num_sge;
        w->_rsvd0 = 0;
        for (int i = 0; i < wr->num_sge; i++) {
            w->sg[i].addr = wr->sg_list[i].addr;
            w->sg[i].length = wr->sg_list[i].length;
            w->sg[i].lkey = wr->sg_list[i].lkey;
        }
        prod++;
    }
    if (prod != start) {
        st_rel(&r->hdr->prod, prod);
        if (ld_acq(&r->hdr->error))   /* the daemon flushes them (IBTA 10.8.3) */
            rnic_doorbell(c, NULL);
    }
    pthread_spin_unlock(lock);
    if (rc)
        *bad = wr;
    return rc;
}

int rnic_post_recv(struct ibv_qp *ibqp, struct ibv_recv_wr *wr, struct ibv_recv_wr **bad)
{
    struct rnic_qp *qp = container(ibqp, struct rnic_qp, qp);
    if (!qp->has_rq || ibqp->state == IBV_QPS_RESET) {
        *bad = wr;
        return EINVAL;   /* no RQ (an SRQ is used), or RESET: receives need INIT or later */
    }
    return post_recv_ring(rctx(ibqp->context), &qp->rq, &qp->rq_lock, qp->cap.max_recv_sge, wr, bad);
}

int rnic_post_srq_recv(struct ibv_srq *ibsrq, struct ibv_recv_wr *wr, struct ibv_recv_wr **bad)
{
    struct rnic_srq *srq = container(ibsrq, struct rnic_srq, srq);
    return post_recv_ring(rctx(ibsrq->context), &srq->ring, &srq->lock, srq->max_sge, wr, bad);
}
