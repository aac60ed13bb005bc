/* srq_ah.c — shared receive queues and address handles. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "priv.h"

/* XRC domains (IBTA Annex A14; ibv_open_xrcd(3)): contexts opening the same file share one. */
struct ibv_xrcd *rnic_open_xrcd(struct ibv_context *ctx, struct ibv_xrcd_init_attr *ia)
{
    if (ia->comp_mask >= IBV_XRCD_INIT_ATTR_RESERVED) {
        errno = EOPNOTSUPP;
        return NULL;
    }
    if (!(ia->comp_mask & IBV_XRCD_INIT_ATTR_FD) || !(ia->comp_mask & IBV_XRCD_INIT_ATTR_OFLAGS) ||
        ia->fd < -1) {
        errno = EINVAL;      /* both are required; fd -1 is a private domain */
        return NULL;
    }
    struct rargs a;
    struct rreply rep;
    rargs_init(&a);
    ra_uint(&a, "oflags", (uint32_t)ia->oflags);
    if (rnic_call(rctx(ctx), "open_xrcd", &a, ia->fd >= 0 ? &ia->fd : NULL, ia->fd >= 0, &rep, 0))
        return NULL;
    int64_t h;
    int bad = mo_int(rep.r, "xrcd", &h);
    rreply_free(&rep);
    struct rnic_xrcd *x = bad ? NULL : calloc(1, sizeof(*x));
    if (!x) {
        if (!bad)
            rnic_simple(rctx(ctx), "close_xrcd", "xrcd", (uint32_t)h);
        errno = bad ? EPROTO : ENOMEM;
        return NULL;
    }
    x->xrcd.context = ctx;
    x->handle = (uint32_t)h;
    return &x->xrcd;
}

int rnic_close_xrcd(struct ibv_xrcd *xrcd)
{
    struct rnic_xrcd *x = container(xrcd, struct rnic_xrcd, xrcd);
    if (rnic_simple(rctx(xrcd->context), "close_xrcd", "xrcd", x->handle) && errno != ECONNRESET)
        return errno;
    free(x);
    return 0;
}

struct ibv_srq *rnic_create_srq_ex(struct ibv_context *ctx, struct ibv_srq_init_attr_ex *ia)
{
    struct rnic_ctx *c = rctx(ctx);
    const uint32_t known = IBV_SRQ_INIT_ATTR_TYPE | IBV_SRQ_INIT_ATTR_PD |
                           IBV_SRQ_INIT_ATTR_XRCD | IBV_SRQ_INIT_ATTR_CQ;
    int xrc = (ia->comp_mask & IBV_SRQ_INIT_ATTR_TYPE) && ia->srq_type == IBV_SRQT_XRC;
    if ((ia->comp_mask & ~known) ||
        ((ia->comp_mask & IBV_SRQ_INIT_ATTR_TYPE) && ia->srq_type == IBV_SRQT_TM)) {
        errno = EOPNOTSUPP;    /* tag-matching SRQs are not offered */
        return NULL;
    }
    if (!(ia->comp_mask & IBV_SRQ_INIT_ATTR_PD) || !ia->pd || ia->attr.max_wr == 0 ||
        ((ia->comp_mask & IBV_SRQ_INIT_ATTR_TYPE) && ia->srq_type != IBV_SRQT_BASIC && !xrc) ||
        (xrc && (!(ia->comp_mask & IBV_SRQ_INIT_ATTR_XRCD) || !ia->xrcd ||
                 !(ia->comp_mask & IBV_SRQ_INIT_ATTR_CQ) || !ia->cq))) {
        errno = EINVAL;        /* an XRC SRQ needs pd, xrcd and cq (Annex A14) */
        return NULL;
    }
    struct rargs a;
    struct rreply rep;
    rargs_init(&a);
    ra_uint(&a, "pd", ia->pd->handle);
    ra_uint(&a, "max_wr", ia->attr.max_wr);
    ra_uint(&a, "max_sge", ia->attr.max_sge);
    ra_uint(&a, "srq_limit", ia->attr.srq_limit);
    ra_int(&a, "srq_type", xrc ? IBV_SRQT_XRC : IBV_SRQT_BASIC);
    if (xrc) {
        ra_uint(&a, "xrcd", container(ia->xrcd, struct rnic_xrcd, xrcd)->handle);
        ra_uint(&a, "cq", container(ia->cq, struct rnic_cq, cq)->handle);
    }
    if (rnic_call(c, "create_srq", &a, NULL, 0, &rep, 1))
        return NULL;
    int64_t h, max_wr, max_sge, size, num = 0;
    if (mo_int(rep.r, "srq", &h) || mo_int(rep.r, "max_wr", &max_wr) ||
        mo_int(rep.r, "max_sge", &max_sge) || mo_int(rep.r, "size", &size)) {
        rreply_free(&rep);
        errno = EPROTO;
        return NULL;
    }
    mo_int(rep.r, "srq_num", &num);
    struct rnic_srq *srq = calloc(1, sizeof(*srq));
    int rc = srq ? rring_map(&srq->ring, rep.fds[0], (uint64_t)size, RNIC_RING_SRQ, "create_srq")
                 : -ENOMEM;
    rep.fds[0] = -1;
    rreply_free(&rep);
    if (rc < 0) {
        free(srq);
        rnic_simple(c, "destroy_srq", "srq", (uint32_t)h);
        errno = -rc;
        return NULL;
    }
    if (max_wr > 0 && (uint64_t)max_wr < srq->ring.n)
        srq->ring.limit = (uint32_t)max_wr;
    srq->handle = (uint32_t)h;
    srq->srq_num = (uint32_t)num;
    srq->max_sge = (uint32_t)max_sge;
    pthread_spin_init(&srq->lock, PTHREAD_PROCESS_PRIVATE);
    srq->srq.context = ctx;
    srq->srq.srq_context = ia->srq_context;
    srq->srq.pd = ia->pd;
    srq->srq.handle = (uint32_t)h;
    pthread_mutex_init(&srq->srq.mutex, NULL);
    pthread_cond_init(&srq->srq.cond, NULL);
    ia->attr.max_wr = (uint32_t)max_wr;
    ia->attr.max_sge = (uint32_t)max_sge;
    robj_add(c, ROBJ_SRQ, srq->handle, srq);
    return &srq->srq;
}

RNIC_EXPORT struct ibv_srq *ibv_create_srq(struct ibv_pd *pd, struct ibv_srq_init_attr *attr)
{
    struct ibv_srq_init_attr_ex ex;
    memset(&ex, 0, sizeof(ex));
    ex.srq_context = attr->srq_context;
    ex.attr = attr->attr;
    ex.comp_mask = IBV_SRQ_INIT_ATTR_PD;
    ex.pd = pd;
    struct ibv_srq *s = rnic_create_srq_ex(pd->context, &ex);
    if (s)
        attr->attr = ex.attr;
    return s;
}

RNIC_EXPORT int ibv_modify_srq(struct ibv_srq *ibsrq, struct ibv_srq_attr *attr, int mask)
{
    struct rnic_srq *srq = container(ibsrq, struct rnic_srq, srq);
    struct rargs a;
    struct rreply rep;
    rargs_init(&a);
    ra_uint(&a, "srq", srq->handle);
    ra_int(&a, "attr_mask", mask);
    ra_uint(&a, "max_wr", attr->max_wr);
    ra_uint(&a, "srq_limit", attr->srq_limit);
    if (rnic_call(rctx(ibsrq->context), "modify_srq", &a, NULL, 0, &rep, 0))
        return errno;
    rreply_free(&rep);
    return 0;
}

RNIC_EXPORT int ibv_query_srq(struct ibv_srq *ibsrq, struct ibv_srq_attr *attr)
{
    struct rnic_srq *srq = container(ibsrq, struct rnic_srq, srq);
    struct rreply rep;
    struct rargs a;
    rargs_init(&a);
    ra_uint(&a, "srq", srq->handle);
    if (rnic_call(rctx(ibsrq->context), "query_srq", &a, NULL, 0, &rep, 0))
        return errno;
    attr->max_wr = (uint32_t)mo_u64(rep.r, "max_wr", 0);
    attr->max_sge = (uint32_t)mo_u64(rep.r, "max_sge", 0);
    attr->srq_limit = (uint32_t)mo_u64(rep.r, "srq_limit", 0);
    rreply_free(&rep);
    return 0;
}

RNIC_EXPORT int ibv_destroy_srq(struct ibv_srq *ibsrq)
{
    struct rnic_srq *srq = container(ibsrq, struct rnic_srq, srq);
    struct rnic_ctx *c = rctx(ibsrq->context);
    if (rnic_simple(c, "destroy_srq", "srq", srq->handle) && errno != ECONNRESET)
        return errno;
    robj_del(c, ROBJ_SRQ, srq->handle);
    rring_unmap(&srq->ring);
    free(srq);
    return 0;
}

static int rnic_get_srq_num(struct ibv_srq *ibsrq, uint32_t *num)
{
    *num = container(ibsrq, struct rnic_srq, srq)->srq_num;
    return 0;
}
int (*rnic_get_srq_num_op)(struct ibv_srq *, uint32_t *) = rnic_get_srq_num;

/* ---- address handles ---------------------------------------------------------------------- */
RNIC_EXPORT struct ibv_ah *ibv_create_ah(struct ibv_pd *pd, struct ibv_ah_attr *attr)
{
    struct rargs a;
    struct rreply rep;
    rargs_init(&a);
    ra_uint(&a, "pd", pd->handle);
    rnic_ah_attr_args(&a, "ah_attr", attr);
    if (rnic_call(rctx(pd->context), "create_ah", &a, NULL, 0, &rep, 0))
        return NULL;
    int64_t h;
    int bad = mo_int(rep.r, "ah", &h);
    rreply_free(&rep);
    struct rnic_ah *ah = bad ? NULL : calloc(1, sizeof(*ah));
    if (!ah) {
        if (!bad)
            rnic_simple(rctx(pd->context), "destroy_ah", "ah", (uint32_t)h);
        errno = bad ? EPROTO : ENOMEM;
        return NULL;
    }
    ah->ah.context = pd->context;
    ah->ah.pd = pd;
    ah->ah.handle = (uint32_t)h;
    return &ah->ah;
}

RNIC_EXPORT int ibv_destroy_ah(struct ibv_ah *ah)
{
    if (rnic_simple(rctx(ah->context), "destroy_ah", "ah", ah->handle) && errno != ECONNRESET)
        return errno;
    free(container(ah, struct rnic_ah, ah));
    return 0;
}
