/* cq_ex.c — the extended CQ (ibv_create_cq_ex(3)): start_poll / next_poll / end_poll read the
 * same CQ ring as poll_cq, one completion at a time, and the read_* ops describe the current
 * one. The CQ lock is held from a successful start_poll to end_poll, as libmlx5 holds it. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "priv.h"

/* enum ibv_create_cq_wc_flags rnicd's CQEs carry (IBV_WC_STANDARD_FLAGS); the others
 * (timestamps, VLAN, flow tag, tag matching) need hardware rnicd does not model. */
#define WC_EX_OFFERED ((uint64_t)IBV_WC_STANDARD_FLAGS)
#define WC_EX_KNOWN ((uint64_t)IBV_CREATE_CQ_SUP_WC_FLAGS)

static inline struct rnic_cq *rcq_ex(struct ibv_cq_ex *c)
{
    return container(c, struct rnic_cq, cq_ex);
}

/* Take the completion at cons into cq->cur and consume it; ENOENT when the ring is empty. */
static int take(struct rnic_cq *cq)
{
    struct rring *r = &cq->ring;
    struct rnic_ring_hdr *h = r->hdr;
    uint32_t prod = ld_acq(&h->prod), cons = h->cons, avail = prod - cons;
    if (avail > r->n || (avail == 0 && h->error))
        return EIO;           /* corrupt indices, or the CQ overran (it is in error) */
    if (avail == 0)
        return ENOENT;
    memcpy(&cq->cur, r->ents + (size_t)(cons & (r->n - 1)) * r->es, sizeof(cq->cur));
    st_rel(&h->cons, cons + 1);
    cq->cq_ex.wr_id = cq->cur.wr_id;
    cq->cq_ex.status = (enum ibv_wc_status)cq->cur.status;
    return 0;
}

static int start_poll(struct ibv_cq_ex *c, struct ibv_poll_cq_attr *attr)
{
    struct rnic_cq *cq = rcq_ex(c);
    if (attr && attr->comp_mask)
        return EINVAL;        /* ibv_poll_cq_attr.comp_mask: no fields defined */
    pthread_spin_lock(&cq->lock);
    int rc = take(cq);
    if (rc) {                 /* ibv_create_cq_ex(3): no end_poll after a failed start_poll */
        pthread_spin_unlock(&cq->lock);
        if (rc == ENOENT)
            rnic_poll_idle(cq->ring.hdr);
    }
    return rc;
}

static int next_poll(struct ibv_cq_ex *c) { return take(rcq_ex(c)); }
static void end_poll(struct ibv_cq_ex *c) { pthread_spin_unlock(&rcq_ex(c)->lock); }

#define RD(name, type, expr) \
    static type read_##name(struct ibv_cq_ex *c) { const struct rnic_cqe *e = &rcq_ex(c)->cur; return (type)(expr); }
RD(opcode, enum ibv_wc_opcode, e->opcode)
RD(vendor_err, uint32_t, e->vendor_err)
RD(byte_len, uint32_t, e->byte_len)
RD(imm_data, __be32, cqe_imm(e))         /* also ibv_wc_read_invalidated_rkey (IBV_WC_WITH_INV) */
RD(qp_num, uint32_t, e->qp_num)
RD(src_qp, uint32_t, e->src_qp)
RD(wc_flags, unsigned int, e->wc_flags)
RD(slid, uint32_t, e->slid)
RD(sl, uint8_t, e->sl)
RD(dlid_path_bits, uint8_t, e->dlid_path_bits)
#undef RD

struct ibv_cq_ex *rnic_create_cq_ex(struct ibv_context *ctx, struct ibv_cq_init_attr_ex *ia)
{
    if (ia->wc_flags & ~WC_EX_KNOWN) {
        errno = EINVAL;
        return NULL;
    }
    if ((ia->wc_flags & ~WC_EX_OFFERED) || ia->flags) {
        rnic_log("create_cq_ex: completion timestamps, VLAN, flow tags, tag matching and "
                 "creation flags are not offered by rnicd");
        errno = EOPNOTSUPP;
        return NULL;
    }
    if (ia->comp_mask & ~(uint32_t)(IBV_CQ_INIT_ATTR_MASK_FLAGS | IBV_CQ_INIT_ATTR_MASK_PD)) {
        errno = EINVAL;
        return NULL;
    }
    /* IBV_CQ_INIT_ATTR_MASK_PD: a parent domain of this context (as mlx5 requires); the CQ
     * needs nothing from it (its allocators are not called: rnic_alloc_parent_domain) */
    if ((ia->comp_mask & IBV_CQ_INIT_ATTR_MASK_PD) &&
        (!ia->parent_domain || ia->parent_domain->context != ctx ||
         !container(ia->parent_domain, struct rnic_pd, pd)->base)) {
        errno = EINVAL;
        return NULL;
    }
    struct rnic_cq *cq = rnic_cq_create(ctx, (int)ia->cqe, ia->cq_context, ia->channel,
                                        (int)ia->comp_vector);
    if (!cq)
        return NULL;
    struct ibv_cq_ex *x = &cq->cq_ex;
    x->comp_mask = 0;
    x->start_poll = start_poll;
    x->next_poll = next_poll;
    x->end_poll = end_poll;
    x->read_opcode = read_opcode;
    x->read_vendor_err = read_vendor_err;
    x->read_byte_len = read_byte_len;
    x->read_imm_data = read_imm_data;
    x->read_qp_num = read_qp_num;
    x->read_src_qp = read_src_qp;
    x->read_wc_flags = read_wc_flags;
    x->read_slid = read_slid;
    x->read_sl = read_sl;
    x->read_dlid_path_bits = read_dlid_path_bits;
    return x;
}
