/* cma_qp.c — QPs, SRQs and endpoints on rdma_cm ids (rdma_create_qp(3), rdma_create_ep(3),
 * rdma_get_request(3)), over libibverbs' public calls on the id's context. */
#define _GNU_SOURCE
#include "cma.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>

/* ---- attributes from rnicd (cm_init_qp_attr's map, modify_qp's field names) ------------ */
void cma_qp_attr_from(const msgpack_object *m, struct ibv_qp_attr *a)
{
    if (!m || m->type != MSGPACK_OBJECT_MAP)
        return;
    int64_t v;
#define I(f) do { if (mo_int(m, #f, &v) == 0) a->f = (__typeof__(a->f))v; } while (0)
    I(qp_state); I(path_mtu); I(qkey); I(rq_psn); I(sq_psn); I(dest_qp_num);
    I(qp_access_flags); I(pkey_index); I(max_rd_atomic); I(max_dest_rd_atomic);
    I(min_rnr_timer); I(port_num); I(timeout); I(retry_cnt); I(rnr_retry);
#undef I
    if (mo_get(m, "ah_attr"))
        mo_ah_attr(mo_get(m, "ah_attr"), &a->ah_attr);
}

/* The device's XRC domain, opened on first use (an XRC TGT QP and the XRC SRQs its INI
 * peers name must share one, whichever ids made them), as librdmacm's. */
static struct ibv_xrcd *cma_xrcd(void)
{
    if (!cma_dev.xrcd) {
        struct ibv_xrcd_init_attr a = {.comp_mask = IBV_XRCD_INIT_ATTR_FD |
                                                    IBV_XRCD_INIT_ATTR_OFLAGS,
                                       .fd = -1, .oflags = O_CREAT};
        cma_dev.xrcd = ibv_open_xrcd(cma_dev.verbs, &a);
    }
    return cma_dev.xrcd;
}

/* ---- CQs the id creates when the attributes name none (ucma_create_cqs) -------------- */
static void destroy_cqs(struct rdma_cm_id *id)
{
    if (id->send_cq && id->send_cq != id->recv_cq)
        ibv_destroy_cq(id->send_cq);
    if (id->recv_cq)
        ibv_destroy_cq(id->recv_cq);
    if (id->send_cq_channel && id->send_cq_channel != id->recv_cq_channel)
        ibv_destroy_comp_channel(id->send_cq_channel);
    if (id->recv_cq_channel)
        ibv_destroy_comp_channel(id->recv_cq_channel);
    id->send_cq = id->recv_cq = NULL;
    id->send_cq_channel = id->recv_cq_channel = NULL;
}

static int create_cqs(struct rdma_cm_id *id, uint32_t send_size, uint32_t recv_size)
{
    if (recv_size) {
        id->recv_cq_channel = ibv_create_comp_channel(id->verbs);
        if (!id->recv_cq_channel)
            goto err;
        id->recv_cq = ibv_create_cq(id->verbs, (int)recv_size, id, id->recv_cq_channel, 0);
        if (!id->recv_cq)
            goto err;
    }
    if (send_size) {
        id->send_cq_channel = ibv_create_comp_channel(id->verbs);
        if (!id->send_cq_channel)
            goto err;
        id->send_cq = ibv_create_cq(id->verbs, (int)send_size, id, id->send_cq_channel, 0);
        if (!id->send_cq)
            goto err;
    }
    return 0;
err:;
    int e = errno;
    destroy_cqs(id);
    return cma_err(e);
}

/* A new QP's first transitions, as librdmacm: a connected QP goes to INIT (receives can be
 * posted before the connection is made; rnicd moves it on during connect/accept), a UD QP
 * of a UDP id to RTS with the id's Q_Key (what rdma_init_qp_attr gives it). */
static int init_qp(struct rdma_cm_id *id, struct ibv_qp *qp)
{
    struct ibv_qp_attr a;
    int mask;
    if (qp->qp_type == IBV_QPT_UD) {
        for (enum ibv_qp_state s = IBV_QPS_INIT; s <= IBV_QPS_RTS; s++) {
            memset(&a, 0, sizeof(a));
            a.qp_state = s;
            if (rdma_init_qp_attr(id, &a, &mask) || ibv_modify_qp(qp, &a, mask))
                return -1;
        }
        return 0;
    }
    memset(&a, 0, sizeof(a));
    a.qp_state = IBV_QPS_INIT;
    a.pkey_index = 0;
    a.port_num = 1;
    a.qp_access_flags = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE |
                        IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_ATOMIC;
    return ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT |
                                     IBV_QP_ACCESS_FLAGS);
}

CMA_EXPORT int rdma_create_qp_ex(struct rdma_cm_id *id, struct ibv_qp_init_attr_ex *attr)
{
    if (!id || !attr)
        return cma_err(EINVAL);
    if (id->qp)
        return cma_err(EINVAL);
    if (!(attr->comp_mask & IBV_QP_INIT_ATTR_PD) || !attr->pd) {
        attr->comp_mask |= IBV_QP_INIT_ATTR_PD;
        attr->pd = id->pd;
    }
    if (!id->verbs || !attr->pd || attr->pd->context != id->verbs) {
        rnic_log("librdmacm: rdma_create_qp: the id has no device yet (bind to the device's "
                 "address or resolve one), or the PD is another context's");
        return cma_err(EINVAL);
    }
    int own = 0, tgt = id->qp_type == IBV_QPT_XRC_RECV || attr->qp_type == IBV_QPT_XRC_RECV;
    if (tgt) {              /* an XRC TGT QP: the device's XRC domain; no CQ, no queue */
        attr->qp_type = IBV_QPT_XRC_RECV;
        if (!(attr->comp_mask & IBV_QP_INIT_ATTR_XRCD) || !attr->xrcd) {
            if (!(attr->xrcd = cma_xrcd()))
                return -1;
            attr->comp_mask |= IBV_QP_INIT_ATTR_XRCD;
        }
    } else if (!attr->send_cq || (!attr->recv_cq && !attr->srq
                                  && attr->qp_type != IBV_QPT_XRC_SEND)) {
        if (create_cqs(id, attr->send_cq ? 0 : attr->cap.max_send_wr + 1,
                       attr->recv_cq || attr->srq || attr->qp_type == IBV_QPT_XRC_SEND
                       ? 0 : attr->cap.max_recv_wr + 1))
            return -1;
        own = 1;
        if (!attr->send_cq)
            attr->send_cq = id->send_cq;
        if (!attr->recv_cq && !attr->srq && attr->qp_type != IBV_QPT_XRC_SEND)
            attr->recv_cq = id->recv_cq;
    }
    if (!attr->srq && id->srq && !tgt)
        attr->srq = id->srq;
    struct ibv_qp *qp = ibv_create_qp_ex(id->verbs, attr);
    if (!qp)
        goto err;
    if (init_qp(id, qp)) {
        int e = errno;
        ibv_destroy_qp(qp);
        errno = e;
        goto err;
    }
    id->qp = qp;
    return 0;
err:;
    int e = errno;
    if (own)
        destroy_cqs(id);
    return cma_err(e);
}

CMA_EXPORT int rdma_create_qp(struct rdma_cm_id *id, struct ibv_pd *pd,
                              struct ibv_qp_init_attr *qp_init_attr)
{
    if (!id || !qp_init_attr)
        return cma_err(EINVAL);
    struct ibv_qp_init_attr_ex ex;
    memset(&ex, 0, sizeof(ex));
    memcpy(&ex, qp_init_attr, sizeof(*qp_init_attr));
    ex.comp_mask = IBV_QP_INIT_ATTR_PD;
    ex.pd = pd ? pd : id->pd;
    if (rdma_create_qp_ex(id, &ex))
        return -1;
    qp_init_attr->send_cq = ex.send_cq;     /* as librdmacm: the attributes say what was made */
    qp_init_attr->recv_cq = ex.recv_cq;
    qp_init_attr->srq = ex.srq;
    qp_init_attr->cap = ex.cap;
    return 0;
}

CMA_EXPORT void rdma_destroy_qp(struct rdma_cm_id *id)
{
    if (!id)
        return;
    if (id->qp)
        ibv_destroy_qp(id->qp);
    id->qp = NULL;
    if (!(id->qp_type == IBV_QPT_XRC_RECV && id->srq))
        destroy_cqs(id);            /* an XRC SRQ's CQ goes with the SRQ */
}

/* ---- SRQs ------------------------------------------------------------------------------ */
CMA_EXPORT int rdma_create_srq_ex(struct rdma_cm_id *id, struct ibv_srq_init_attr_ex *attr)
{
    if (!id || !attr || id->srq)
        return cma_err(EINVAL);
    if (!(attr->comp_mask & IBV_SRQ_INIT_ATTR_TYPE)) {
        attr->comp_mask |= IBV_SRQ_INIT_ATTR_TYPE;
        attr->srq_type = IBV_SRQT_BASIC;
    }
    if (!(attr->comp_mask & IBV_SRQ_INIT_ATTR_PD) || !attr->pd) {
        attr->comp_mask |= IBV_SRQ_INIT_ATTR_PD;
        attr->pd = id->pd;
    }
    if (!id->verbs || !attr->pd)
        return cma_err(EINVAL);
    int own = 0;
    if (attr->srq_type == IBV_SRQT_XRC) {
        /* as librdmacm: the device's XRC domain, and a receive CQ of the id's own */
        if (!(attr->comp_mask & IBV_SRQ_INIT_ATTR_XRCD) || !attr->xrcd) {
            if (!(attr->xrcd = cma_xrcd()))
                return -1;
        }
        if (!(attr->comp_mask & IBV_SRQ_INIT_ATTR_CQ) || !attr->cq) {
            if (!id->recv_cq) {
                if (create_cqs(id, 0, attr->attr.max_wr))
                    return -1;
                own = 1;
            }
            attr->cq = id->recv_cq;
        }
        attr->comp_mask |= IBV_SRQ_INIT_ATTR_XRCD | IBV_SRQ_INIT_ATTR_CQ;
    } else if (attr->srq_type != IBV_SRQT_BASIC) {
        rnic_log("librdmacm: rdma_create_srq: basic and XRC SRQs only (EOPNOTSUPP)");
        return cma_err(EOPNOTSUPP);
    }
    struct ibv_srq *srq = ibv_create_srq_ex(id->verbs, attr);
    if (!srq) {
        int e = errno;
        if (own)
            destroy_cqs(id);
        return cma_err(e);
    }
    id->srq = srq;
    return 0;
}

CMA_EXPORT int rdma_create_srq(struct rdma_cm_id *id, struct ibv_pd *pd,
                               struct ibv_srq_init_attr *attr)
{
    if (!attr)
        return cma_err(EINVAL);
    struct ibv_srq_init_attr_ex ex = {.srq_context = attr->srq_context, .attr = attr->attr,
                                      .comp_mask = IBV_SRQ_INIT_ATTR_TYPE | IBV_SRQ_INIT_ATTR_PD,
                                      .srq_type = id && id->qp_type == IBV_QPT_XRC_RECV
                                                  ? IBV_SRQT_XRC : IBV_SRQT_BASIC,
                                      .pd = pd ? pd : id ? id->pd : NULL};
    if (rdma_create_srq_ex(id, &ex))
        return -1;
    attr->attr = ex.attr;
    return 0;
}

CMA_EXPORT void rdma_destroy_srq(struct rdma_cm_id *id)
{
    if (!id || !id->srq)
        return;
    ibv_destroy_srq(id->srq);
    id->srq = NULL;
    if (id->qp_type == IBV_QPT_XRC_RECV)
        destroy_cqs(id);
}

/* ---- endpoints (synchronous ids) ------------------------------------------------------ */
CMA_EXPORT int rdma_create_ep(struct rdma_cm_id **id, struct rdma_addrinfo *res,
                              struct ibv_pd *pd, struct ibv_qp_init_attr *qp_init_attr)
{
    if (!id || !res)
        return cma_err(EINVAL);
    struct rdma_cm_id *cm;
    if (rdma_create_id(NULL, &cm, NULL, (enum rdma_port_space)res->ai_port_space))
        return -1;
    struct cma_id *c = cid(cm);
    cm->qp_type = (enum ibv_qp_type)res->ai_qp_type;
    if (res->ai_flags & RAI_PASSIVE) {
        if (res->ai_src_addr && rdma_bind_addr(cm, res->ai_src_addr))
            goto err;
        if (pd)
            cm->pd = pd;
        if (qp_init_attr) {
            if (!(c->qp_init_attr = malloc(sizeof(*qp_init_attr)))) {
                errno = ENOMEM;
                goto err;
            }
            *c->qp_init_attr = *qp_init_attr;
            c->qp_init_attr->qp_type = (enum ibv_qp_type)res->ai_qp_type;
        }
    } else {
        if (rdma_resolve_addr(cm, res->ai_src_addr, res->ai_dst_addr, 2000) ||
            rdma_resolve_route(cm, 2000))
            goto err;
        if (pd)
            cm->pd = pd;
        if (qp_init_attr) {         /* as librdmacm: the QP type is the addrinfo's */
            qp_init_attr->qp_type = (enum ibv_qp_type)res->ai_qp_type;
            if (rdma_create_qp(cm, pd, qp_init_attr))
                goto err;
        }
    }
    *id = cm;
    return 0;
err:;
    int e = errno;
    rdma_destroy_id(cm);
    return cma_err(e);
}

CMA_EXPORT void rdma_destroy_ep(struct rdma_cm_id *id)
{
    if (!id)
        return;
    rdma_destroy_qp(id);
    rdma_destroy_srq(id);
    rdma_destroy_id(id);
}

CMA_EXPORT int rdma_get_request(struct rdma_cm_id *listen, struct rdma_cm_id **id)
{
    if (!listen || !id)
        return cma_err(EINVAL);
    struct cma_id *l = cid(listen);
    if (!l->sync)
        return cma_err(EINVAL);
    if (listen->event) {
        rdma_ack_cm_event(listen->event);
        listen->event = NULL;
    }
    struct rdma_cm_event *ev;
    if (rdma_get_cm_event(listen->channel, &ev))
        return -1;
    int e = 0;
    if (ev->event == RDMA_CM_EVENT_REJECTED)
        e = ECONNREFUSED;
    else if (ev->status)
        e = ev->status < 0 ? -ev->status : ev->status;
    else if (ev->event != RDMA_CM_EVENT_CONNECT_REQUEST)
        e = EINVAL;
    if (!e && l->qp_init_attr) {
        struct ibv_qp_init_attr a = *l->qp_init_attr;
        if (rdma_create_qp(ev->id, listen->pd, &a))
            e = errno;
    }
    if (e) {
        rdma_ack_cm_event(ev);
        return cma_err(e);
    }
    *id = ev->id;
    (*id)->event = ev;
    return 0;
}
