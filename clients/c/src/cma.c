/* cma.c — rnicd's librdmacm: event channels, ids and CM events (rdma_cma.h; the design in
 * cma.h and docs/c-libraries.md). The connection calls are in cma_conn.c. */
#define _GNU_SOURCE
#include "cma.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

struct cma_dev cma_dev;
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static int g_inited;
static struct cma_id *g_ids;             /* every live id of the process, by daemon handle */

int cma_err(int e)
{
    errno = e;
    return -1;
}

/* ---- the device (librdmacm's ucma_init: every device opened once per process) --------- */
int cma_init(void)
{
    pthread_mutex_lock(&g_lock);
    if (g_inited) {
        pthread_mutex_unlock(&g_lock);
        return 0;
    }
    int n = 0, e = ENODEV;
    /* the list is kept: the context's ibv_device lives in it */
    struct ibv_device **list = ibv_get_device_list(&n);
    struct ibv_context *ctx = list && n > 0 ? ibv_open_device(list[0]) : NULL;
    if (!ctx) {
        e = list && n > 0 ? errno : ENODEV;
        rnic_log("librdmacm: no rnicd device (is rnicd running at $RNIC_SOCKET?)");
        goto fail;
    }
    struct cma_dev d = {.verbs = ctx};
    struct ibv_gid_entry ge;
    if (ibv_query_device(ctx, &d.attr) || ibv_query_port(ctx, 1, &d.port) ||
        ibv_query_gid(ctx, 1, 0, &d.gid) || !(d.pd = ibv_alloc_pd(ctx))) {
        e = errno ? errno : EIO;
        ibv_close_device(ctx);
        goto fail;
    }
    memcpy(&d.ip, d.gid.raw + 12, 4);
    if (ibv_query_gid_ex(ctx, 1, 0, &ge, 0) == 0)
        d.ifindex = (int)ge.ndev_ifindex;
    cma_dev = d;
    g_inited = 1;
    pthread_mutex_unlock(&g_lock);
    return 0;
fail:
    if (list)
        ibv_free_device_list(list);
    pthread_mutex_unlock(&g_lock);
    return cma_err(e);
}

CMA_EXPORT struct ibv_context **rdma_get_devices(int *num_devices)
{
    if (num_devices)
        *num_devices = 0;
    if (cma_init())
        return NULL;
    struct ibv_context **l = calloc(2, sizeof(*l));
    if (!l) {
        errno = ENOMEM;
        return NULL;
    }
    l[0] = cma_dev.verbs;
    if (num_devices)
        *num_devices = 1;
    return l;
}

CMA_EXPORT void rdma_free_devices(struct ibv_context **list) { free(list); }

/* ---- the id table ---------------------------------------------------------------------- */
static void id_add(struct cma_id *id)
{
    pthread_mutex_lock(&g_lock);
    id->next = g_ids;
    g_ids = id;
    pthread_mutex_unlock(&g_lock);
}

static void id_del(struct cma_id *id)
{
    pthread_mutex_lock(&g_lock);
    for (struct cma_id **p = &g_ids; *p; p = &(*p)->next)
        if (*p == id) {
            *p = id->next;
            break;
        }
    pthread_mutex_unlock(&g_lock);
}

/* The live id of a handle, counting an event handed out for it (NULL: none). */
static struct cma_id *id_deliver(int64_t handle)
{
    pthread_mutex_lock(&g_lock);
    struct cma_id *id = g_ids;
    while (id && (int64_t)id->handle != handle)
        id = id->next;
    if (id)
        id->delivered++;
    pthread_mutex_unlock(&g_lock);
    return id;
}

static void id_acked(struct cma_id *id)
{
    pthread_mutex_lock(&g_lock);
    id->acked++;
    pthread_cond_broadcast(&id->acked_cond);
    pthread_mutex_unlock(&g_lock);
}

static struct cma_id *id_alloc(void)
{
    struct cma_id *id = calloc(1, sizeof(*id));
    if (id)
        pthread_cond_init(&id->acked_cond, NULL);
    return id;
}

/* ---- event channels --------------------------------------------------------------------- */
CMA_EXPORT struct rdma_event_channel *rdma_create_event_channel(void)
{
    if (cma_init())
        return NULL;
    struct cma_chan *c = calloc(1, sizeof(*c));
    if (!c) {
        errno = ENOMEM;
        return NULL;
    }
    pthread_mutex_init(&c->lock, NULL);
    char path[108];
    int rc = rconn_open(&c->conn, rconn_socket_path(path, sizeof(path)));
    if (rc < 0) {
        free(c);
        errno = -rc;
        return NULL;
    }
    /* join the device's context: its handles (QP, PD, CQ) are valid here too */
    struct rargs a;
    struct rreply rep;
    rargs_init(&a);
    ra_int(&a, "version", 1);
    int fds[2] = {cma_dev.verbs->cmd_fd, c->conn.fd};
    rc = rconn_call(&c->conn, "import_context", &a, fds, 2, &rep);
    rargs_free(&a);
    if (rc == 0)
        rreply_free(&rep);
    int ep = rc < 0 ? -1 : epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ee = {.events = EPOLLIN};
    if (rc == 0 && (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, c->conn.fd, &ee) < 0 ||
                    epoll_ctl(ep, EPOLL_CTL_ADD, c->conn.wake[0], &ee) < 0))
        rc = -errno;
    if (rc < 0) {
        if (ep >= 0)
            close(ep);
        rconn_close(&c->conn);
        free(c);
        errno = -rc;
        return NULL;
    }
    c->ch.fd = ep;
    return &c->ch;
}

CMA_EXPORT void rdma_destroy_event_channel(struct rdma_event_channel *channel)
{
    if (!channel)
        return;
    struct cma_chan *c = cchan(channel);
    pthread_mutex_lock(&c->lock);
    c->closed = 1;
    int users = c->users;
    pthread_mutex_unlock(&c->lock);
    if (users) {
        /* a thread waits in rdma_get_cm_event: it stays blocked (as a read of a closed
         * rdma_cm fd does) and the struct stays; rnicd sees the connection end */
        shutdown(c->conn.fd, SHUT_RDWR);
        return;
    }
    close(channel->fd);
    rconn_close(&c->conn);        /* rnicd destroys the ids still routed to it */
    pthread_mutex_destroy(&c->lock);
    free(c);
}

/* ---- events ----------------------------------------------------------------------------- */
int cma_push_local(struct cma_id *id, enum rdma_cm_event_type type, int status)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 3);
    msgpack_pack_str_with_body(&pk, "cm_event", 8);
    msgpack_pack_int(&pk, (int)type);
    msgpack_pack_str_with_body(&pk, "id", 2);
    msgpack_pack_uint32(&pk, id->handle);
    msgpack_pack_str_with_body(&pk, "status", 6);
    msgpack_pack_int(&pk, status);
    int rc = rconn_push_event(&cchan(id->id.channel)->conn, 1, sb.data, sb.size);
    msgpack_sbuffer_destroy(&sb);
    return rc < 0 ? cma_err(-rc) : 0;
}

static void addr_from(const msgpack_object *m, const char *ipk, const char *portk,
                      struct sockaddr *sa)
{
    uint32_t l = 0;
    const char *s = mo_bin(m, ipk, &l);
    char buf[INET_ADDRSTRLEN] = "";
    struct in_addr in = {0};
    if (s && l < sizeof(buf)) {
        memcpy(buf, s, l);
        buf[l] = 0;
        if (inet_pton(AF_INET, buf, &in) != 1)
            in.s_addr = 0;
    }
    cma_set_sin(sa, in.s_addr, htons((uint16_t)mo_u64(m, portk, 0)));
}

/* A connection request's new id (librdmacm's ucma_process_conn_req). */
static struct cma_id *req_id(struct cma_id *lst, uint32_t handle, const msgpack_object *m)
{
    struct cma_id *id = id_alloc();
    if (!id)
        return NULL;
    id->handle = handle;
    id->id.verbs = cma_dev.verbs;
    id->id.pd = cma_dev.pd;
    id->id.channel = lst->id.channel;
    id->id.context = lst->id.context;
    id->id.ps = lst->id.ps;
    id->id.qp_type = lst->id.qp_type;
    id->id.port_num = 1;
    id->bound = id->addr_resolved = id->route_resolved = 1;
    addr_from(m, "local_ip", "local_port", &id->id.route.addr.src_addr);
    addr_from(m, "remote_ip", "remote_port", &id->id.route.addr.dst_addr);
    cma_fill_route(id);
    id_add(id);
    return id;
}

static int rdma_migrate_sync(struct cma_id *id);

/* The daemon's (or our own) event, as struct rdma_cm_event; NULL: not for a live id. */
static struct cma_event *translate(const struct rev *r)
{
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    size_t off = 0;
    struct cma_event *ev = NULL;
    if (msgpack_unpack_next(&up, r->data, r->len, &off) != MSGPACK_UNPACK_SUCCESS)
        goto out;
    const msgpack_object *m = &up.data;
    int64_t type = -1, h = -1, lh = -1, status = 0;
    mo_int(m, "cm_event", &type);
    mo_int(m, "id", &h);
    mo_int(m, "status", &status);
    if (type < 0 || type > RDMA_CM_EVENT_TIMEWAIT_EXIT)
        goto out;                           /* rnicd's own (offload) events: not librdmacm's */
    struct cma_id *id, *lst = NULL, *owner;
    if (type == RDMA_CM_EVENT_CONNECT_REQUEST) {   /* the listener acknowledges it */
        mo_int(m, "listen_id", &lh);
        if (!(owner = lst = id_deliver(lh)))
            goto out;
        if (!(id = req_id(lst, (uint32_t)h, m))) {
            id_acked(owner);
            goto out;
        }
        if (lst->sync && rdma_migrate_sync(id)) {   /* a sync listener's ids are sync */
            rdma_destroy_id(&id->id);
            id_acked(owner);
            goto out;
        }
    } else if (!(owner = id = id_deliver(h))) {
        goto out;
    }
    if (!(ev = calloc(1, sizeof(*ev)))) {
        id_acked(owner);
        goto out;
    }
    ev->owner = owner;
    ev->ev.id = &id->id;
    ev->ev.listen_id = lst ? &lst->id : NULL;
    ev->ev.event = (enum rdma_cm_event_type)type;
    ev->ev.status = (int)status;
    uint32_t pl = 0;
    const char *pd = mo_bin(m, "private_data", &pl);
    if (pd && pl) {
        pl = pl > sizeof(ev->pdata) - 1 ? sizeof(ev->pdata) - 1 : pl;
        memcpy(ev->pdata, pd, pl);
        ev->ev.param.conn.private_data = ev->pdata;
        ev->ev.param.conn.private_data_len = (uint8_t)pl;
    }
    const msgpack_object *ud = mo_get(m, "ud_param");
    if (ud && ud->type == MSGPACK_OBJECT_MAP) {
        struct rdma_ud_param *u = &ev->ev.param.ud;
        mo_ah_attr(mo_get(ud, "ah_attr"), &u->ah_attr);
        u->qp_num = (uint32_t)mo_u64(ud, "qp_num", 0);
        u->qkey = (uint32_t)mo_u64(ud, "qkey", 0);
    } else {
        struct rdma_conn_param *c = &ev->ev.param.conn;
        c->responder_resources = (uint8_t)mo_u64(m, "responder_resources", 0);
        c->initiator_depth = (uint8_t)mo_u64(m, "initiator_depth", 0);
        c->retry_count = (uint8_t)mo_u64(m, "retry_count", 0);
        c->rnr_retry_count = (uint8_t)mo_u64(m, "rnr_retry_count", 0);
        c->qp_num = (uint32_t)mo_u64(m, "remote_qpn", 0);
    }
    /* what rnicd did to the id's QP (it owns a connection's transitions) */
    struct ibv_qp *qp = id->id.qp;
    if (qp && qp->qp_type != IBV_QPT_UD) {
        if (type == RDMA_CM_EVENT_ESTABLISHED)
            qp->state = IBV_QPS_RTS;
        else if (type == RDMA_CM_EVENT_DISCONNECTED || type == RDMA_CM_EVENT_REJECTED ||
                 type == RDMA_CM_EVENT_CONNECT_ERROR || type == RDMA_CM_EVENT_UNREACHABLE)
            qp->state = IBV_QPS_ERR;
    }
    if (type == RDMA_CM_EVENT_ESTABLISHED && mo_get(m, "remote_ip")) {
        uint16_t lport = ntohs(id->id.route.addr.src_sin.sin_port);
        addr_from(m, "local_ip", "local_port", &id->id.route.addr.src_addr);
        if (!mo_get(m, "local_port") || !mo_u64(m, "local_port", 0))
            id->id.route.addr.src_sin.sin_port = htons(lport);
        addr_from(m, "remote_ip", "remote_port", &id->id.route.addr.dst_addr);
    }
out:
    msgpack_unpacked_destroy(&up);
    return ev;
}

CMA_EXPORT int rdma_get_cm_event(struct rdma_event_channel *channel, struct rdma_cm_event **event)
{
    if (!channel || !event)
        return cma_err(EINVAL);
    struct cma_chan *c = cchan(channel);
    pthread_mutex_lock(&c->lock);
    c->users++;
    pthread_mutex_unlock(&c->lock);
    int rc = -1, e = 0;
    for (;;) {
        struct rev *r = rconn_next_event(&c->conn, 1);
        if (c->closed) {                /* destroyed by another thread meanwhile */
            free(r);
            for (;;)
                poll(NULL, 0, -1);      /* blocked for good (a cancellation point) */
        }
        if (r) {
            struct cma_event *ev = translate(r);
            free(r);
            if (!ev)
                continue;               /* an id destroyed meanwhile, or not ours */
            *event = &ev->ev;
            rc = 0;
            break;
        }
        e = errno;
        if (e != EAGAIN)
            break;                      /* rnicd went away: ECONNRESET */
        if (fcntl(channel->fd, F_GETFL) & O_NONBLOCK)
            break;
        struct pollfd p = {channel->fd, POLLIN, 0};
        if (poll(&p, 1, -1) < 0 && errno != EINTR) {
            e = errno;
            break;
        }
    }
    pthread_mutex_lock(&c->lock);
    c->users--;
    pthread_mutex_unlock(&c->lock);
    return rc ? cma_err(e) : 0;
}

CMA_EXPORT int rdma_ack_cm_event(struct rdma_cm_event *event)
{
    if (!event)
        return cma_err(EINVAL);
    struct cma_event *ev = cma_container(event, struct cma_event, ev);
    if (ev->owner)
        id_acked(ev->owner);
    free(ev);
    return 0;
}

CMA_EXPORT const char *rdma_event_str(enum rdma_cm_event_type event)
{
    static const char *const names[] = {
        "RDMA_CM_EVENT_ADDR_RESOLVED", "RDMA_CM_EVENT_ADDR_ERROR",
        "RDMA_CM_EVENT_ROUTE_RESOLVED", "RDMA_CM_EVENT_ROUTE_ERROR",
        "RDMA_CM_EVENT_CONNECT_REQUEST", "RDMA_CM_EVENT_CONNECT_RESPONSE",
        "RDMA_CM_EVENT_CONNECT_ERROR", "RDMA_CM_EVENT_UNREACHABLE",
        "RDMA_CM_EVENT_REJECTED", "RDMA_CM_EVENT_ESTABLISHED",
        "RDMA_CM_EVENT_DISCONNECTED", "RDMA_CM_EVENT_DEVICE_REMOVAL",
        "RDMA_CM_EVENT_MULTICAST_JOIN", "RDMA_CM_EVENT_MULTICAST_ERROR",
        "RDMA_CM_EVENT_ADDR_CHANGE", "RDMA_CM_EVENT_TIMEWAIT_EXIT"};
    if ((unsigned)event < sizeof(names) / sizeof(names[0]))
        return names[event];
    return "UNKNOWN EVENT";
}

/* A synchronous id's call waits for its event (librdmacm's ucma_complete): the event stays
 * in id->event until the next call; a failure becomes errno. */
int cma_complete(struct cma_id *id)
{
    if (!id->sync)
        return 0;
    if (id->id.event) {
        rdma_ack_cm_event(id->id.event);
        id->id.event = NULL;
    }
    struct rdma_cm_event *ev;
    if (rdma_get_cm_event(id->id.channel, &ev))
        return -1;
    id->id.event = ev;
    if (ev->event == RDMA_CM_EVENT_REJECTED)
        return cma_err(ECONNREFUSED);
    if (ev->status < 0)
        return cma_err(-ev->status);
    if (ev->status > 0)
        return cma_err(ev->event == RDMA_CM_EVENT_UNREACHABLE ? ECONNREFUSED : ev->status);
    if (ev->event == RDMA_CM_EVENT_CONNECT_ERROR)
        return cma_err(ECONNABORTED);
    return 0;
}

/* ---- ids ------------------------------------------------------------------------------ */
int cma_call(struct cma_id *id, const char *m, struct rargs *a, struct rreply *rep)
{
    struct rreply local;
    int rc = rconn_call(&cchan(id->id.channel)->conn, m, a, NULL, 0, rep ? rep : &local);
    if (a)
        rargs_free(a);
    if (rc < 0)
        return cma_err(-rc);
    if (!rep)
        rreply_free(&local);
    return 0;
}

int cma_id_verb(struct rdma_cm_id *id, const char *m)
{
    struct rargs a;
    rargs_init(&a);
    ra_uint(&a, "id", cid(id)->handle);
    return cma_call(cid(id), m, &a, NULL);
}

CMA_EXPORT int rdma_create_id(struct rdma_event_channel *channel, struct rdma_cm_id **id,
                              void *context, enum rdma_port_space ps)
{
    if (!id)
        return cma_err(EINVAL);
    if (cma_init())
        return -1;
    struct cma_id *c = id_alloc();
    if (!c)
        return cma_err(ENOMEM);
    c->sync = channel == NULL;
    if (c->sync && !(channel = rdma_create_event_channel())) {
        free(c);
        return -1;
    }
    c->id.channel = channel;
    c->id.context = context;
    c->id.ps = ps;
    c->id.qp_type = ps == RDMA_PS_UDP || ps == RDMA_PS_IPOIB ? IBV_QPT_UD : IBV_QPT_RC;
    struct rargs a;
    struct rreply rep;
    rargs_init(&a);
    ra_int(&a, "ps", ps);
    if (cma_call(c, "cm_create_id", &a, &rep)) {
        int e = errno;
        if (c->sync)
            rdma_destroy_event_channel(channel);
        free(c);
        return cma_err(e);
    }
    c->handle = (uint32_t)mo_u64(rep.r, "id", 0);
    rreply_free(&rep);
    id_add(c);
    *id = &c->id;
    return 0;
}

CMA_EXPORT int rdma_destroy_id(struct rdma_cm_id *id)
{
    if (!id)
        return cma_err(EINVAL);
    struct cma_id *c = cid(id);
    cma_id_verb(id, "cm_destroy_id");   /* a live connection is disconnected, a request rejected */
    id_del(c);                      /* no more events are handed out for it */
    if (id->event)
        rdma_ack_cm_event(id->event);
    /* rdma_destroy_id(3): blocks until every event handed out for the id is acknowledged */
    pthread_mutex_lock(&g_lock);
    while (c->acked < c->delivered)
        pthread_cond_wait(&c->acked_cond, &g_lock);
    pthread_mutex_unlock(&g_lock);
    pthread_cond_destroy(&c->acked_cond);
    if (c->sync)
        rdma_destroy_event_channel(id->channel);
    free(c->qp_init_attr);
    free(c);
    return 0;
}

static int match_id(const char *data, size_t len, void *arg)
{
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    size_t off = 0;
    int64_t h = -1;
    if (msgpack_unpack_next(&up, data, len, &off) == MSGPACK_UNPACK_SUCCESS)
        mo_int(&up.data, "id", &h);
    msgpack_unpacked_destroy(&up);
    return h == (int64_t)((struct cma_id *)arg)->handle;
}

static int migrate(struct cma_id *c, struct rdma_event_channel *to)
{
    struct rargs a;
    rargs_init(&a);
    ra_uint(&a, "id", c->handle);
    struct rreply rep;
    int rc = rconn_call(&cchan(to)->conn, "cm_migrate_id", &a, NULL, 0, &rep);
    rargs_free(&a);
    if (rc < 0)
        return cma_err(-rc);
    rreply_free(&rep);
    /* the events already queued for it move along (rdma_migrate_id(3)) */
    rconn_move_events(&cchan(c->id.channel)->conn, &cchan(to)->conn, 1, match_id, c);
    c->id.channel = to;
    return 0;
}

/* A sync listener's request: the new id gets a channel of its own. */
static int rdma_migrate_sync(struct cma_id *id)
{
    struct rdma_event_channel *ch = rdma_create_event_channel();
    if (!ch)
        return -1;
    if (migrate(id, ch)) {
        int e = errno;
        rdma_destroy_event_channel(ch);
        return cma_err(e);
    }
    id->sync = 1;
    return 0;
}

CMA_EXPORT int rdma_migrate_id(struct rdma_cm_id *id, struct rdma_event_channel *channel)
{
    if (!id)
        return cma_err(EINVAL);
    struct cma_id *c = cid(id);
    struct rdma_event_channel *old = id->channel;
    int was_sync = c->sync;
    if (!channel) {
        if (rdma_migrate_sync(c))
            return -1;
    } else {
        if (channel == old)
            return 0;
        if (migrate(c, channel))
            return -1;
        c->sync = 0;
    }
    if (was_sync)
        rdma_destroy_event_channel(old);
    return 0;
}
