/* device.c — devices, contexts, device/port/GID queries and asynchronous events. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "priv.h"

/* ---- plumbing ---------------------------------------------------------------------- */
int rnic_call(struct rnic_ctx *c, const char *m, struct rargs *a, const int *fds, int nfds,
              struct rreply *rep, int want_fds)
{
    int rc = rconn_call(&c->conn, m, a, fds, nfds, rep);
    if (a)
        rargs_free(a);
    if (rc < 0) {
        errno = -rc;
        return -1;
    }
    if (rep->nfds != want_fds) {
        rnic_log("%s: rnicd sent %d descriptors, expected %d", m, rep->nfds, want_fds);
        rreply_free(rep);
        errno = EPROTO;
        return -1;
    }
    return 0;
}

/* A verb with one handle argument and no result. */
int rnic_simple(struct rnic_ctx *c, const char *m, const char *k, uint32_t h)
{
    struct rargs a;
    struct rreply rep;
    rargs_init(&a);
    ra_uint(&a, k, h);
    if (rnic_call(c, m, &a, NULL, 0, &rep, 0))
        return -1;
    rreply_free(&rep);
    return 0;
}

void robj_add(struct rnic_ctx *c, int kind, uint32_t handle, void *obj)
{
    struct robj *o = malloc(sizeof(*o));
    if (!o)
        return;   /* only async events miss the object */
    o->kind = kind;
    o->handle = handle;
    o->obj = obj;
    pthread_mutex_lock(&c->objlock);
    o->next = c->objs;
    c->objs = o;
    pthread_mutex_unlock(&c->objlock);
}

void robj_del(struct rnic_ctx *c, int kind, uint32_t handle)
{
    pthread_mutex_lock(&c->objlock);
    for (struct robj **p = &c->objs; *p; p = &(*p)->next) {
        if ((*p)->kind == kind && (*p)->handle == handle) {
            struct robj *o = *p;
            *p = o->next;
            free(o);
            break;
        }
    }
    pthread_mutex_unlock(&c->objlock);
}

void *robj_find(struct rnic_ctx *c, int kind, uint32_t handle)
{
    void *r = NULL;
    pthread_mutex_lock(&c->objlock);
    for (struct robj *o = c->objs; o; o = o->next)
        if (o->kind == kind && o->handle == handle) {
            r = o->obj;
            break;
        }
    pthread_mutex_unlock(&c->objlock);
    return r;
}

/* The reply's doorbells (docs/control-protocol.md): doorbell_fds, the indexes of one eventfd
 * per engine among the reply's fds (an older rnicd sends doorbell_fd, one index). Taken out
 * of rep; 0, or -1 if the reply names none or names one twice or out of range. */
static int take_doorbells(struct rnic_ctx *c, struct rreply *rep)
{
    const msgpack_object *list = mo_get(rep->r, "doorbell_fds");
    int64_t one = 0;
    uint32_t n = 1;

    if (list && (list->type != MSGPACK_OBJECT_ARRAY || list->via.array.size == 0 ||
                 list->via.array.size > RNIC_MAX_DOORBELLS))
        return -1;
    if (list)
        n = list->via.array.size;
    else
        mo_int(rep->r, "doorbell_fd", &one);
    for (uint32_t i = 0; i < n; i++) {
        const msgpack_object *o = list ? &list->via.array.ptr[i] : NULL;
        int64_t idx = !o ? one : o->type == MSGPACK_OBJECT_POSITIVE_INTEGER
                                     ? (int64_t)o->via.u64 : -1;

        if (idx < 0 || idx >= rep->nfds || rep->fds[idx] < 0) {
            for (uint32_t k = 0; k < i; k++)
                close(c->doorbell_fds[k]);
            return -1;
        }
        c->doorbell_fds[i] = rep->fds[idx];
        rep->fds[idx] = -1;
    }
    c->ndoorbells = (int)n;
    return 0;
}

static void close_doorbells(struct rnic_ctx *c)
{
    for (int i = 0; i < c->ndoorbells; i++)
        close(c->doorbell_fds[i]);
    c->ndoorbells = 0;
}

/* hello: {version, device, pid} + our own socket end; reply: a doorbell eventfd per engine. */
static int hello(struct rconn *conn, const char *devname, struct rreply *rep)
{
    struct rargs a;
    rargs_init(&a);
    ra_int(&a, "version", 1);
    if (devname)
        ra_str(&a, "device", devname);
    else
        ra_nil(&a, "device");
    ra_int(&a, "pid", getpid());
    int rc = rconn_call(conn, "hello", &a, &conn->fd, 1, rep);
    rargs_free(&a);
    return rc;
}

/* ---- device list --------------------------------------------------------------------- */
/* A device's names (sysfs-like paths, as libibverbs shows them) and node GUID and type. */
static void describe(struct rnic_device *d, struct rconn *conn, const char *name, uint32_t nl,
                     const char *path)
{
    struct rreply rep;
    snprintf(d->dev.name, sizeof(d->dev.name), "%.*s", name ? (int)nl : 5, name ? name : "rnic0");
    snprintf(d->dev.dev_name, sizeof(d->dev.dev_name), "uverbs_%.50s", d->dev.name);
    snprintf(d->dev.dev_path, sizeof(d->dev.dev_path), "/sys/class/infiniband_verbs/uverbs_%s",
             d->dev.name);
    snprintf(d->dev.ibdev_path, sizeof(d->dev.ibdev_path), "/sys/class/infiniband/%s",
             d->dev.name);
    snprintf(d->sock, sizeof(d->sock), "%s", path);
    d->dev.node_type = IBV_NODE_CA;
    d->dev.transport_type = IBV_TRANSPORT_IB;
    if (rconn_call(conn, "query_device", NULL, NULL, 0, &rep) == 0) {
        d->guid = mo_u64(rep.r, "node_guid", 0);
        d->dev.node_type = (enum ibv_node_type)mo_u64(rep.r, "node_type", IBV_NODE_CA);
        d->dev.transport_type = (enum ibv_transport_type)mo_u64(rep.r, "transport_type",
                                                                 IBV_TRANSPORT_IB);
        rreply_free(&rep);
    }
}

RNIC_EXPORT struct ibv_device **ibv_get_device_list(int *num_devices)
{
    struct ibv_device **list = calloc(2, sizeof(*list));
    if (!list) {
        errno = ENOMEM;
        return NULL;
    }
    if (num_devices)
        *num_devices = 0;
    char path[108];
    rconn_socket_path(path, sizeof(path));
    struct rconn conn;
    if (rconn_open(&conn, path) < 0)
        return list;       /* no daemon: no device */
    struct rreply rep;
    if (hello(&conn, NULL, &rep) < 0) {
        rconn_close(&conn);
        return list;
    }
    struct rnic_device *d = calloc(1, sizeof(*d));
    if (!d) {
        rreply_free(&rep);
        rconn_close(&conn);
        free(list);
        errno = ENOMEM;
        return NULL;
    }
    uint32_t nl = 0;
    const char *name = mo_bin(rep.r, "device", &nl);
    describe(d, &conn, name, nl, path);
    rreply_free(&rep);
    rconn_close(&conn);
    list[0] = &d->dev;
    if (num_devices)
        *num_devices = 1;
    return list;
}

RNIC_EXPORT void ibv_free_device_list(struct ibv_device **list)
{
    if (!list)
        return;
    for (struct ibv_device **p = list; *p; p++)
        free(container(*p, struct rnic_device, dev));
    free(list);
}

RNIC_EXPORT const char *ibv_get_device_name(struct ibv_device *device)
{
    return device->name;
}

RNIC_EXPORT __be64 ibv_get_device_guid(struct ibv_device *device)
{
    return container(device, struct rnic_device, dev)->guid;
}

RNIC_EXPORT int ibv_get_device_index(struct ibv_device *device)
{
    (void)device;
    return 0;
}

/* ---- contexts ------------------------------------------------------------------------ */
static int rnic_query_port_op(struct ibv_context *c, uint8_t p, struct ibv_port_attr *a, size_t l)
{
    return rnic_query_port(c, p, a, l);
}

extern void rnic_fill_context_ops(struct rnic_ctx *c);   /* ops.c */

/* import_context: join the context behind cmd_fd (passing it and our own end as proof). */
static int import_context(struct rconn *conn, int cmd_fd, struct rreply *rep)
{
    struct rargs a;
    rargs_init(&a);
    ra_int(&a, "version", 1);
    int fds[2] = {cmd_fd, conn->fd};
    int rc = rconn_call(conn, "import_context", &a, fds, 2, rep);
    rargs_free(&a);
    return rc;
}

/* A context on d's daemon: a new one (hello), or, with import_fd >= 0, the one behind it. */
static struct ibv_context *ctx_open(struct rnic_device *d, int import_fd)
{
    struct ibv_device *device = &d->dev;
    struct rnic_ctx *c = calloc(1, sizeof(*c));
    if (!c) {
        errno = ENOMEM;
        return NULL;
    }
    c->imported_fd = -1;
    int rc = rconn_open(&c->conn, d->sock);
    if (rc < 0) {
        free(c);
        errno = -rc;
        return NULL;
    }
    struct rreply rep;
    rc = import_fd >= 0 ? import_context(&c->conn, import_fd, &rep)
                        : hello(&c->conn, device->name, &rep);
    if (rc < 0) {
        rconn_close(&c->conn);
        free(c);
        errno = -rc;
        return NULL;
    }
    if (take_doorbells(c, &rep) < 0) {
        rreply_free(&rep);
        rconn_close(&c->conn);
        free(c);
        errno = EPROTO;
        return NULL;
    }
    struct ibv_context *ctx = &c->vctx.context;
    ctx->num_comp_vectors = (int)mo_u64(rep.r, "num_comp_vectors", 1);
    if (import_fd >= 0) {
        uint32_t nl = 0;
        const char *name = mo_bin(rep.r, "device", &nl);
        describe(d, &c->conn, name, nl, d->sock);
    }
    rreply_free(&rep);
    /* async_fd: readable when an event waits on the socket or in our queue */
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ee = {.events = EPOLLIN};
    if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, c->conn.fd, &ee) < 0 ||
        epoll_ctl(ep, EPOLL_CTL_ADD, c->conn.wake[0], &ee) < 0) {
        int e = errno;
        if (ep >= 0)
            close(ep);
        close_doorbells(c);
        rconn_close(&c->conn);
        free(c);
        errno = e;
        return NULL;
    }
    ctx->device = device;
    ctx->cmd_fd = c->conn.fd;
    ctx->async_fd = ep;
    pthread_mutex_init(&ctx->mutex, NULL);
    pthread_mutex_init(&c->objlock, NULL);
    ctx->abi_compat = __VERBS_ABI_IS_EXTENDED;
    c->vctx.sz = sizeof(struct verbs_context);
    c->vctx.query_port = rnic_query_port_op;
    rnic_fill_context_ops(c);
    if (ibv_query_device(ctx, &c->attr)) {
        int e = errno;
        ibv_close_device(ctx);
        errno = e;
        return NULL;
    }
    return ctx;
}

RNIC_EXPORT struct ibv_context *ibv_open_device(struct ibv_device *device)
{
    return ctx_open(container(device, struct rnic_device, dev), -1);
}

/* ibv_import_device(3): a context sharing the objects of the one whose command fd this is
 * (here or in another process); the new context owns cmd_fd and closes it. */
RNIC_EXPORT struct ibv_context *ibv_import_device(int cmd_fd)
{
    struct sockaddr_un sa;
    socklen_t len = sizeof(sa);
    memset(&sa, 0, sizeof(sa));
    if (getpeername(cmd_fd, (struct sockaddr *)&sa, &len) < 0 || sa.sun_family != AF_UNIX ||
        !sa.sun_path[0]) {
        errno = errno == ENOTSOCK || errno == EBADF ? errno : EINVAL;
        return NULL;       /* not a command socket connected to an rnicd */
    }
    struct rnic_device *d = calloc(1, sizeof(*d));
    if (!d) {
        errno = ENOMEM;
        return NULL;
    }
    snprintf(d->sock, sizeof(d->sock), "%.*s", (int)sizeof(sa.sun_path), sa.sun_path);
    struct ibv_context *ctx = ctx_open(d, cmd_fd);
    if (!ctx) {
        free(d);
        return NULL;
    }
    rctx(ctx)->own_dev = d;
    rctx(ctx)->imported_fd = cmd_fd;
    return ctx;
}

RNIC_EXPORT int ibv_close_device(struct ibv_context *ctx)
{
    struct rnic_ctx *c = rctx(ctx);
    if (c->imported_fd >= 0)
        close(c->imported_fd);
    close(ctx->async_fd);
    close_doorbells(c);
    rconn_close(&c->conn);    /* the daemon destroys every object of the connection */
    pthread_mutex_lock(&c->objlock);
    while (c->objs) {
        struct robj *o = c->objs;
        c->objs = o->next;
        free(o);
    }
    pthread_mutex_unlock(&c->objlock);
    free(c->own_dev);
    free(c);
    return 0;
}

/* ---- queries -------------------------------------------------------------------------- */
#define U(f) a->f = (__typeof__(a->f))mo_u64(r, #f, 0)
static void fill_device_attr(const msgpack_object *r, struct ibv_device_attr *a)
{
    memset(a, 0, sizeof(*a));
    uint32_t n = 0;
    const char *fw = mo_bin(r, "fw_ver", &n);
    if (fw)
        snprintf(a->fw_ver, sizeof(a->fw_ver), "%.*s", (int)n, fw);
    U(node_guid); U(sys_image_guid); U(max_mr_size); U(page_size_cap); U(vendor_id);
    U(vendor_part_id); U(hw_ver); U(max_qp); U(max_qp_wr); U(device_cap_flags); U(max_sge);
    U(max_sge_rd); U(max_cq); U(max_cqe); U(max_mr); U(max_pd); U(max_qp_rd_atom);
    U(max_ee_rd_atom); U(max_res_rd_atom); U(max_qp_init_rd_atom); U(max_ee_init_rd_atom);
    U(atomic_cap); U(max_ee); U(max_rdd); U(max_mw); U(max_raw_ipv6_qp); U(max_raw_ethy_qp);
    U(max_mcast_grp); U(max_mcast_qp_attach); U(max_total_mcast_qp_attach); U(max_ah);
    U(max_fmr); U(max_map_per_fmr); U(max_srq); U(max_srq_wr); U(max_srq_sge); U(max_pkeys);
    U(local_ca_ack_delay); U(phys_port_cnt);
}

RNIC_EXPORT int ibv_query_device(struct ibv_context *ctx, struct ibv_device_attr *attr)
{
    struct rreply rep;
    if (rnic_call(rctx(ctx), "query_device", NULL, NULL, 0, &rep, 0))
        return errno;
    fill_device_attr(rep.r, attr);
    rreply_free(&rep);
    return 0;
}

int rnic_query_device_ex(struct ibv_context *ctx, const struct ibv_query_device_ex_input *in,
                         struct ibv_device_attr_ex *attr, size_t attr_size)
{
    if (in && in->comp_mask)
        return EINVAL;
    if (attr_size < sizeof(attr->orig_attr))
        return EINVAL;
    struct rreply rep;
    if (rnic_call(rctx(ctx), "query_device_ex", NULL, NULL, 0, &rep, 0))
        return errno;
    struct ibv_device_attr_ex ex;
    memset(&ex, 0, sizeof(ex));
    fill_device_attr(mo_get(rep.r, "orig_attr"), &ex.orig_attr);
    const msgpack_object *r = rep.r;
    struct ibv_device_attr_ex *a = &ex;
    U(completion_timestamp_mask); U(hca_core_clock); U(device_cap_flags_ex);
    U(max_wq_type_rq); U(raw_packet_caps); U(max_dm_size); U(phys_port_cnt_ex);
    a->comp_mask = 0;
    rreply_free(&rep);
    memcpy(attr, &ex, attr_size < sizeof(ex) ? attr_size : sizeof(ex));
    if (attr_size > sizeof(ex))
        memset((char *)attr + sizeof(ex), 0, attr_size - sizeof(ex));
    return 0;
}

int rnic_query_port(struct ibv_context *ctx, uint8_t port, struct ibv_port_attr *pa, size_t len)
{
    struct rargs args;
    struct rreply rep;
    rargs_init(&args);
    ra_int(&args, "port", port);
    if (rnic_call(rctx(ctx), "query_port", &args, NULL, 0, &rep, 0))
        return errno;
    struct ibv_port_attr p, *a = &p;
    memset(&p, 0, sizeof(p));
    const msgpack_object *r = rep.r;
    U(state); U(max_mtu); U(active_mtu); U(gid_tbl_len); U(port_cap_flags); U(max_msg_sz);
    U(bad_pkey_cntr); U(qkey_viol_cntr); U(pkey_tbl_len); U(lid); U(sm_lid); U(lmc);
    U(max_vl_num); U(sm_sl); U(subnet_timeout); U(init_type_reply); U(active_width);
    U(active_speed); U(phys_state); U(link_layer); U(flags); U(port_cap_flags2);
    rreply_free(&rep);
    if (len > sizeof(p))
        memset((char *)pa + sizeof(p), 0, len - sizeof(p));
    memcpy(pa, &p, len < sizeof(p) ? len : sizeof(p));
    return 0;
}
#undef U

/* The exported symbol keeps the old (compat) layout: only the fields before `flags`. */
#undef ibv_query_port
RNIC_EXPORT int ibv_query_port(struct ibv_context *ctx, uint8_t port, struct _compat_ibv_port_attr *attr)
{
    return rnic_query_port(ctx, port, (struct ibv_port_attr *)attr, offsetof(struct ibv_port_attr, flags));
}

static int query_gid_raw(struct ibv_context *ctx, uint8_t port, int index, union ibv_gid *gid,
                         int64_t *type, int64_t *ifindex)
{
    struct rargs args;
    struct rreply rep;
    rargs_init(&args);
    ra_int(&args, "port", port);
    ra_int(&args, "index", index);
    if (rnic_call(rctx(ctx), "query_gid", &args, NULL, 0, &rep, 0))
        return -1;
    uint32_t n = 0;
    const char *g = mo_bin(rep.r, "gid", &n);
    if (!g || n != 16) {
        rreply_free(&rep);
        errno = EPROTO;
        return -1;
    }
    memcpy(gid->raw, g, 16);
    if (type && mo_int(rep.r, "gid_type", type))
        *type = IBV_GID_TYPE_ROCE_V2;
    if (ifindex && mo_int(rep.r, "ndev_ifindex", ifindex))
        *ifindex = 0;
    rreply_free(&rep);
    return 0;
}

RNIC_EXPORT int ibv_query_gid(struct ibv_context *ctx, uint8_t port, int index, union ibv_gid *gid)
{
    return query_gid_raw(ctx, port, index, gid, NULL, NULL);
}

/* rdma-core's private helper (ibv_devinfo): the sysfs GID type of an entry. */
RNIC_EXPORT int ibv_query_gid_type(struct ibv_context *ctx, uint8_t port, unsigned int index,
                                   int *type)
{
    union ibv_gid gid;
    int64_t t;
    if (query_gid_raw(ctx, port, (int)index, &gid, &t, NULL))
        return -1;
    *type = t == IBV_GID_TYPE_ROCE_V1 ? 0 : 1;   /* enum ibv_gid_type_sysfs: IB_ROCE_V1 0, ROCE_V2 1 */
    return 0;
}

static int gid_entry(struct ibv_context *ctx, uint32_t port, uint32_t index,
                     struct ibv_gid_entry *e)
{
    int64_t t, ifx;
    memset(e, 0, sizeof(*e));
    if (query_gid_raw(ctx, (uint8_t)port, (int)index, &e->gid, &t, &ifx))
        return errno;
    static const uint8_t zero[16];
    if (!memcmp(e->gid.raw, zero, 16))
        return ENODATA;
    e->gid_index = index;
    e->port_num = port;
    e->gid_type = (uint32_t)t;
    e->ndev_ifindex = (uint32_t)ifx;
    return 0;
}

RNIC_EXPORT int _ibv_query_gid_ex(struct ibv_context *ctx, uint32_t port, uint32_t index,
                                  struct ibv_gid_entry *entry, uint32_t flags, size_t entry_size)
{
    if (flags || entry_size < sizeof(*entry))
        return EINVAL;
    return gid_entry(ctx, port, index, entry);
}

RNIC_EXPORT ssize_t _ibv_query_gid_table(struct ibv_context *ctx, struct ibv_gid_entry *entries,
                                         size_t max_entries, uint32_t flags, size_t entry_size)
{
    if (flags || entry_size < sizeof(struct ibv_gid_entry))
        return -EINVAL;
    struct ibv_port_attr pa;
    int rc = rnic_query_port(ctx, 1, &pa, sizeof(pa));
    if (rc)
        return -rc;
    size_t n = 0;
    for (int i = 0; i < pa.gid_tbl_len; i++) {
        struct ibv_gid_entry e;
        rc = gid_entry(ctx, 1, (uint32_t)i, &e);
        if (rc == ENODATA)
            continue;
        if (rc)
            return -rc;
        if (n >= max_entries)
            return -EINVAL;
        memcpy((char *)entries + n * entry_size, &e, sizeof(e));
        n++;
    }
    return (ssize_t)n;
}

/* RoCE has the one default P_Key. */
RNIC_EXPORT int ibv_query_pkey(struct ibv_context *ctx, uint8_t port, int index, __be16 *pkey)
{
    (void)ctx;
    if (port != 1 || index != 0)
        return EINVAL;
    *pkey = 0xffff;
    return 0;
}

RNIC_EXPORT int ibv_get_pkey_index(struct ibv_context *ctx, uint8_t port, __be16 pkey)
{
    (void)ctx;
    return port == 1 && (pkey & 0xff7f) == 0xff7f ? 0 : -1;
}

/* ---- asynchronous events ---------------------------------------------------------------- */
RNIC_EXPORT int ibv_get_async_event(struct ibv_context *ctx, struct ibv_async_event *event)
{
    struct rnic_ctx *c = rctx(ctx);
    int nonblock = fcntl(ctx->async_fd, F_GETFL) & O_NONBLOCK;
    for (;;) {
        struct rev *e = rconn_next_event(&c->conn, 0);
        if (!e) {
            if (errno != EAGAIN) {         /* rnicd went away: one fatal event, then errors */
                if (c->fatal_sent)
                    return -1;
                c->fatal_sent = 1;
                memset(event, 0, sizeof(*event));
                event->event_type = IBV_EVENT_DEVICE_FATAL;
                return 0;
            }
            if (nonblock)
                return -1;
            struct pollfd p[2] = {{c->conn.fd, POLLIN, 0}, {c->conn.wake[0], POLLIN, 0}};
            poll(p, 2, -1);
            continue;
        }
        msgpack_unpacked up;
        msgpack_unpacked_init(&up);
        size_t off = 0;
        /* the objects point into e->data (msgpack-c does not copy): e lives until the end */
        int ok = msgpack_unpack_next(&up, e->data, e->len, &off) == MSGPACK_UNPACK_SUCCESS;
        if (!ok) {
            msgpack_unpacked_destroy(&up);
            free(e);
            continue;
        }
        const msgpack_object *ev = &up.data;
        int64_t type = -1, h;
        mo_int(ev, "type", &type);
        memset(event, 0, sizeof(*event));
        event->event_type = (enum ibv_event_type)type;
        void *obj = NULL;
        switch (type) {
        case IBV_EVENT_CQ_ERR:
            if (!mo_int(ev, "cq", &h) && (obj = robj_find(c, ROBJ_CQ, (uint32_t)h)))
                event->element.cq = &((struct rnic_cq *)obj)->cq;
            break;
        case IBV_EVENT_SRQ_ERR:
        case IBV_EVENT_SRQ_LIMIT_REACHED:
            if (!mo_int(ev, "srq", &h) && (obj = robj_find(c, ROBJ_SRQ, (uint32_t)h)))
                event->element.srq = &((struct rnic_srq *)obj)->srq;
            break;
        case IBV_EVENT_PORT_ACTIVE:
        case IBV_EVENT_PORT_ERR:
        case IBV_EVENT_LID_CHANGE:
        case IBV_EVENT_PKEY_CHANGE:
        case IBV_EVENT_SM_CHANGE:
        case IBV_EVENT_CLIENT_REREGISTER:
        case IBV_EVENT_GID_CHANGE:
            event->element.port_num = (int)mo_u64(ev, "port_num", mo_u64(ev, "port", 1));
            obj = event;
            break;
        case IBV_EVENT_DEVICE_FATAL:
            obj = event;
            break;
        default:                      /* QP events: by handle, else by QP number */
            if (!mo_int(ev, "qp", &h))
                obj = robj_find(c, ROBJ_QP, (uint32_t)h);
            if (!obj && !mo_int(ev, "qp_num", &h)) {
                pthread_mutex_lock(&c->objlock);
                for (struct robj *o = c->objs; o; o = o->next)
                    if (o->kind == ROBJ_QP && ((struct rnic_qp *)o->obj)->qp.qp_num == h) {
                        obj = o->obj;
                        break;
                    }
                pthread_mutex_unlock(&c->objlock);
            }
            if (obj)
                event->element.qp = &((struct rnic_qp *)obj)->qp;
        }
        msgpack_unpacked_destroy(&up);
        free(e);
        if (obj)
            return 0;
        rnic_log("async event %lld for an object this context does not know: dropped",
                 (long long)type);
    }
}

RNIC_EXPORT void ibv_ack_async_event(struct ibv_async_event *event)
{
    (void)event;   /* nothing is held for an event */
}
