/*
 * cma.h — rnicd's librdmacm.so.1: the objects behind rdma_cma.h's public structs.
 *
 * The CM protocol runs in rnicd (docs/connection-management.md); this library asks it to
 * listen, connect, accept, reject and disconnect (the cm_* control verbs) and turns its CM
 * events into struct rdma_cm_event. The verbs side is libibverbs' (ours): librdmacm opens the
 * daemon's device once per process (ibv_open_device), and each event channel is a second
 * connection joined to that context (import_context), so the QP, PD and CQ handles of
 * id->verbs are valid on it and the daemon sends each id's events to its channel's
 * connection (cm_create_id / cm_migrate_id route them there). channel->fd is an epoll fd
 * over that connection's socket and its queue's wake pipe, so poll() on it works.
 */
#ifndef RNIC_CMA_H
#define RNIC_CMA_H

#include <infiniband/verbs.h>
#include <pthread.h>
#include <rdma/rdma_cma.h>

#include "conn.h"

#define CMA_EXPORT __attribute__((visibility("default")))
#define cma_container(ptr, type, member) ((type *)((char *)(ptr) - offsetof(type, member)))

/* The process's device: the daemon's one, opened through libibverbs (rdma_get_devices). */
struct cma_dev {
    struct ibv_context *verbs;
    struct ibv_pd *pd;            /* librdmacm's per-device PD: id->pd unless given another */
    struct ibv_xrcd *xrcd;        /* ... and XRC domain, for the XRC_RECV ids' QPs and SRQs */
    struct ibv_device_attr attr;
    struct ibv_port_attr port;
    union ibv_gid gid;            /* GID 0: the IPv4-mapped address rnicd sends from */
    uint32_t ip;                  /* that address, network order */
    int ifindex;                  /* the netdev it is bound to (0: none) */
};

struct cma_chan {
    struct rdma_event_channel ch;  /* fd: epoll over conn.fd and conn.wake[0] */
    struct rconn conn;
    pthread_mutex_t lock;
    int users;                     /* threads inside rdma_get_cm_event */
    int closed;                    /* destroyed while one was: it stays blocked, as a read
                                      of a closed rdma_cm fd does; the struct is kept */
};

struct cma_id {
    struct rdma_cm_id id;          /* first */
    uint32_t handle;               /* the daemon's CM id */
    int sync;                      /* created without a channel: calls wait for their event */
    int bound, addr_resolved, route_resolved, listening;
    struct ibv_qp_init_attr *qp_init_attr;   /* sync passive ep: each request's QP */
    struct ibv_ece local_ece;
    struct ibv_sa_path_rec path;
    /* events handed out / acknowledged: rdma_destroy_id waits for the acks (rdma_cm(7)) */
    uint32_t delivered, acked;
    pthread_cond_t acked_cond;
    struct cma_id *next;           /* in the process's table (events name ids by handle) */
};

struct cma_event {
    struct rdma_cm_event ev;       /* first */
    struct cma_id *owner;          /* whose ack it is (the listener for a request) */
    uint8_t pdata[256];
};

static inline struct cma_id *cid(struct rdma_cm_id *id) { return (struct cma_id *)id; }
static inline struct cma_chan *cchan(struct rdma_event_channel *ch)
{
    return cma_container(ch, struct cma_chan, ch);
}

/* errno = e, -1 (librdmacm's ERR()) */
int cma_err(int e);

/* cma.c */
extern struct cma_dev cma_dev;
int cma_init(void);                                   /* 0 or -1 errno */
int cma_call(struct cma_id *id, const char *m, struct rargs *a, struct rreply *rep);
int cma_id_verb(struct rdma_cm_id *id, const char *m);  /* a verb whose only argument is the id */
int cma_push_local(struct cma_id *id, enum rdma_cm_event_type type, int status);
int cma_complete(struct cma_id *id);                  /* sync ids: wait for the op's event */

/* cma_addr.c */
int cma_route_check(uint32_t dst_be);                 /* 0 or -errno (netlink route get) */
int cma_sockaddr_ipv4(const struct sockaddr *sa, uint32_t *ip, uint16_t *port); /* 0 / -errno */
void cma_set_sin(struct sockaddr *sa, uint32_t ip, uint16_t port_be);
void cma_fill_route(struct cma_id *id);

/* cma_qp.c */
void cma_qp_attr_from(const msgpack_object *m, struct ibv_qp_attr *attr);

#endif
