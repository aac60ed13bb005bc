/* cq.c — completion channels and CQs; poll_cq reads the CQ ring in this process. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "priv.h"

/* ---- completion channels ------------------------------------------------------------------ */
RNIC_EXPORT struct ibv_comp_channel *ibv_create_comp_channel(struct ibv_context *ctx)
{
    struct rreply rep;
    if (rnic_call(rctx(ctx), "create_comp_channel", NULL, NULL, 0, &rep, 1))
        return NULL;
    int64_t h;
    struct rnic_channel *ch = NULL;
    if (mo_int(rep.r, "channel", &h) || rep.nfds < 1 || rep.fds[0] < 0) {
        rreply_free(&rep);
        errno = EPROTO;
        return NULL;
    }
    ch = calloc(1, sizeof(*ch));
    /* rnicd's eventfd is non-blocking and its flags are shared with rnicd (which must never
     * block writing it), so the program gets an epoll fd over it: readable when it is, and
     * blocking or not as the program sets O_NONBLOCK on it (as the kernel's channel fd). */
    int ep = ch ? epoll_create1(EPOLL_CLOEXEC) : -1;
    struct epoll_event ee = {.events = EPOLLIN}, hup = {.events = EPOLLRDHUP};
    /* and readable once the daemon is gone (its control socket hung up), so that a program
     * waiting for a completion event gets an error instead of waiting forever */
    if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, rep.fds[0], &ee) < 0
        || epoll_ctl(ep, EPOLL_CTL_ADD, rctx(ctx)->conn.fd, &hup) < 0) {
        int e = ch ? errno : ENOMEM;
        if (ep >= 0)
            close(ep);
        free(ch);
        rnic_simple(rctx(ctx), "destroy_comp_channel", "channel", (uint32_t)h);
        rreply_free(&rep);
        errno = e;
        return NULL;
    }
    ch->ch.context = ctx;
    ch->ch.fd = ep;
    ch->evfd = rep.fds[0];
    rep.fds[0] = -1;
    ch->ch.refcnt = 0;
    ch->handle = (uint32_t)h;
    pthread_mutex_init(&ch->lock, NULL);
    rreply_free(&rep);
    return &ch->ch;
}

RNIC_EXPORT int ibv_destroy_comp_channel(struct ibv_comp_channel *channel)
{
    struct rnic_channel *ch = container(channel, struct rnic_channel, ch);
    pthread_mutex_lock(&ch->lock);
    int busy = ch->cqs != NULL;
    pthread_mutex_unlock(&ch->lock);
    if (busy) {
        errno = EBUSY;
        return EBUSY;
    }
    if (rnic_simple(rctx(channel->context), "destroy_comp_channel", "channel", ch->handle) &&
        errno != ECONNRESET)
        return errno;
    close(channel->fd);
    close(ch->evfd);
    free(ch);
    return 0;
}

/* ibv_get_cq_event: hand out every CQ of the channel whose ring `events` counter moved, one
 * per call; with none, consume the eventfd's count, or wait for it (epoll) unless the
 * program made channel->fd O_NONBLOCK (then EAGAIN); EIO once the daemon is gone. */
RNIC_EXPORT int ibv_get_cq_event(struct ibv_comp_channel *channel, struct ibv_cq **cq,
                                 void **cq_context)
{
    struct rnic_channel *ch = container(channel, struct rnic_channel, ch);
    for (;;) {
        pthread_mutex_lock(&ch->lock);
        for (struct rnic_cq *c = ch->cqs; c; c = c->chnext) {
            uint32_t ev = ld_acq(&c->ring.hdr->events);
            if (ev != c->events_seen) {
                c->events_seen = ev;
                c->pending = 1;
            }
        }
        for (struct rnic_cq *c = ch->cqs; c; c = c->chnext) {
            if (c->pending) {
                c->pending = 0;
                pthread_mutex_unlock(&ch->lock);
                *cq = &c->cq;
                *cq_context = c->cq.cq_context;
                return 0;
            }
        }
        pthread_mutex_unlock(&ch->lock);
        uint64_t v;
        ssize_t n = read(ch->evfd, &v, sizeof(v));
        if (n > 0 || (n < 0 && errno == EINTR))
            continue;
        if (errno != EAGAIN)
            return -1;
        if (rconn_gone(&rctx(channel->context)->conn)) {
            errno = EIO;        /* no completion event will ever come (IBTA 11.6.3) */
            return -1;
        }
        int fl = fcntl(channel->fd, F_GETFL);
        if (fl < 0)
            return -1;
        if (fl & O_NONBLOCK) {
            errno = EAGAIN;
            return -1;
        }
        struct epoll_event e;
        if (epoll_wait(channel->fd, &e, 1, -1) < 0 && errno != EINTR)
            return -1;
    }
}

RNIC_EXPORT void ibv_ack_cq_events(struct ibv_cq *cq, unsigned int nevents)
{
    pthread_mutex_lock(&cq->mutex);
    cq->comp_events_completed += nevents;
    pthread_cond_signal(&cq->cond);
    pthread_mutex_unlock(&cq->mutex);
}

/* ---- CQs ------------------------------------------------------------------------------------ */
static void chan_add(struct rnic_channel *ch, struct rnic_cq *cq)
{
    pthread_mutex_lock(&ch->lock);
    cq->chnext = ch->cqs;
    ch->cqs = cq;
    cq->events_seen = ld_acq(&cq->ring.hdr->events);
    pthread_mutex_unlock(&ch->lock);
}

static void chan_del(struct rnic_channel *ch, struct rnic_cq *cq)
{
    pthread_mutex_lock(&ch->lock);
    for (struct rnic_cq **p = &ch->cqs; *p; p = &(*p)->chnext)
        if (*p == cq) {
            *p = cq->chnext;
            break;
        }
    pthread_mutex_unlock(&ch->lock);
}

struct rnic_cq *rnic_cq_create(struct ibv_context *ctx, int cqe, void *cq_context,
                               struct ibv_comp_channel *channel, int comp_vector)
{
    struct rnic_ctx *c = rctx(ctx);
    if (cqe <= 0 || cqe > c->attr.max_cqe || comp_vector < 0 ||
        comp_vector >= ctx->num_comp_vectors) {
        errno = EINVAL;
        return NULL;
    }
    struct rnic_channel *ch = channel ? container(channel, struct rnic_channel, ch) : NULL;
    struct rargs a;
    struct rreply rep;
    rargs_init(&a);
    ra_int(&a, "cqe", cqe);
    ra_int(&a, "comp_vector", comp_vector);
    if (ch)
        ra_uint(&a, "channel", ch->handle);
    else
        ra_nil(&a, "channel");
    if (rnic_call(c, "create_cq", &a, NULL, 0, &rep, 1))
        return NULL;
    int64_t h, actual, size;
    if (mo_int(rep.r, "cq", &h) || mo_int(rep.r, "cqe", &actual) || mo_int(rep.r, "size", &size)) {
        rreply_free(&rep);
        errno = EPROTO;
        return NULL;
    }
    struct rnic_cq *cq = calloc(1, sizeof(*cq));
    int rc = cq ? rring_map(&cq->ring, rep.fds[0], (uint64_t)size, RNIC_RING_CQ, "create_cq")
                : -ENOMEM;
    rep.fds[0] = -1;
    rreply_free(&rep);
    if (rc < 0) {
        free(cq);
        rnic_simple(c, "destroy_cq", "cq", (uint32_t)h);
        errno = -rc;
        return NULL;
    }
    cq->handle = (uint32_t)h;
    cq->cq.context = ctx;
    cq->cq.channel = channel;
    cq->cq.cq_context = cq_context;
    cq->cq.handle = (uint32_t)h;
    cq->cq.cqe = (int)actual;
    pthread_mutex_init(&cq->cq.mutex, NULL);
    pthread_cond_init(&cq->cq.cond, NULL);
    pthread_spin_init(&cq->lock, PTHREAD_PROCESS_PRIVATE);
    cq->chan = ch;
    if (ch)
        chan_add(ch, cq);
    robj_add(c, ROBJ_CQ, cq->handle, cq);
    return cq;
}

RNIC_EXPORT struct ibv_cq *ibv_create_cq(struct ibv_context *ctx, int cqe, void *cq_context,
                                         struct ibv_comp_channel *channel, int comp_vector)
{
    struct rnic_cq *cq = rnic_cq_create(ctx, cqe, cq_context, channel, comp_vector);
    return cq ? &cq->cq : NULL;
}

RNIC_EXPORT int ibv_resize_cq(struct ibv_cq *ibcq, int cqe)
{
    struct rnic_cq *cq = container(ibcq, struct rnic_cq, cq);
    struct rargs a;
    struct rreply rep;
    if (cqe <= 0)
        return EINVAL;
    rargs_init(&a);
    ra_uint(&a, "cq", cq->handle);
    ra_int(&a, "cqe", cqe);
    if (rnic_call(rctx(ibcq->context), "resize_cq", &a, NULL, 0, &rep, 1))
        return errno;
    int64_t actual, size;
    if (mo_int(rep.r, "cqe", &actual) || mo_int(rep.r, "size", &size)) {
        rreply_free(&rep);
        return EPROTO;
    }
    struct rring nr;
    int rc = rring_map(&nr, rep.fds[0], (uint64_t)size, RNIC_RING_CQ, "resize_cq");
    rep.fds[0] = -1;
    rreply_free(&rep);
    if (rc < 0)
        return -rc;
    pthread_spin_lock(&cq->lock);
    struct rring old = cq->ring;
    cq->ring = nr;
    cq->events_seen = ld_acq(&nr.hdr->events);
    ibcq->cqe = (int)actual;
    pthread_spin_unlock(&cq->lock);
    rring_unmap(&old);
    return 0;
}

RNIC_EXPORT int ibv_destroy_cq(struct ibv_cq *ibcq)
{
    struct rnic_cq *cq = container(ibcq, struct rnic_cq, cq);
    struct rnic_ctx *c = rctx(ibcq->context);
    if (rnic_simple(c, "destroy_cq", "cq", cq->handle) && errno != ECONNRESET)
        return errno;
    if (cq->chan)
        chan_del(cq->chan, cq);
    robj_del(c, ROBJ_CQ, cq->handle);
    rring_unmap(&cq->ring);
    free(cq);
    return 0;
}

/* ---- the data path -------------------------------------------------------------------------- */
/* The daemon writes every completion: if it is gone, a program polling its CQ would spin
 * forever. Every 4096 empty polls, a peek at the control socket (nothing consumed) tells:
 * end of file is the daemon gone, a catastrophic error (IBTA 11.6.3), and the poll fails. */
static int daemon_gone(struct rnic_cq *cq)
{
    struct rnic_ctx *c = rctx(cq->cq.context);

    return c->conn.dead || (++cq->empty_polls % 4096 == 0 && rconn_gone(&c->conn));
}

int rnic_poll_cq(struct ibv_cq *ibcq, int num, struct ibv_wc *wc)
{
    struct rnic_cq *cq = container(ibcq, struct rnic_cq, cq);
    struct rring *r = &cq->ring;
    pthread_spin_lock(&cq->lock);
    struct rnic_ring_hdr *h = r->hdr;
    uint32_t prod = ld_acq(&h->prod), cons = h->cons;
    uint32_t avail = prod - cons;
    if (avail > r->n || (avail == 0 && h->error)) {
        pthread_spin_unlock(&cq->lock);
        return -EIO;            /* corrupt indices, or the CQ overran (it is in error) */
    }
    int k = 0;
    for (; k < num && (uint32_t)k < avail; k++) {
        const struct rnic_cqe *e =
            (const struct rnic_cqe *)(r->ents + (size_t)((cons + (uint32_t)k) & (r->n - 1)) * r->es);
        struct ibv_wc *w = &wc[k];
        w->wr_id = e->wr_id;
        w->status = (enum ibv_wc_status)e->status;
        w->opcode = (enum ibv_wc_opcode)e->opcode;
        w->vendor_err = e->vendor_err;
        w->byte_len = e->byte_len;
        w->imm_data = cqe_imm(e);
        w->qp_num = e->qp_num;
        w->src_qp = e->src_qp;
        w->wc_flags = e->wc_flags;
        w->pkey_index = e->pkey_index;
        w->slid = e->slid;
        w->sl = e->sl;
        w->dlid_path_bits = e->dlid_path_bits;
    }
    if (k)
        st_rel(&h->cons, cons + (uint32_t)k);
    pthread_spin_unlock(&cq->lock);
    if (!k) {
        if (daemon_gone(cq))
            return -EIO;
        rnic_poll_idle(h);
    }
    return k;
}

/* IBTA 11.4.2.2: arm for the next (or next solicited) completion. */
int rnic_req_notify_cq(struct ibv_cq *ibcq, int solicited_only)
{
    struct rnic_cq *cq = container(ibcq, struct rnic_cq, cq);
    uint32_t *arm = &cq->ring.hdr->arm;
    if (solicited_only && ld_acq(arm) == RNIC_CQ_ARM_NEXT)
        return 0;    /* already armed for any completion, which includes solicited ones */
    __atomic_exchange_n(arm, solicited_only ? RNIC_CQ_ARM_SOLICITED : RNIC_CQ_ARM_NEXT,
                        __ATOMIC_SEQ_CST);
    return 0;
}

/* A QP went to RESET: drop its unpolled completions (as libmlx5 does in ibv_modify_qp), moving
 * the other QPs' entries toward the producer end in order. */
void rnic_cq_clean(struct rnic_cq *cq, uint32_t qp_num)
{
    struct rring *r = &cq->ring;
    pthread_spin_lock(&cq->lock);
    uint32_t prod = ld_acq(&r->hdr->prod), cons = r->hdr->cons, n = prod - cons, freed = 0;
    if (n <= r->n) {
        for (uint32_t k = n; k-- > 0;) {
            struct rnic_cqe *e = (struct rnic_cqe *)(r->ents + (size_t)((cons + k) & (r->n - 1)) * r->es);
            if (e->qp_num == qp_num)
                freed++;
            else if (freed)
                memcpy(r->ents + (size_t)((cons + k + freed) & (r->n - 1)) * r->es, e, sizeof(*e));
        }
        if (freed)
            st_rel(&r->hdr->cons, cons + freed);
    }
    pthread_spin_unlock(&cq->lock);
}
