/* cma_conn.c — rnicd's librdmacm: the connection calls on an id (listen, connect, accept,
 * reject, disconnect, establish, options, rdma_init_qp_attr), and the ECE and multicast calls
 * it answers as documented without offering them (rdma_cma.h, docs/c-libraries.md). */
#define _GNU_SOURCE
#include "cma.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* ---- connections ------------------------------------------------------------------------ */
CMA_EXPORT int rdma_listen(struct rdma_cm_id *id, int backlog)
{
    if (!id)
        return cma_err(EINVAL);
    struct cma_id *c = cid(id);
    struct rargs a;
    struct rreply rep;
    rargs_init(&a);
    ra_uint(&a, "id", c->handle);
    ra_uint(&a, "port", ntohs(id->route.addr.src_sin.sin_port));
    ra_int(&a, "backlog", backlog < 0 ? 0 : backlog);
    if (cma_call(c, "cm_listen", &a, &rep))
        return -1;
    if (id->route.addr.src_addr.sa_family != AF_INET)
        cma_set_sin(&id->route.addr.src_addr, 0, 0);
    id->route.addr.src_sin.sin_port = htons((uint16_t)mo_u64(rep.r, "port", 0));
    rreply_free(&rep);
    c->listening = c->bound = 1;
    return 0;
}

/* struct rdma_conn_param as the daemon reads it; NULL: librdmacm's defaults (the device's
 * READ depths, 7 retries). RDMA_MAX_RESP_RES / RDMA_MAX_INIT_DEPTH ask for the device's. */
static int conn_param_args(struct rargs *a, const struct rdma_conn_param *p, size_t max_pdata)
{
    uint8_t maxrd = (uint8_t)(cma_dev.attr.max_qp_rd_atom > 255 ? 255 : cma_dev.attr.max_qp_rd_atom);
    uint8_t maxinit = (uint8_t)(cma_dev.attr.max_qp_init_rd_atom > 255 ? 255
                                : cma_dev.attr.max_qp_init_rd_atom);
    struct rdma_conn_param d = {.responder_resources = maxrd, .initiator_depth = maxinit,
                                .retry_count = 7, .rnr_retry_count = 7};
    if (p) {
        d = *p;
        if (d.responder_resources == RDMA_MAX_RESP_RES)
            d.responder_resources = maxrd;
        if (d.initiator_depth == RDMA_MAX_INIT_DEPTH)
            d.initiator_depth = maxinit;
        if (d.responder_resources > maxrd || d.initiator_depth > maxinit) {
            rnic_log("librdmacm: conn_param asks %u/%u READ resources; the device has %u/%u",
                     d.responder_resources, d.initiator_depth, maxrd, maxinit);
            return cma_err(EINVAL);
        }
        if (d.private_data_len > max_pdata || (d.private_data_len && !d.private_data))
            return cma_err(EINVAL);
    }
    struct rargs m;
    rargs_init(&m);
    ra_uint(&m, "responder_resources", d.responder_resources);
    ra_uint(&m, "initiator_depth", d.initiator_depth);
    ra_uint(&m, "flow_control", d.flow_control ? 1 : 0);
    ra_uint(&m, "retry_count", d.retry_count > 7 ? 7 : d.retry_count);
    ra_uint(&m, "rnr_retry_count", d.rnr_retry_count > 7 ? 7 : d.rnr_retry_count);
    ra_uint(&m, "qp_num", d.qp_num & 0xFFFFFF);
    ra_uint(&m, "srq", d.srq ? 1 : 0);
    ra_map(a, "conn_param", &m);
    ra_bin(a, "private_data", d.private_data_len ? d.private_data : "", d.private_data_len);
    return 0;
}

static int ud_ps(struct rdma_cm_id *id)
{
    return id->ps == RDMA_PS_UDP || id->ps == RDMA_PS_IPOIB;
}

/* connect and accept name the id and its QP (null: an external QP, conn_param.qp_num) */
static void id_qp_args(struct rargs *a, struct rdma_cm_id *id)
{
    ra_uint(a, "id", cid(id)->handle);
    if (id->qp)
        ra_uint(a, "qp", id->qp->handle);
    else
        ra_nil(a, "qp");
}

CMA_EXPORT int rdma_connect(struct rdma_cm_id *id, struct rdma_conn_param *conn_param)
{
    if (!id)
        return cma_err(EINVAL);
    struct cma_id *c = cid(id);
    if (!c->addr_resolved || !c->route_resolved) {
        rnic_log("librdmacm: rdma_connect needs rdma_resolve_addr and rdma_resolve_route first");
        return cma_err(EINVAL);
    }
    char dst[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &id->route.addr.dst_sin.sin_addr, dst, sizeof(dst));
    struct rargs a;
    struct rreply rep;
    rargs_init(&a);
    id_qp_args(&a, id);
    ra_str(&a, "dst_ip", dst);
    ra_uint(&a, "port", ntohs(id->route.addr.dst_sin.sin_port));
    if (conn_param_args(&a, conn_param, ud_ps(id) ? 180 : 56)) {
        rargs_free(&a);
        return -1;
    }
    if (cma_call(c, "cm_connect", &a, &rep))
        return -1;
    id->route.addr.src_sin.sin_port = htons((uint16_t)mo_u64(rep.r, "local_port", 0));
    rreply_free(&rep);
    return cma_complete(c);
}

CMA_EXPORT int rdma_accept(struct rdma_cm_id *id, struct rdma_conn_param *conn_param)
{
    if (!id)
        return cma_err(EINVAL);
    struct cma_id *c = cid(id);
    struct rargs a;
    rargs_init(&a);
    id_qp_args(&a, id);
    if (conn_param_args(&a, conn_param, ud_ps(id) ? 136 : 196)) {
        rargs_free(&a);
        return -1;
    }
    if (cma_call(c, "cm_accept", &a, NULL))
        return -1;
    if (id->qp && !ud_ps(id))
        id->qp->state = IBV_QPS_RTS;    /* rnicd moved it: INIT -> RTR -> RTS, REP sent */
    return ud_ps(id) ? 0 : cma_complete(c);
}

static int reject(struct rdma_cm_id *id, const void *pdata, uint8_t len)
{
    if (!id || (len && !pdata))
        return cma_err(EINVAL);
    struct rargs a;
    rargs_init(&a);
    ra_uint(&a, "id", cid(id)->handle);
    ra_bin(&a, "private_data", len ? pdata : "", len);
    return cma_call(cid(id), "cm_reject", &a, NULL);
}

CMA_EXPORT int rdma_reject(struct rdma_cm_id *id, const void *private_data, uint8_t len)
{
    return reject(id, private_data, len);
}

/* rnicd's CM carries no ECE: a reject with ECE is a reject. */
CMA_EXPORT int rdma_reject_ece(struct rdma_cm_id *id, const void *private_data, uint8_t len)
{
    return reject(id, private_data, len);
}

CMA_EXPORT int rdma_disconnect(struct rdma_cm_id *id)
{
    if (!id)
        return cma_err(EINVAL);
    if (cma_id_verb(id, "cm_disconnect"))
        return -1;
    if (id->qp)
        id->qp->state = IBV_QPS_ERR;    /* as rdma_disconnect: outstanding WRs flush */
    return cma_complete(cid(id));
}

CMA_EXPORT int rdma_establish(struct rdma_cm_id *id)
{
    if (!id)
        return cma_err(EINVAL);
    if (id->qp)
        return cma_err(EINVAL);         /* only for a connection of an external QP */
    return cma_id_verb(id, "cm_establish");
}

/* IBV_EVENT_COMM_EST tells the CM that data arrived before the RTU; rnicd's CM sees the
 * RTU (or its resend) itself, so there is nothing to do. */
CMA_EXPORT int rdma_notify(struct rdma_cm_id *id, enum ibv_event_type event)
{
    if (!id)
        return cma_err(EINVAL);
    return event == IBV_EVENT_COMM_EST ? 0 : cma_err(EINVAL);
}

CMA_EXPORT int rdma_set_option(struct rdma_cm_id *id, int level, int optname, void *optval,
                               size_t optlen)
{
    if (!id || !optval || !optlen)
        return cma_err(EINVAL);
    int64_t v;
    if (optlen == 1)
        v = *(uint8_t *)optval;
    else if (optlen == 2)
        v = *(uint16_t *)optval;
    else if (optlen == 4)
        v = *(int32_t *)optval;
    else if (level == RDMA_OPTION_IB)
        v = 0;                          /* struct ibv_path_data[]: rnicd answers EOPNOTSUPP */
    else
        return cma_err(EINVAL);
    struct rargs a;
    rargs_init(&a);
    ra_uint(&a, "id", cid(id)->handle);
    ra_int(&a, "level", level);
    ra_int(&a, "name", optname);
    ra_int(&a, "value", v);
    return cma_call(cid(id), "cm_set_option", &a, NULL);
}

CMA_EXPORT int rdma_init_qp_attr(struct rdma_cm_id *id, struct ibv_qp_attr *qp_attr,
                                 int *qp_attr_mask)
{
    if (!id || !qp_attr || !qp_attr_mask)
        return cma_err(EINVAL);
    struct rargs a;
    struct rreply rep;
    rargs_init(&a);
    ra_uint(&a, "id", cid(id)->handle);
    ra_int(&a, "qp_state", qp_attr->qp_state);
    if (cma_call(cid(id), "cm_init_qp_attr", &a, &rep))
        return -1;
    enum ibv_qp_state st = qp_attr->qp_state;
    memset(qp_attr, 0, sizeof(*qp_attr));
    qp_attr->qp_state = st;
    cma_qp_attr_from(mo_get(rep.r, "attr"), qp_attr);
    *qp_attr_mask = (int)mo_u64(rep.r, "attr_mask", 0);
    rreply_free(&rep);
    return 0;
}

CMA_EXPORT __be16 rdma_get_src_port(struct rdma_cm_id *id)
{
    return id->route.addr.src_addr.sa_family == AF_INET6 ? id->route.addr.src_sin6.sin6_port
                                                          : id->route.addr.src_sin.sin_port;
}

CMA_EXPORT __be16 rdma_get_dst_port(struct rdma_cm_id *id)
{
    return id->route.addr.dst_addr.sa_family == AF_INET6 ? id->route.addr.dst_sin6.sin6_port
                                                          : id->route.addr.dst_sin.sin_port;
}

/* ---- ECE (rdma_set_local_ece(3)): checked as librdmacm does; the CM carries none ------- */
CMA_EXPORT int rdma_set_local_ece(struct rdma_cm_id *id, struct ibv_ece *ece)
{
    if (!id || id->qp || !ece || !ece->vendor_id)
        return cma_err(EINVAL);
    cid(id)->local_ece = *ece;
    return 0;
}

CMA_EXPORT int rdma_get_remote_ece(struct rdma_cm_id *id, struct ibv_ece *ece)
{
    if (!id || id->qp || !ece)
        return cma_err(EINVAL);
    memset(ece, 0, sizeof(*ece));
    return 0;
}

/* ---- multicast: rnicd has no multicast groups ------------------------------------------- */
CMA_EXPORT int rdma_join_multicast(struct rdma_cm_id *id, struct sockaddr *addr, void *context)
{
    (void)id; (void)addr; (void)context;
    rnic_log("librdmacm: multicast is not offered by rnicd (EOPNOTSUPP)");
    return cma_err(EOPNOTSUPP);
}

CMA_EXPORT int rdma_join_multicast_ex(struct rdma_cm_id *id,
                                      struct rdma_cm_join_mc_attr_ex *attr, void *context)
{
    (void)attr;
    return rdma_join_multicast(id, NULL, context);
}

CMA_EXPORT int rdma_leave_multicast(struct rdma_cm_id *id, struct sockaddr *addr)
{
    (void)id; (void)addr;
    return cma_err(EADDRNOTAVAIL);      /* no group was joined */
}
