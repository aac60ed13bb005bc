/*
 * txn.c — the journal that makes an engine's changes of a QP crash-consistent
 * (struct rnic_dp_txn; docs/failover.md has the order and the invariants).
 *
 * A change of a QP's record (a packet, a pump of its send queue, a retired WQE, an atomic)
 * opens a transaction, which first takes a checkpoint of the fields a change may touch.
 * What the change does outside the record, where a client or a peer could see it (the
 * consumer index of a ring, a CQE, an atomic's store), is only noted; it is done once the
 * change commits, and every packet it queued is sent after that. An engine SIGKILLed
 * between any two instructions leaves the journal
 *   NONE:   the record is consistent;
 *   OPEN:   nothing left the record yet: rnic_dp_recover restores the checkpoint, as if
 *           the packet had been lost (retransmission covers it) or the pump had not run;
 *   COMMIT: the record is final: rnic_dp_recover finishes the effects, each of which may
 *           be done twice (stores of fixed values) or is tied to the CQ slot it took.
 */
#include <stddef.h>
#include <string.h>

#include "dp_util.h"
#include "rnic_dp.h"

#define SNAP_OFF offsetof(struct rnic_dp_qp, recv_held)
#define SNAP_LEN (offsetof(struct rnic_dp_qp, cwnd) - SNAP_OFF)
_Static_assert(SNAP_LEN <= RNIC_DP_SNAP_BYTES, "the checkpoint fits the journal");

int dp_txn_open(struct rnic_dp_qp *qp)
{
    struct rnic_dp_txn *t = &qp->txn;

    if (t->state != RNIC_DP_TXN_NONE)
        return 0;
    memcpy(t->snap, (uint8_t *)qp + SNAP_OFF, SNAP_LEN);
    t->effects = 0;
    t->cq_slotted = 0;
    dp_barrier();
    t->state = RNIC_DP_TXN_OPEN;
    dp_barrier();
    return 1;
}

/* The effects of a committed change, in order; after a crash each may be done again. */
static void txn_effects(struct rnic_dp_dev *dev, struct rnic_dp_qp *qp)
{
    struct rnic_dp_txn *t = &qp->txn;

    if ((t->effects & RNIC_DP_FX_ATOMIC) && t->atomic_at)
        __atomic_store_n(t->atomic_at, t->atomic_new, __ATOMIC_RELAXED);
    if (t->effects & RNIC_DP_FX_SQ_CONS)
        rnic_store_release(&qp->sq->cons, t->sq_cons);
    if (t->effects & RNIC_DP_FX_RQ_CONS)
        rnic_store_release(&qp->rq->cons, t->rq_cons);
    if ((t->effects & RNIC_DP_FX_CQE) && !t->cq_slotted)
        dp_cq_push(dev, t->cq, &t->cqe, t->solicited, t);
}

/* Commit the open change and do its effects; then the QP is consistent (NONE) or, with
 * reopen, at once in a new change whose checkpoint is the committed record (a crash in
 * between finds COMMIT, never NONE with the caller's work half done). */
static void txn_commit(struct rnic_dp_dev *dev, struct rnic_dp_qp *qp, int reopen)
{
    struct rnic_dp_txn *t = &qp->txn;
    int atomic = (t->effects & RNIC_DP_FX_ATOMIC) != 0;

    t->state = RNIC_DP_TXN_COMMIT;
    dp_barrier();
    txn_effects(dev, qp);
    if (reopen) {
        dp_barrier();
        t->effects = 0;                 /* done: nothing for a crash to finish or undo */
        t->cq_slotted = 0;
        memcpy(t->snap, (uint8_t *)qp + SNAP_OFF, SNAP_LEN);
        dp_barrier();
        t->state = RNIC_DP_TXN_OPEN;
    } else {
        dp_barrier();
        t->state = RNIC_DP_TXN_NONE;
    }
    dp_barrier();
    if (atomic)     /* only now: until the change is over a crash stores atomic_new again */
        dp_unlock(dev->atomic_lock);
}

void dp_txn_close(struct rnic_dp_dev *dev, struct rnic_dp_qp *qp, int opened)
{
    if (opened)
        txn_commit(dev, qp, 0);
}

void dp_txn_checkpoint(struct rnic_dp_dev *dev, struct rnic_dp_qp *qp)
{
    if (qp->txn.state == RNIC_DP_TXN_OPEN)
        txn_commit(dev, qp, 1);
}

static void fx_cons(struct rnic_dp_qp *qp, struct rnic_ring_hdr *ring, uint32_t *slot,
                    uint32_t bit, uint32_t cons)
{
    if (qp->txn.state != RNIC_DP_TXN_OPEN) {
        rnic_store_release(&ring->cons, cons);
        return;
    }
    *slot = cons;
    dp_barrier();
    qp->txn.effects |= bit;
}

void dp_fx_sq_cons(struct rnic_dp_qp *qp, uint32_t cons)
{
    fx_cons(qp, qp->sq, &qp->txn.sq_cons, RNIC_DP_FX_SQ_CONS, cons);
}

void dp_fx_rq_cons(struct rnic_dp_qp *qp, uint32_t cons)
{
    fx_cons(qp, qp->rq, &qp->txn.rq_cons, RNIC_DP_FX_RQ_CONS, cons);
}

void dp_fx_cqe(struct rnic_dp_dev *dev, struct rnic_dp_qp *qp, struct rnic_dp_cq *cq,
               const struct rnic_cqe *e, uint32_t solicited)
{
    struct rnic_dp_txn *t = &qp->txn;

    if (t->state != RNIC_DP_TXN_OPEN) {
        dp_cq_push(dev, cq, e, solicited, NULL);
        return;
    }
    if (t->effects & RNIC_DP_FX_CQE)    /* one CQE a change: commit the one noted first */
        dp_txn_checkpoint(dev, qp);
    t->cq = cq;
    t->cqe = *e;
    t->solicited = solicited;
    t->cq_slotted = 0;
    dp_barrier();
    t->effects |= RNIC_DP_FX_CQE;
}

/* After a rollback: send WQEs the undone change found acknowledged keep their status (the
 * responder did acknowledge them, and a repeated ACK would be stale), so una moves past
 * them (the daemon retires them: rnic_dp_recover's caller). */
static void acked_prefix(struct rnic_dp_qp *qp)
{
    if (!qp->swqes)
        return;
    for (uint32_t i = qp->sq_head; i != qp->sq_next; i++) {
        const struct rnic_dp_swqe *w = &qp->swqes[i & qp->swqe_mask];
        uint32_t end = dp_psn_add(w->first_psn, (int32_t)w->npkts);

        if (w->status < 0)
            break;
        if (w->npkts && dp_psn_diff(end, qp->una) > 0)
            qp->una = end;
    }
}

uint32_t rnic_dp_recover(struct rnic_dp_dev *dev, struct rnic_dp_qp *qp, uint32_t dead_id)
{
    struct rnic_dp_txn *t = &qp->txn;
    uint32_t found = t->state;

    if (found == RNIC_DP_TXN_OPEN) {
        if (t->effects & RNIC_DP_FX_ATOMIC)
            qp->atomics[t->atomic_slot] = t->atomic_old;
        memcpy((uint8_t *)qp + SNAP_OFF, t->snap, SNAP_LEN);
        t->effects = 0;
        t->state = RNIC_DP_TXN_NONE;
        acked_prefix(qp);
        return found;
    } else if (found == RNIC_DP_TXN_COMMIT) {
        uint32_t cqe = t->effects & RNIC_DP_FX_CQE;

        t->effects &= ~RNIC_DP_FX_CQE;
        txn_effects(dev, qp);
        if (cqe && t->cq_slotted) {
            /* the dead engine took the slot under the CQ's lock, which it still holds
             * unless it published prod past the slot: prod cannot have moved since */
            if (t->cq->hdr->prod == t->cq_slot)
                dp_cq_fill(dev, t->cq, t->cq_slot, &t->cqe, t->solicited);
        } else if (cqe) {
            rnic_dp_lock_break(&t->cq->lock, dead_id);  /* it may hold it, slot not taken */
            dp_cq_push(dev, t->cq, &t->cqe, t->solicited, NULL);
        }
    }
    t->effects = 0;
    t->state = RNIC_DP_TXN_NONE;
    return found;
}
