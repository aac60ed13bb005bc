/* priv.h — the objects of rnicd's libibverbs: each public struct is embedded first in ours. */
#ifndef RNIC_PRIV_H
#define RNIC_PRIV_H

#include <endian.h>
#include <infiniband/verbs.h>
#include <stdatomic.h>
#include <stddef.h>

#include "../../../native/include/rnic_abi.h"
#include "conn.h"

#define RNIC_EXPORT __attribute__((visibility("default")))
#define container(ptr, type, member) ((type *)((char *)(ptr) - offsetof(type, member)))

/* A mapped ring (rnic_abi.h): header, entries, and the limits rnicd granted. */
struct rring {
    struct rnic_ring_hdr *hdr;
    uint8_t *ents;
    size_t size;
    uint32_t n, es, max_sge, max_inline;
    uint32_t limit;          /* max_wr granted (<= n) */
};

/* Context-local table of handles -> objects (async events name objects by handle). */
struct robj {
    struct robj *next;
    int kind;                /* ROBJ_* */
    uint32_t handle;
    void *obj;
};
enum { ROBJ_QP = 1, ROBJ_CQ, ROBJ_SRQ };

struct rnic_device {
    struct ibv_device dev;   /* first */
    uint64_t guid;           /* network order */
    char sock[108];
};

#define RNIC_MAX_DOORBELLS 64

struct rnic_ctx {
    struct verbs_context vctx;   /* ends with struct ibv_context */
    struct rconn conn;
    int doorbell_fds[RNIC_MAX_DOORBELLS];    /* one per engine (hello's doorbell_fds) */
    int ndoorbells;
    pthread_mutex_t objlock;
    struct robj *objs;
    struct ibv_device_attr attr; /* queried at open: limits for checks */
    int fatal_sent;              /* IBV_EVENT_DEVICE_FATAL was reported */
    struct rnic_device *own_dev; /* ibv_import_device: the device made for this context */
    int imported_fd;             /* ibv_import_device: the cmd_fd it took over, else -1 */
};

static inline struct rnic_ctx *rctx(struct ibv_context *c)
{
    return container(c, struct rnic_ctx, vctx.context);
}

/* A PD, or a parent domain (ibv_alloc_parent_domain(3)): that has `base`, the PD it was made
 * on, and the same handle, so every verb taking a PD uses the base PD in rnicd; `children`
 * counts a PD's parent domains (ibv_dealloc_pd answers EBUSY while there are any). */
struct rnic_pd {
    struct ibv_pd pd;
    uint32_t handle;
    struct rnic_pd *base;
    int children;
};
struct rnic_mr { struct ibv_mr mr; struct rpin *pin; };
struct rnic_ah { struct ibv_ah ah; };
struct rnic_xrcd { struct ibv_xrcd xrcd; uint32_t handle; };

struct rnic_cq;
struct rnic_channel {
    struct ibv_comp_channel ch;   /* fd: an epoll fd over evfd, blocking unless the program
                                   * sets O_NONBLOCK on it */
    int evfd;                     /* the eventfd rnicd writes (O_NONBLOCK, shared with rnicd) */
    uint32_t handle;
    pthread_mutex_t lock;
    struct rnic_cq *cqs;          /* CQs of this channel (list through chnext) */
};

struct rnic_cq {
    union {
        struct ibv_cq cq;
        struct ibv_cq_ex cq_ex;
    };
    uint32_t handle;
    struct rring ring;
    pthread_spinlock_t lock;
    struct rnic_channel *chan;
    struct rnic_cq *chnext;
    uint32_t events_seen;         /* hdr->events when we last looked */
    int pending;                  /* an event noticed, not yet handed out */
    struct rnic_cqe cur;          /* extended CQ: the current completion (start/next_poll) */
    uint32_t empty_polls;         /* polls that found nothing (rnic_poll_cq looks at the
                                   * daemon every 4096 of them) */
};

struct rnic_srq {
    struct ibv_srq srq;
    uint32_t handle, srq_num;
    struct rring ring;
    pthread_spinlock_t lock;
    uint32_t max_sge;
};

struct rnic_qp {
    union {
        struct ibv_qp qp;
        struct ibv_qp_ex qp_ex;
    };
    uint32_t handle;
    struct rring sq, rq;          /* rq.hdr NULL with an SRQ */
    int has_sq, has_rq;
    pthread_spinlock_t sq_lock, rq_lock;
    struct ibv_qp_cap cap;
    int sq_sig_all;
    struct rnic_wrx *wrx;         /* ibv_qp_ex: the batch between wr_start and wr_complete */
};

/* qp_ex.c */
uint32_t rnic_send_ops(enum ibv_qp_type t);   /* post.c: 1 << IBV_WR_* the QP type takes */
int rnic_qp_ex_init(struct rnic_qp *qp, uint64_t send_ops_flags);
void rnic_qp_ex_free(struct rnic_qp *qp);

/* ring.c */
int rring_map(struct rring *r, int fd, uint64_t size, uint32_t kind, const char *what);
void rring_unmap(struct rring *r);
static inline uint32_t ld_acq(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void st_rel(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }

/* ibv_wc.imm_data from a CQE: rnicd's CQE holds the immediate as a host integer (the wire's
 * big-endian ImmDt decoded), ibv_wc's is a __be32 holding the wire's bytes, so byte-swap it;
 * an invalidated rkey (IBV_WC_WITH_INV) shares the field and is a host integer in both. */
static inline uint32_t cqe_imm(const struct rnic_cqe *e)
{
    return (e->wc_flags & IBV_WC_WITH_IMM) ? (uint32_t)htobe32(e->imm_data) : e->imm_data;
}
void rnic_doorbell(struct rnic_ctx *c, struct rring *r);
/* An empty poll: give the CPU to a runnable engine (docs/engines.md, polite polling). */
void rnic_poll_idle(struct rnic_ring_hdr *h);

/* device.c */
void robj_add(struct rnic_ctx *c, int kind, uint32_t handle, void *obj);
void robj_del(struct rnic_ctx *c, int kind, uint32_t handle);
void *robj_find(struct rnic_ctx *c, int kind, uint32_t handle);
/* A call on ctx; sets errno and returns -1 on error (like every verb). */
int rnic_call(struct rnic_ctx *c, const char *m, struct rargs *a, const int *fds, int nfds,
              struct rreply *rep, int want_fds);
int rnic_simple(struct rnic_ctx *c, const char *m, const char *k, uint32_t h);

/* post.c */
int rnic_post_send(struct ibv_qp *qp, struct ibv_send_wr *wr, struct ibv_send_wr **bad);
int rnic_post_send_list(struct ibv_qp *qp, struct ibv_send_wr *wr, struct ibv_send_wr **bad,
                        int all_or_none);
int rnic_post_recv(struct ibv_qp *qp, struct ibv_recv_wr *wr, struct ibv_recv_wr **bad);
int rnic_post_srq_recv(struct ibv_srq *srq, struct ibv_recv_wr *wr, struct ibv_recv_wr **bad);

/* cq.c */
int rnic_poll_cq(struct ibv_cq *cq, int n, struct ibv_wc *wc);
int rnic_req_notify_cq(struct ibv_cq *cq, int solicited_only);
void rnic_cq_clean(struct rnic_cq *cq, uint32_t qp_num);
struct rnic_cq *rnic_cq_create(struct ibv_context *ctx, int cqe, void *cq_context,
                               struct ibv_comp_channel *channel, int comp_vector);
/* cq_ex.c */
struct ibv_cq_ex *rnic_create_cq_ex(struct ibv_context *ctx, struct ibv_cq_init_attr_ex *ia);
struct ibv_pd *rnic_alloc_parent_domain(struct ibv_context *ctx,
                                        struct ibv_parent_domain_init_attr *attr);

/* usermem.c */
struct rpin;
int rpin_get(void *addr, size_t length, int writable, struct rpin **out);  /* 0 / -errno */
void rpin_put(struct rpin *p);
/* reg_mr arguments of a pin: segments, start; and its fds */
void rpin_args(struct rpin *p, struct rargs *a, int *fds, int *nfds);

/* verbs implemented in one file and used by others */
struct ibv_qp *rnic_create_qp_ex(struct ibv_context *ctx, struct ibv_qp_init_attr_ex *ia);
int rnic_query_port(struct ibv_context *ctx, uint8_t port, struct ibv_port_attr *a, size_t len);
int rnic_query_device_ex(struct ibv_context *ctx, const struct ibv_query_device_ex_input *in,
                         struct ibv_device_attr_ex *attr, size_t attr_size);
struct ibv_xrcd *rnic_open_xrcd(struct ibv_context *ctx, struct ibv_xrcd_init_attr *ia);
int rnic_close_xrcd(struct ibv_xrcd *xrcd);
struct ibv_srq *rnic_create_srq_ex(struct ibv_context *ctx, struct ibv_srq_init_attr_ex *ia);
void rnic_ah_attr_args(struct rargs *a, const char *key, const struct ibv_ah_attr *ah);

#endif
