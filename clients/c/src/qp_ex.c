/* qp_ex.c — the extended QP's post API (ibv_wr_post(3)): between wr_start and wr_complete each
 * ibv_wr_* builder appends an ibv_send_wr (its SGEs and a copy of its inline data) to the
 * QP's batch; wr_complete hands the chain to post.c, which checks and writes the WQEs exactly
 * as ibv_post_send does (one code path), all of them or none. Errors in building (too many
 * WRs, too much inline data, an SGE list longer than the QP's) make wr_complete fail. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "priv.h"

struct wrx_ent {
    struct ibv_send_wr wr;
    struct ibv_sge *sge;      /* max_sge entries */
    uint8_t *inl;             /* max_inline bytes */
};

struct rnic_wrx {
    pthread_spinlock_t lock;  /* held from wr_start to wr_complete/wr_abort, as libmlx5 does */
    uint32_t cap, n, max_sge, max_inline;
    int err;                  /* first building error of this batch */
    struct wrx_ent scratch;   /* where builders write once the batch overflowed */
    struct wrx_ent ent[];
};

static inline struct rnic_qp *rqp_ex(struct ibv_qp_ex *x) { return container(x, struct rnic_qp, qp_ex); }

static struct wrx_ent *new_wr(struct ibv_qp_ex *x, enum ibv_wr_opcode op)
{
    struct rnic_wrx *b = rqp_ex(x)->wrx;
    struct wrx_ent *e;
    if (b->n < b->cap) {
        e = &b->ent[b->n++];
    } else {
        if (!b->err)
            b->err = ENOMEM;      /* more WRs than max_send_wr in one batch */
        e = &b->scratch;
    }
    memset(&e->wr, 0, sizeof(e->wr));
    e->wr.wr_id = x->wr_id;
    e->wr.send_flags = x->wr_flags;
    e->wr.opcode = op;
    e->wr.sg_list = e->sge;
    return e;
}

/* The WR the data setters apply to: the last one built. */
static struct wrx_ent *cur(struct ibv_qp_ex *x)
{
    struct rnic_wrx *b = rqp_ex(x)->wrx;
    if (b->n == 0 || b->err == ENOMEM) {
        if (!b->err)
            b->err = EINVAL;      /* a setter before any builder */
        return &b->scratch;
    }
    return &b->ent[b->n - 1];
}

static void fail(struct ibv_qp_ex *x, int e)
{
    struct rnic_wrx *b = rqp_ex(x)->wrx;
    if (!b->err)
        b->err = e;
}

/* ---- builders ---------------------------------------------------------------------------- */
static void wr_send(struct ibv_qp_ex *x) { new_wr(x, IBV_WR_SEND); }
static void wr_send_imm(struct ibv_qp_ex *x, __be32 imm) { new_wr(x, IBV_WR_SEND_WITH_IMM)->wr.imm_data = imm; }
static void wr_send_inv(struct ibv_qp_ex *x, uint32_t rkey)
{
    new_wr(x, IBV_WR_SEND_WITH_INV)->wr.invalidate_rkey = rkey;
}
static void rdma(struct ibv_qp_ex *x, enum ibv_wr_opcode op, uint32_t rkey, uint64_t addr, __be32 imm)
{
    struct wrx_ent *e = new_wr(x, op);
    e->wr.wr.rdma.rkey = rkey;
    e->wr.wr.rdma.remote_addr = addr;
    e->wr.imm_data = imm;
}
static void wr_rdma_write(struct ibv_qp_ex *x, uint32_t rkey, uint64_t addr) { rdma(x, IBV_WR_RDMA_WRITE, rkey, addr, 0); }
static void wr_rdma_write_imm(struct ibv_qp_ex *x, uint32_t rkey, uint64_t addr, __be32 imm)
{
    rdma(x, IBV_WR_RDMA_WRITE_WITH_IMM, rkey, addr, imm);
}
static void wr_rdma_read(struct ibv_qp_ex *x, uint32_t rkey, uint64_t addr) { rdma(x, IBV_WR_RDMA_READ, rkey, addr, 0); }
static void atomic(struct ibv_qp_ex *x, enum ibv_wr_opcode op, uint32_t rkey, uint64_t addr,
                   uint64_t cmp_add, uint64_t swap)
{
    struct wrx_ent *e = new_wr(x, op);
    e->wr.wr.atomic.rkey = rkey;
    e->wr.wr.atomic.remote_addr = addr;
    e->wr.wr.atomic.compare_add = cmp_add;
    e->wr.wr.atomic.swap = swap;
}
static void wr_atomic_cmp_swp(struct ibv_qp_ex *x, uint32_t rkey, uint64_t addr, uint64_t cmp, uint64_t swap)
{
    atomic(x, IBV_WR_ATOMIC_CMP_AND_SWP, rkey, addr, cmp, swap);
}
static void wr_atomic_fetch_add(struct ibv_qp_ex *x, uint32_t rkey, uint64_t addr, uint64_t add)
{
    atomic(x, IBV_WR_ATOMIC_FETCH_AND_ADD, rkey, addr, add, 0);
}
static void wr_local_inv(struct ibv_qp_ex *x, uint32_t rkey) { new_wr(x, IBV_WR_LOCAL_INV)->wr.invalidate_rkey = rkey; }
static void wr_bind_mw(struct ibv_qp_ex *x, struct ibv_mw *mw, uint32_t rkey,
                       const struct ibv_mw_bind_info *info)
{
    struct wrx_ent *e = new_wr(x, IBV_WR_BIND_MW);
    e->wr.bind_mw.mw = mw;
    e->wr.bind_mw.rkey = rkey;
    e->wr.bind_mw.bind_info = *info;
}

/* ---- setters ----------------------------------------------------------------------------- */
static void wr_set_sge(struct ibv_qp_ex *x, uint32_t lkey, uint64_t addr, uint32_t length)
{
    struct wrx_ent *e = cur(x);
    e->sge[0] = (struct ibv_sge){.addr = addr, .length = length, .lkey = lkey};
    e->wr.num_sge = 1;
}
static void wr_set_sge_list(struct ibv_qp_ex *x, size_t n, const struct ibv_sge *sg)
{
    struct wrx_ent *e = cur(x);
    if (n > rqp_ex(x)->wrx->max_sge) {
        fail(x, EINVAL);      /* more SGEs than max_send_sge */
        return;
    }
    memcpy(e->sge, sg, n * sizeof(*sg));
    e->wr.num_sge = (int)n;
}
static void wr_set_inline_data_list(struct ibv_qp_ex *x, size_t n, const struct ibv_data_buf *bufs)
{
    struct wrx_ent *e = cur(x);
    struct rnic_wrx *b = rqp_ex(x)->wrx;
    size_t len = 0;
    for (size_t i = 0; i < n; i++) {
        if (bufs[i].length > b->max_inline - len) {
            fail(x, EINVAL);  /* more than max_inline_data */
            return;
        }
        memcpy(e->inl + len, bufs[i].addr, bufs[i].length);   /* the caller may reuse them */
        len += bufs[i].length;
    }
    e->sge[0] = (struct ibv_sge){.addr = (uintptr_t)e->inl, .length = (uint32_t)len};
    e->wr.num_sge = 1;
    e->wr.send_flags |= IBV_SEND_INLINE;
}
static void wr_set_inline_data(struct ibv_qp_ex *x, void *addr, size_t length)
{
    struct ibv_data_buf b = {.addr = addr, .length = length};
    wr_set_inline_data_list(x, 1, &b);
}
static void wr_set_ud_addr(struct ibv_qp_ex *x, struct ibv_ah *ah, uint32_t qpn, uint32_t qkey)
{
    struct wrx_ent *e = cur(x);
    e->wr.wr.ud.ah = ah;
    e->wr.wr.ud.remote_qpn = qpn;
    e->wr.wr.ud.remote_qkey = qkey;
}
static void wr_set_xrc_srqn(struct ibv_qp_ex *x, uint32_t srqn) { cur(x)->wr.qp_type.xrc.remote_srqn = srqn; }

/* ---- the batch --------------------------------------------------------------------------- */
static void wr_start(struct ibv_qp_ex *x)
{
    struct rnic_wrx *b = rqp_ex(x)->wrx;
    pthread_spin_lock(&b->lock);
    b->n = 0;
    b->err = 0;
}
static void wr_abort(struct ibv_qp_ex *x)
{
    struct rnic_wrx *b = rqp_ex(x)->wrx;
    b->n = 0;
    pthread_spin_unlock(&b->lock);
}
static int wr_complete(struct ibv_qp_ex *x)
{
    struct rnic_wrx *b = rqp_ex(x)->wrx;
    int rc = b->err;
    if (!rc && b->n) {
        for (uint32_t i = 0; i + 1 < b->n; i++)
            b->ent[i].wr.next = &b->ent[i + 1].wr;
        b->ent[b->n - 1].wr.next = NULL;
        struct ibv_send_wr *bad;
        rc = rnic_post_send_list(&x->qp_base, &b->ent[0].wr, &bad, 1);
    }
    b->n = 0;
    b->err = 0;
    pthread_spin_unlock(&b->lock);
    return rc;
}

static void ent_init(struct wrx_ent *e, uint8_t **p, uint32_t max_sge, uint32_t max_inline)
{
    e->sge = (struct ibv_sge *)*p;
    *p += (size_t)max_sge * sizeof(struct ibv_sge);
    e->inl = *p;
    *p += (max_inline + 15u) & ~15u;
}

/* IBV_QP_INIT_ATTR_SEND_OPS_FLAGS: each IBV_QP_EX_WITH_x is 1 << IBV_WR_x for the opcodes
 * ibv_post_send knows; those the QP type does not carry (and TSO, ATOMIC_WRITE) are
 * EOPNOTSUPP. */
int rnic_qp_ex_init(struct rnic_qp *qp, uint64_t send_ops_flags)
{
    if (send_ops_flags & ~(uint64_t)rnic_send_ops(qp->qp.qp_type)) {
        rnic_log("create_qp_ex: send_ops_flags %#llx not offered for this QP type",
                 (unsigned long long)(send_ops_flags & ~(uint64_t)rnic_send_ops(qp->qp.qp_type)));
        return EOPNOTSUPP;
    }
    uint32_t cap = qp->cap.max_send_wr ? qp->cap.max_send_wr : 1;
    uint32_t max_sge = qp->cap.max_send_sge ? qp->cap.max_send_sge : 1;
    uint32_t max_inline = qp->cap.max_inline_data;
    size_t per = (size_t)max_sge * sizeof(struct ibv_sge) + ((max_inline + 15u) & ~15u);
    struct rnic_wrx *b = calloc(1, sizeof(*b) + (cap + 1) * (sizeof(struct wrx_ent) + per));
    if (!b)
        return ENOMEM;
    pthread_spin_init(&b->lock, PTHREAD_PROCESS_PRIVATE);
    b->cap = cap;
    b->max_sge = max_sge;
    b->max_inline = max_inline;
    uint8_t *p = (uint8_t *)&b->ent[cap];
    for (uint32_t i = 0; i < cap; i++)
        ent_init(&b->ent[i], &p, max_sge, max_inline);
    ent_init(&b->scratch, &p, max_sge, max_inline);
    qp->wrx = b;
    struct ibv_qp_ex *x = &qp->qp_ex;
    x->comp_mask = 0;
    x->wr_atomic_cmp_swp = wr_atomic_cmp_swp;
    x->wr_atomic_fetch_add = wr_atomic_fetch_add;
    x->wr_bind_mw = wr_bind_mw;
    x->wr_local_inv = wr_local_inv;
    x->wr_rdma_read = wr_rdma_read;
    x->wr_rdma_write = wr_rdma_write;
    x->wr_rdma_write_imm = wr_rdma_write_imm;
    x->wr_send = wr_send;
    x->wr_send_imm = wr_send_imm;
    x->wr_send_inv = wr_send_inv;
    x->wr_set_ud_addr = wr_set_ud_addr;
    x->wr_set_xrc_srqn = wr_set_xrc_srqn;
    x->wr_set_inline_data = wr_set_inline_data;
    x->wr_set_inline_data_list = wr_set_inline_data_list;
    x->wr_set_sge = wr_set_sge;
    x->wr_set_sge_list = wr_set_sge_list;
    x->wr_start = wr_start;
    x->wr_complete = wr_complete;
    x->wr_abort = wr_abort;
    return 0;
}

void rnic_qp_ex_free(struct rnic_qp *qp)
{
    if (qp->wrx)
        pthread_spin_destroy(&qp->wrx->lock);
    free(qp->wrx);
    qp->wrx = NULL;
}

RNIC_EXPORT struct ibv_qp_ex *ibv_qp_to_qp_ex(struct ibv_qp *ibqp)
{
    struct rnic_qp *qp = container(ibqp, struct rnic_qp, qp);
    return qp->wrx ? &qp->qp_ex : NULL;   /* only a QP created with send_ops_flags has them */
}
