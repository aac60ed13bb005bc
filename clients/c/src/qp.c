/* qp.c — queue pairs: create (rings mapped), modify, query, destroy. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "priv.h"

/* The scalar ibv_qp_attr fields and the attr_mask bit that selects each (as the control
 * protocol's modify_qp `attr` map names them: rnicd.core.qp_state.ATTR_FIELD). */
#define F(name, bit) {#name, offsetof(struct ibv_qp_attr, name), \
                      sizeof(((struct ibv_qp_attr *)0)->name), bit}
static const struct { const char *name; size_t off; size_t size; int mask; } QP_FIELDS[] = {
    F(qp_state, IBV_QP_STATE), F(cur_qp_state, IBV_QP_CUR_STATE),
    F(en_sqd_async_notify, IBV_QP_EN_SQD_ASYNC_NOTIFY),
    F(qp_access_flags, IBV_QP_ACCESS_FLAGS), F(pkey_index, IBV_QP_PKEY_INDEX),
    F(port_num, IBV_QP_PORT), F(qkey, IBV_QP_QKEY), F(path_mtu, IBV_QP_PATH_MTU),
    F(timeout, IBV_QP_TIMEOUT), F(retry_cnt, IBV_QP_RETRY_CNT), F(rnr_retry, IBV_QP_RNR_RETRY),
    F(rq_psn, IBV_QP_RQ_PSN), F(max_rd_atomic, IBV_QP_MAX_QP_RD_ATOMIC),
    F(alt_pkey_index, IBV_QP_ALT_PATH), F(alt_port_num, IBV_QP_ALT_PATH),
    F(alt_timeout, IBV_QP_ALT_PATH), F(min_rnr_timer, IBV_QP_MIN_RNR_TIMER),
    F(sq_psn, IBV_QP_SQ_PSN), F(max_dest_rd_atomic, IBV_QP_MAX_DEST_RD_ATOMIC),
    F(path_mig_state, IBV_QP_PATH_MIG_STATE), F(dest_qp_num, IBV_QP_DEST_QPN),
    F(rate_limit, IBV_QP_RATE_LIMIT), F(sq_draining, 0),
};
#undef F

static uint64_t get_n(const void *base, size_t off, size_t size)
{
    const char *p = (const char *)base + off;
    switch (size) {
    case 1: return *(const uint8_t *)p;
    case 2: return *(const uint16_t *)p;
    case 4: return *(const uint32_t *)p;
    default: return *(const uint64_t *)p;
    }
}

static void set_n(void *base, size_t off, size_t size, uint64_t v)
{
    char *p = (char *)base + off;
    switch (size) {
    case 1: *(uint8_t *)p = (uint8_t)v; break;
    case 2: *(uint16_t *)p = (uint16_t)v; break;
    case 4: *(uint32_t *)p = (uint32_t)v; break;
    default: *(uint64_t *)p = v;
    }
}

void rnic_ah_attr_args(struct rargs *a, const char *key, const struct ibv_ah_attr *ah)
{
    struct rargs m, g;
    rargs_init(&m);
    ra_uint(&m, "port_num", ah->port_num);
    ra_uint(&m, "is_global", ah->is_global);
    ra_uint(&m, "sl", ah->sl);
    ra_uint(&m, "src_path_bits", ah->src_path_bits);
    ra_uint(&m, "dlid", ah->dlid);
    ra_uint(&m, "static_rate", ah->static_rate);
    rargs_init(&g);
    ra_bin(&g, "dgid", ah->grh.dgid.raw, 16);
    ra_uint(&g, "flow_label", ah->grh.flow_label);
    ra_uint(&g, "sgid_index", ah->grh.sgid_index);
    ra_uint(&g, "hop_limit", ah->grh.hop_limit);
    ra_uint(&g, "traffic_class", ah->grh.traffic_class);
    ra_map(&m, "grh", &g);
    ra_map(a, key, &m);
}

static void cap_args(struct rargs *a, const struct ibv_qp_cap *cap)
{
    struct rargs m;
    rargs_init(&m);
    ra_uint(&m, "max_send_wr", cap->max_send_wr);
    ra_uint(&m, "max_recv_wr", cap->max_recv_wr);
    ra_uint(&m, "max_send_sge", cap->max_send_sge);
    ra_uint(&m, "max_recv_sge", cap->max_recv_sge);
    ra_uint(&m, "max_inline_data", cap->max_inline_data);
    ra_map(a, "cap", &m);
}

static void cap_from(const msgpack_object *m, struct ibv_qp_cap *cap)
{
    if (!m)
        return;
    cap->max_send_wr = (uint32_t)mo_u64(m, "max_send_wr", cap->max_send_wr);
    cap->max_recv_wr = (uint32_t)mo_u64(m, "max_recv_wr", cap->max_recv_wr);
    cap->max_send_sge = (uint32_t)mo_u64(m, "max_send_sge", cap->max_send_sge);
    cap->max_recv_sge = (uint32_t)mo_u64(m, "max_recv_sge", cap->max_recv_sge);
    cap->max_inline_data = (uint32_t)mo_u64(m, "max_inline_data", cap->max_inline_data);
}

/* ---- create / destroy ------------------------------------------------------------------- */
static uint32_t cq_handle(struct ibv_cq *cq) { return container(cq, struct rnic_cq, cq)->handle; }

struct ibv_qp *rnic_create_qp_ex(struct ibv_context *ctx, struct ibv_qp_init_attr_ex *ia)
{
    struct rnic_ctx *c = rctx(ctx);
    const uint32_t known = IBV_QP_INIT_ATTR_PD | IBV_QP_INIT_ATTR_XRCD |
                           IBV_QP_INIT_ATTR_SEND_OPS_FLAGS;
    /* IBV_QP_INIT_ATTR_CREATE_FLAGS with no flag set asks for nothing (rdma-core's suite
     * sets the bit at random with create_flags 0): accepted, as rxe and mlx5 do. */
    uint32_t mask = ia->comp_mask;
    if ((mask & IBV_QP_INIT_ATTR_CREATE_FLAGS) && ia->create_flags == 0)
        mask &= ~IBV_QP_INIT_ATTR_CREATE_FLAGS;
    if (mask & ~known) {
        errno = EOPNOTSUPP;       /* create_flags, TSO, RSS, send_ops, ... not offered */
        return NULL;
    }
    enum ibv_qp_type t = ia->qp_type;
    int ini = t == IBV_QPT_XRC_SEND, tgt = t == IBV_QPT_XRC_RECV;
    if (t != IBV_QPT_RC && t != IBV_QPT_UC && t != IBV_QPT_UD && !ini && !tgt) {
        errno = t == IBV_QPT_RAW_PACKET || t == IBV_QPT_DRIVER ? EOPNOTSUPP : EINVAL;
        return NULL;
    }
    struct rargs a;
    struct rreply rep;
    rargs_init(&a);
    int nfds;
    if (tgt) {       /* an XRC TGT QP: only its domain, no queue (Annex A14.2.3) */
        if (!(ia->comp_mask & IBV_QP_INIT_ATTR_XRCD) || !ia->xrcd) {
            rargs_free(&a);
            errno = EINVAL;
            return NULL;
        }
        ra_int(&a, "qp_type", t);
        ra_uint(&a, "xrcd", container(ia->xrcd, struct rnic_xrcd, xrcd)->handle);
        nfds = 0;
    } else {
        if (!(ia->comp_mask & IBV_QP_INIT_ATTR_PD) || !ia->pd || !ia->send_cq ||
            (!ini && !ia->recv_cq && !ia->srq) || (ini && ia->srq)) {
            rargs_free(&a);
            errno = EINVAL;     /* an XRC INI QP has no receive side: no SRQ */
            return NULL;
        }
        ra_uint(&a, "pd", ia->pd->handle);
        ra_int(&a, "qp_type", t);
        ra_int(&a, "sq_sig_all", ia->sq_sig_all ? 1 : 0);
        cap_args(&a, &ia->cap);
        ra_uint(&a, "send_cq", cq_handle(ia->send_cq));
        if (ini)
            ra_nil(&a, "recv_cq");
        else
            ra_uint(&a, "recv_cq", cq_handle(ia->recv_cq ? ia->recv_cq : ia->send_cq));
        if (ia->srq && !ini)
            ra_uint(&a, "srq", container(ia->srq, struct rnic_srq, srq)->handle);
        else
            ra_nil(&a, "srq");
        nfds = ia->srq || ini ? 1 : 2;
    }
    if (rnic_call(c, "create_qp", &a, NULL, 0, &rep, nfds))
        return NULL;
    int64_t h, qpn, sq_size, rq_size = 0;
    if (mo_int(rep.r, "qp", &h) || mo_int(rep.r, "qp_num", &qpn) ||
        (nfds >= 1 && mo_int(rep.r, "sq_size", &sq_size)) ||
        (nfds == 2 && mo_int(rep.r, "rq_size", &rq_size))) {
        rreply_free(&rep);
        errno = EPROTO;
        return NULL;
    }
    struct rnic_qp *qp = calloc(1, sizeof(*qp));
    int rc = -ENOMEM;
    if (qp) {
        qp->cap = ia->cap;
        cap_from(mo_get(rep.r, "cap"), &qp->cap);
        rc = 0;
        if (nfds >= 1) {
            rc = rring_map(&qp->sq, rep.fds[0], (uint64_t)sq_size, RNIC_RING_SQ, "create_qp (SQ)");
            rep.fds[0] = -1;
            qp->has_sq = rc == 0;
        }
        if (rc == 0 && nfds == 2) {
            rc = rring_map(&qp->rq, rep.fds[1], (uint64_t)rq_size, RNIC_RING_RQ, "create_qp (RQ)");
            rep.fds[1] = -1;
            qp->has_rq = rc == 0;
        }
    }
    rreply_free(&rep);
    if (rc < 0) {
        if (qp) {
            rring_unmap(&qp->sq);
            rring_unmap(&qp->rq);
            free(qp);
        }
        rnic_simple(c, "destroy_qp", "qp", (uint32_t)h);
        errno = -rc;
        return NULL;
    }
    if (qp->cap.max_send_wr && qp->cap.max_send_wr < qp->sq.n)
        qp->sq.limit = qp->cap.max_send_wr;
    if (qp->has_rq && qp->cap.max_recv_wr && qp->cap.max_recv_wr < qp->rq.n)
        qp->rq.limit = qp->cap.max_recv_wr;
    pthread_spin_init(&qp->sq_lock, PTHREAD_PROCESS_PRIVATE);
    pthread_spin_init(&qp->rq_lock, PTHREAD_PROCESS_PRIVATE);
    qp->handle = (uint32_t)h;
    qp->sq_sig_all = ia->sq_sig_all;
    struct ibv_qp *q = &qp->qp;
    q->context = ctx;
    q->qp_context = ia->qp_context;
    q->pd = tgt ? NULL : ia->pd;
    q->send_cq = tgt ? NULL : ia->send_cq;
    q->recv_cq = tgt || ini ? NULL : ia->recv_cq ? ia->recv_cq : ia->send_cq;
    q->srq = tgt || ini ? NULL : ia->srq;
    q->handle = (uint32_t)h;
    q->qp_num = (uint32_t)qpn;
    q->state = IBV_QPS_RESET;
    q->qp_type = ia->qp_type;
    pthread_mutex_init(&q->mutex, NULL);
    pthread_cond_init(&q->cond, NULL);
    if (ia->comp_mask & IBV_QP_INIT_ATTR_SEND_OPS_FLAGS) {
        int e = rnic_qp_ex_init(qp, ia->send_ops_flags);
        if (e) {
            ibv_destroy_qp(q);
            errno = e;
            return NULL;
        }
    }
    ia->cap = qp->cap;          /* the actual capabilities, as libibverbs returns them */
    robj_add(c, ROBJ_QP, qp->handle, qp);
    return q;
}

RNIC_EXPORT struct ibv_qp *ibv_create_qp(struct ibv_pd *pd, struct ibv_qp_init_attr *attr)
{
    struct ibv_qp_init_attr_ex ex;
    memset(&ex, 0, sizeof(ex));
    memcpy(&ex, attr, sizeof(*attr));
    ex.comp_mask = IBV_QP_INIT_ATTR_PD;
    ex.pd = pd;
    struct ibv_qp *qp = rnic_create_qp_ex(pd->context, &ex);
    if (qp)
        attr->cap = ex.cap;
    return qp;
}

RNIC_EXPORT int ibv_destroy_qp(struct ibv_qp *ibqp)
{
    struct rnic_qp *qp = container(ibqp, struct rnic_qp, qp);
    struct rnic_ctx *c = rctx(ibqp->context);
    if (rnic_simple(c, "destroy_qp", "qp", qp->handle) && errno != ECONNRESET)
        return errno;
    robj_del(c, ROBJ_QP, qp->handle);
    rring_unmap(&qp->sq);
    rring_unmap(&qp->rq);
    rnic_qp_ex_free(qp);
    free(qp);
    return 0;
}

/* ---- modify / query ----------------------------------------------------------------------- */
RNIC_EXPORT int ibv_modify_qp(struct ibv_qp *ibqp, struct ibv_qp_attr *attr, int mask)
{
    struct rnic_qp *qp = container(ibqp, struct rnic_qp, qp);
    struct rargs a, m;
    struct rreply rep;
    rargs_init(&a);
    ra_uint(&a, "qp", qp->handle);
    ra_int(&a, "attr_mask", mask);
    rargs_init(&m);
    for (size_t i = 0; i < sizeof(QP_FIELDS) / sizeof(QP_FIELDS[0]); i++)
        if (mask & QP_FIELDS[i].mask)
            ra_uint(&m, QP_FIELDS[i].name, get_n(attr, QP_FIELDS[i].off, QP_FIELDS[i].size));
    if (mask & IBV_QP_AV)
        rnic_ah_attr_args(&m, "ah_attr", &attr->ah_attr);
    if (mask & IBV_QP_ALT_PATH)
        rnic_ah_attr_args(&m, "alt_ah_attr", &attr->alt_ah_attr);
    if (mask & IBV_QP_CAP)
        cap_args(&m, &attr->cap);
    ra_map(&a, "attr", &m);
    if (rnic_call(rctx(ibqp->context), "modify_qp", &a, NULL, 0, &rep, 0))
        return errno;
    int64_t st;
    if (mask & IBV_QP_STATE) {
        ibqp->state = attr->qp_state;
        if (attr->qp_state == IBV_QPS_RESET) {   /* the old incarnation's completions go */
            if (ibqp->send_cq)
                rnic_cq_clean(container(ibqp->send_cq, struct rnic_cq, cq), ibqp->qp_num);
            if (ibqp->recv_cq && ibqp->recv_cq != ibqp->send_cq)
                rnic_cq_clean(container(ibqp->recv_cq, struct rnic_cq, cq), ibqp->qp_num);
        }
    }
    if (mo_int(rep.r, "qp_state", &st) == 0)
        ibqp->state = (enum ibv_qp_state)st;
    rreply_free(&rep);
    return 0;
}

RNIC_EXPORT int ibv_query_qp(struct ibv_qp *ibqp, struct ibv_qp_attr *attr, int mask,
                             struct ibv_qp_init_attr *init)
{
    struct rnic_qp *qp = container(ibqp, struct rnic_qp, qp);
    struct rargs a;
    struct rreply rep;
    rargs_init(&a);
    ra_uint(&a, "qp", qp->handle);
    ra_int(&a, "attr_mask", mask);
    if (rnic_call(rctx(ibqp->context), "query_qp", &a, NULL, 0, &rep, 0))
        return errno;
    const msgpack_object *r = mo_get(rep.r, "attr");
    memset(attr, 0, sizeof(*attr));
    for (size_t i = 0; i < sizeof(QP_FIELDS) / sizeof(QP_FIELDS[0]); i++) {
        int64_t v;
        if (mo_int(r, QP_FIELDS[i].name, &v) == 0)
            set_n(attr, QP_FIELDS[i].off, QP_FIELDS[i].size, (uint64_t)v);
    }
    mo_ah_attr(mo_get(r, "ah_attr"), &attr->ah_attr);
    mo_ah_attr(mo_get(r, "alt_ah_attr"), &attr->alt_ah_attr);
    attr->cap = qp->cap;
    cap_from(mo_get(r, "cap"), &attr->cap);
    if (mo_get(r, "qp_state"))
        ibqp->state = attr->qp_state;
    if (init) {
        memset(init, 0, sizeof(*init));
        const msgpack_object *ir = mo_get(rep.r, "init_attr");
        init->qp_context = ibqp->qp_context;
        init->send_cq = ibqp->send_cq;
        init->recv_cq = ibqp->recv_cq;
        init->srq = ibqp->srq;
        init->qp_type = ibqp->qp_type;
        init->cap = qp->cap;
        cap_from(mo_get(ir, "cap"), &init->cap);
        init->sq_sig_all = (int)mo_u64(ir, "sq_sig_all", (uint64_t)qp->sq_sig_all);
    }
    rreply_free(&rep);
    return 0;
}
