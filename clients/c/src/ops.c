/* ops.c — what a context answers through ctx->ops and struct verbs_context (the inline calls of
 * verbs.h), fork support, and the verbs rnicd does not offer (EOPNOTSUPP, never abort). */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "priv.h"

extern int (*rnic_get_srq_num_op)(struct ibv_srq *, uint32_t *);

/* Memory windows (IBTA 10.6.7): alloc/dealloc are control verbs; binds are work requests. */
static struct ibv_mw *alloc_mw_op(struct ibv_pd *pd, enum ibv_mw_type type)
{
    struct rargs a;
    struct rreply rep;
    rargs_init(&a);
    ra_uint(&a, "pd", pd->handle);
    ra_int(&a, "mw_type", type);
    if (rnic_call(rctx(pd->context), "alloc_mw", &a, NULL, 0, &rep, 0))
        return NULL;
    int64_t h, rkey;
    int bad = mo_int(rep.r, "mw", &h) | mo_int(rep.r, "rkey", &rkey);
    rreply_free(&rep);
    struct ibv_mw *mw = bad ? NULL : calloc(1, sizeof(*mw));
    if (!mw) {
        if (!bad)
            rnic_simple(rctx(pd->context), "dealloc_mw", "mw", (uint32_t)h);
        errno = bad ? EPROTO : ENOMEM;
        return NULL;
    }
    mw->context = pd->context;
    mw->pd = pd;
    mw->rkey = (uint32_t)rkey;
    mw->handle = (uint32_t)h;
    mw->type = type;
    return mw;
}

/* ibv_bind_mw(3), a type 1 window (verbs.h checked type, range and PD): a BIND_MW work
 * request with the window's next rkey, which the window takes once it is posted. */
static int bind_mw_op(struct ibv_qp *qp, struct ibv_mw *mw, struct ibv_mw_bind *b)
{
    struct ibv_send_wr wr, *bad;
    memset(&wr, 0, sizeof(wr));
    wr.wr_id = b->wr_id;
    wr.opcode = IBV_WR_BIND_MW;
    wr.send_flags = b->send_flags;
    wr.bind_mw.mw = mw;
    wr.bind_mw.rkey = ibv_inc_rkey(mw->rkey);
    wr.bind_mw.bind_info = b->bind_info;
    int rc = rnic_post_send(qp, &wr, &bad);
    if (rc == 0)
        mw->rkey = wr.bind_mw.rkey;
    return rc;
}

static int dealloc_mw_op(struct ibv_mw *mw)
{
    if (rnic_simple(rctx(mw->context), "dealloc_mw", "mw", mw->handle))
        return errno;
    free(mw);
    return 0;
}

static int compat_query_device(struct ibv_context *ctx, struct ibv_device_attr *attr)
{
    return ibv_query_device(ctx, attr);
}

static struct ibv_qp *create_qp_ex_op(struct ibv_context *ctx, struct ibv_qp_init_attr_ex *ia)
{
    return rnic_create_qp_ex(ctx, ia);
}

static struct ibv_srq *create_srq_ex_op(struct ibv_context *ctx, struct ibv_srq_init_attr_ex *ia)
{
    return rnic_create_srq_ex(ctx, ia);
}

void rnic_fill_context_ops(struct rnic_ctx *c)
{
    struct ibv_context_ops *o = &c->vctx.context.ops;
    o->_compat_query_device = compat_query_device;
    o->alloc_mw = alloc_mw_op;
    o->bind_mw = bind_mw_op;
    o->dealloc_mw = dealloc_mw_op;
    o->poll_cq = rnic_poll_cq;
    o->req_notify_cq = rnic_req_notify_cq;
    o->post_srq_recv = rnic_post_srq_recv;
    o->post_send = rnic_post_send;
    o->post_recv = rnic_post_recv;
    struct verbs_context *v = &c->vctx;
    v->query_device_ex = rnic_query_device_ex;
    v->create_qp_ex = create_qp_ex_op;
    v->create_srq_ex = create_srq_ex_op;
    v->get_srq_num = rnic_get_srq_num_op;
    v->create_cq_ex = rnic_create_cq_ex;
    v->open_xrcd = rnic_open_xrcd;
    v->close_xrcd = rnic_close_xrcd;
    v->alloc_parent_domain = rnic_alloc_parent_domain;
}

/* ---- fork: registered memory is copied into a child (docs/memory-registration.md) ---------- */
RNIC_EXPORT int ibv_fork_init(void) { return 0; }
RNIC_EXPORT enum ibv_fork_status ibv_is_fork_initialized(void) { return IBV_FORK_UNNEEDED; }
RNIC_EXPORT int ibv_dontfork_range(void *base, size_t size) { (void)base; (void)size; return 0; }
RNIC_EXPORT int ibv_dofork_range(void *base, size_t size) { (void)base; (void)size; return 0; }

/* ---- not offered ---------------------------------------------------------------------------- */
#define NOTSUP_PTR(decl) RNIC_EXPORT decl { errno = EOPNOTSUPP; return NULL; }
#define NOTSUP_INT(decl) RNIC_EXPORT decl { errno = EOPNOTSUPP; return EOPNOTSUPP; }

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-parameter"
NOTSUP_INT(int ibv_attach_mcast(struct ibv_qp *qp, const union ibv_gid *gid, uint16_t lid))
NOTSUP_INT(int ibv_detach_mcast(struct ibv_qp *qp, const union ibv_gid *gid, uint16_t lid))
NOTSUP_PTR(struct ibv_dm *ibv_import_dm(struct ibv_context *ctx, uint32_t h))
RNIC_EXPORT void ibv_unimport_dm(struct ibv_dm *dm) { }
NOTSUP_INT(int ibv_query_ece(struct ibv_qp *qp, struct ibv_ece *ece))
NOTSUP_INT(int ibv_set_ece(struct ibv_qp *qp, struct ibv_ece *ece))
NOTSUP_PTR(struct ibv_mr *ibv_reg_dmabuf_mr(struct ibv_pd *pd, uint64_t off, size_t len,
                                            uint64_t iova, int fd, int access))
NOTSUP_INT(int ibv_resolve_eth_l2_from_gid(struct ibv_context *ctx, struct ibv_ah_attr *attr,
                                           uint8_t eth_mac[6], uint16_t *vid))
#pragma GCC diagnostic pop

/* 1: rnicd places the data of every operation in order (an RC/UC message's packets in PSN
 * order, each once; a UD message is one packet). */
RNIC_EXPORT int ibv_query_qp_data_in_order(struct ibv_qp *qp, enum ibv_wr_opcode op, uint32_t flags)
{
    (void)qp; (void)op;
    return flags ? 0 : 1;
}

/* ibv_init_ah_from_wc for RoCEv2 (A17.4.5.2): the sender from the GRH a UD receive placed
 * in front of the payload (an IPv4 header in its last 20 bytes, else an IPv6/IBA GRH). */
RNIC_EXPORT int ibv_init_ah_from_wc(struct ibv_context *ctx, uint8_t port, struct ibv_wc *wc,
                                    struct ibv_grh *grh, struct ibv_ah_attr *ah)
{
    (void)ctx;
    memset(ah, 0, sizeof(*ah));
    if (!(wc->wc_flags & IBV_WC_GRH) || !grh)
        return EINVAL;
    const uint8_t *raw = (const uint8_t *)grh;
    ah->is_global = 1;
    ah->port_num = port;
    ah->sl = wc->sl;
    ah->dlid = wc->slid;
    ah->src_path_bits = wc->dlid_path_bits;
    ah->grh.hop_limit = 0xff;
    if ((raw[20] >> 4) == 4) {
        memset(ah->grh.dgid.raw, 0, 10);
        ah->grh.dgid.raw[10] = ah->grh.dgid.raw[11] = 0xff;
        memcpy(ah->grh.dgid.raw + 12, raw + 20 + 12, 4);
        ah->grh.traffic_class = raw[20 + 1];
    } else if ((raw[0] >> 4) == 6) {
        memcpy(ah->grh.dgid.raw, raw + 8, 16);
        uint32_t vtf = ((uint32_t)raw[0] << 24) | ((uint32_t)raw[1] << 16) | ((uint32_t)raw[2] << 8) | raw[3];
        ah->grh.traffic_class = (uint8_t)(vtf >> 20);
        ah->grh.flow_label = vtf & 0xfffff;
    } else {
        return EINVAL;
    }
    return 0;
}

RNIC_EXPORT struct ibv_ah *ibv_create_ah_from_wc(struct ibv_pd *pd, struct ibv_wc *wc,
                                                 struct ibv_grh *grh, uint8_t port)
{
    struct ibv_ah_attr a;
    int rc = ibv_init_ah_from_wc(pd->context, port, wc, grh, &a);
    if (rc) {
        errno = rc;
        return NULL;
    }
    return ibv_create_ah(pd, &a);
}
