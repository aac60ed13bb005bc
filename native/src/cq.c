/*
 * cq.c — completions into a CQ ring (rnic_abi.h; IBTA 11.4.2): one writer at a time per CQ
 * (QPs of several engines may complete into one), the completion channel when armed
 * (11.4.2.2), and the slot a journal records so that a push cut short by a crash is
 * finished exactly once (txn.c).
 */
#include <errno.h>
#include <string.h>

#include "dp_util.h"
#include "rnic_dp.h"

/* Note that cq needs its channel signalled (or, overrun, core/): in an engine, with the
 * channel's eventfd when the engine holds it (dev->fdmap), else by core/ from notify[]. */
static void cq_note(struct rnic_dp_dev *dev, const struct rnic_dp_cq *cq, int for_core)
{
    int32_t fd = -1;

    if (dev->nnotify >= dev->notify_cap)
        return;
    if (!for_core && dev->fdmap_len && cq->chan_fd >= 0 && (uint32_t)cq->chan_fd < dev->fdmap_len)
        fd = dev->fdmap[cq->chan_fd] - 1;    /* stored + 1: 0 is none */
    if (dev->notify_fds)
        dev->notify_fds[dev->nnotify] = fd;
    dev->notify[dev->nnotify++] = cq->id;
}

void dp_lock(struct rnic_dp_dev *dev, uint32_t *l)
{
    uint32_t free_ = 0, me = dev->lock_id ? dev->lock_id : 1;

    while (!__atomic_compare_exchange_n(l, &free_, me, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) {
        free_ = 0;
        __builtin_ia32_pause();
    }
}
void dp_unlock(uint32_t *l) { __atomic_store_n(l, 0, __ATOMIC_RELEASE); }

int rnic_dp_lock_break(uint32_t *l, uint32_t lock_id)
{
    return __atomic_compare_exchange_n(l, &lock_id, 0, 0, __ATOMIC_RELEASE, __ATOMIC_RELAXED);
}

void dp_cq_fill(struct rnic_dp_dev *dev, struct rnic_dp_cq *cq, uint32_t slot,
                const struct rnic_cqe *e, uint32_t solicited)
{
    struct rnic_ring_hdr *h = cq->hdr;

    memcpy(cq->entries + (size_t)(slot & cq->mask) * RNIC_CQE_SIZE, e, sizeof(*e));
    rnic_store_release(&h->prod, slot + 1);
    if (cq->has_channel) {
        /* The exchange is a full barrier after publishing prod: a client that arms and
         * polls again cannot miss both the CQE and the event. */
        uint32_t arm = rnic_xchg(&h->arm, RNIC_CQ_DISARMED);

        if (arm == RNIC_CQ_ARM_SOLICITED && !solicited && e->status == 0) {
            rnic_xchg(&h->arm, arm);                /* not for this arm: re-arm */
        } else if (arm != RNIC_CQ_DISARMED) {
            rnic_fetch_add(&h->events, 1);
            cq_note(dev, cq, 0);
        }
    }
}

int dp_cq_push(struct rnic_dp_dev *dev, struct rnic_dp_cq *cq, const struct rnic_cqe *e,
               uint32_t solicited, struct rnic_dp_txn *t)
{
    struct rnic_ring_hdr *h = cq->hdr;
    uint32_t prod;
    int rc = 0;

    /* writers take turns, each leaving its lock_id (a dead engine's lock is broken);
     * uncontended this is one compare-and-swap */
    dp_lock(dev, &cq->lock);
    prod = h->prod;                                 /* only the lock holder writes prod */
    if (prod - rnic_load_acquire(&h->cons) >= cq->mask) {  /* one slot is kept free */
        cq->overflow = 1;
        cq_note(dev, cq, 1);
        rc = -ENOSPC;
    } else {
        if (t) {                /* the journal: published once prod passes this slot */
            t->cq_slot = prod;
            dp_barrier();
            t->cq_slotted = 1;
            dp_barrier();
        }
        dp_cq_fill(dev, cq, prod, e, solicited);
        /* the poller waits on our CPU (it yields, so it runs when we do): say so */
        if (dev->cpu_tag && rnic_load_acquire(&h->poller_cpu) == dev->cpu_tag) {
            rnic_store_release(&h->poller_cpu, 0);
            dev->poller_here = 1;
        }
    }
    dp_unlock(&cq->lock);
    return rc;
}

int rnic_dp_cq_push(struct rnic_dp_dev *dev, struct rnic_dp_cq *cq, const struct rnic_cqe *e,
                    uint32_t solicited)
{
    return dp_cq_push(dev, cq, e, solicited, NULL);
}
