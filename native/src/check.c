/*
 * check.c — the checks the data plane makes and core/ calls for the same decision (the slow
 * path never re-implements them): the memory-key check (IBTA 10.6.3.2, 10.6.7.2), and the
 * responder's PSN, opcode-sequence and length checks and RDMA WRITE bookkeeping (9.7.5.1, 9.7.7.1).
 * They change nothing when they fail; the caller turns the reason into its NAK, drop or
 * completion status.
 */
#include <errno.h>
#include <string.h>

#include "dp_util.h"
#include "rnic_dp.h"

#define ACC_REMOTE (RNIC_DP_ACC_REMOTE_WRITE | RNIC_DP_ACC_REMOTE_READ | RNIC_DP_ACC_REMOTE_ATOMIC)

int rnic_dp_mr_check(const struct rnic_dp_dev *dev, const struct rnic_dp_qp *qp, uint64_t pd,
                     uint32_t key, uint64_t addr, uint64_t len, uint32_t access, uint8_t **ptr)
{
    int remote = (access & ACC_REMOTE) != 0;
    const struct rnic_dp_mr *mr;

    *ptr = NULL;
    if (len == 0)
        return 0;                   /* 9.7.4.1.5: a zero-length transfer names no memory */
    if (remote && (!qp || (qp->access & access) != access))
        return -EACCES;             /* the QP's qp_access_flags allow it */
    mr = (key >> 8) < dev->mrs_len ? dev->mrs[key >> 8] : NULL;
    /* an lkey names an MR, an rkey an MR or a bound window (10.6.7) */
    if (!mr || mr->rkey != key || (mr->flags & RNIC_DP_KEY_INVALID)
        || (!remote && (mr->flags & RNIC_DP_KEY_MW)))
        return -ENOKEY;
    /* the QP's PD; a type 2B window serves only the QP it is bound to (10.6.7.2.2) */
    if (mr->pd != pd || (mr->qpn && (!qp || mr->qpn != qp->qpn)))
        return -EPERM;
    if ((mr->access & access) != access)
        return -EACCES;
    if (addr < mr->iova || addr - mr->iova > mr->length || len > mr->length - (addr - mr->iova))
        return -ERANGE;
    *ptr = mr->base + (addr - mr->iova);
    return 0;
}

int rnic_dp_psn_check(struct rnic_dp_qp *qp, uint32_t psn)
{
    int32_t d = dp_psn_diff(psn, qp->epsn);
    int nak;

    if (d == 0) {
        qp->nak_sent = 0;
        return RNIC_DP_PSN_NEW;
    }
    if (d < 0) {
        qp->duplicate_request++;
        return RNIC_DP_PSN_DUP;
    }
    qp->out_of_seq_request++;
    nak = !qp->nak_sent || dp_psn_diff(psn, qp->nak_high) <= 0;
    qp->nak_sent = 1;
    qp->nak_high = psn;
    return nak ? RNIC_DP_PSN_NAK : RNIC_DP_PSN_DROP;
}

int rnic_dp_atomic(struct rnic_dp_dev *dev, struct rnic_dp_qp *qp, uint32_t psn, int cas,
                   uint64_t va, uint32_t rkey, uint64_t swap_add, uint64_t compare,
                   uint64_t *orig)
{
    uint32_t keep = qp->max_dest_rd_atomic ? qp->max_dest_rd_atomic : 1, slot;
    struct rnic_dp_txn *t = &qp->txn;
    uint64_t *at, value;
    uint8_t *p;
    int rc, opened;

    if (va % 8)
        return -EINVAL;                             /* 9.4.5: naturally aligned */
    if ((rc = rnic_dp_mr_check(dev, qp, qp->pd, rkey, va, 8, RNIC_DP_ACC_REMOTE_ATOMIC, &p)) < 0)
        return rc;
    if ((uintptr_t)p % 8)
        return -EINVAL;     /* a zero-based window can make an aligned VA a misaligned address */
    if (keep > RNIC_DP_ATOMIC_RESULTS)
        keep = RNIC_DP_ATOMIC_RESULTS;
    slot = qp->atomic_next % keep;
    at = (uint64_t *)(void *)p;
    /* Executed exactly once even if the engine dies at any instruction (txn.c): under the
     * device's atomic lock the original is read, the result kept and the QP advanced; the
     * store of the new value is the change's effect, done (or, after a crash, done again)
     * before the lock is let go. Atomic with respect to other RDMA atomics of the device
     * only, as IBV_ATOMIC_HCA says. */
    opened = dp_txn_open(qp);
    dp_lock(dev, dev->atomic_lock);
    *orig = __atomic_load_n(at, __ATOMIC_RELAXED);
    value = cas ? (*orig == compare ? swap_add : *orig) : *orig + swap_add;
    t->atomic_slot = slot;
    t->atomic_old = qp->atomics[slot];
    t->atomic_at = value != *orig ? at : NULL;
    t->atomic_new = value;
    dp_barrier();
    t->effects |= RNIC_DP_FX_ATOMIC;
    dp_barrier();
    qp->atomics[slot].psn = psn;
    qp->atomics[slot].orig = *orig;
    qp->atomics[slot].valid = 1;
    qp->atomic_next = (slot + 1) % keep;
    qp->epsn = (psn + 1) & 0xffffff;
    qp->msn = (qp->msn + 1) & 0xffffff;
    dp_txn_close(dev, qp, opened);
    return 0;
}

int rnic_dp_atomic_replay(const struct rnic_dp_qp *qp, uint32_t psn, uint64_t *orig)
{
    for (uint32_t i = 0; i < RNIC_DP_ATOMIC_RESULTS; i++)
        if (qp->atomics[i].valid && qp->atomics[i].psn == psn) {
            *orig = qp->atomics[i].orig;
            return 0;
        }
    return -ENOENT;
}

int rnic_dp_seq_check(const struct rnic_dp_qp *qp, uint8_t opcode)
{
    const struct rnic_opinfo *oi = &rnic_op_table[opcode];
    uint32_t kind = qp->msg == RNIC_DP_MSG_SEND ? RNIC_KIND_SEND
                    : qp->msg == RNIC_DP_MSG_WRITE ? RNIC_KIND_WRITE : 0;

    if (!(oi->flags & RNIC_OPF_VALID))
        return -EPROTO;
    /* 9.7.5.1: FIRST/ONLY between messages, MIDDLE/LAST inside a message of their kind */
    if (oi->flags & RNIC_OPF_FIRST)
        return qp->msg == RNIC_DP_MSG_NONE ? 0 : -EPROTO;
    return kind && kind == oi->kind ? 0 : -EPROTO;
}

int rnic_dp_op_check(const struct rnic_dp_qp *qp, uint8_t opcode)
{
    uint32_t kind = rnic_op_table[opcode].kind;
    uint32_t need = kind == RNIC_KIND_WRITE ? RNIC_DP_ACC_REMOTE_WRITE
                    : kind == RNIC_KIND_READ_REQ ? RNIC_DP_ACC_REMOTE_READ
                    : kind == RNIC_KIND_ATOMIC ? RNIC_DP_ACC_REMOTE_ATOMIC : 0;

    return (qp->access & need) == need ? 0 : -EACCES;
}

int rnic_dp_len_check(const struct rnic_dp_qp *qp, uint8_t opcode, uint32_t plen)
{
    uint32_t pos = rnic_op_table[opcode].flags & (RNIC_OPF_FIRST | RNIC_OPF_LAST);

    /* 9.7.7.1: FIRST and MIDDLE carry exactly one PMTU, LAST 1..PMTU, ONLY 0..PMTU */
    if (plen > qp->mtu)
        return -EMSGSIZE;
    if (pos == (RNIC_OPF_FIRST | RNIC_OPF_LAST))
        return 0;
    if (pos == RNIC_OPF_LAST)
        return plen ? 0 : -EMSGSIZE;
    return plen == qp->mtu ? 0 : -EMSGSIZE;
}

int rnic_dp_write(const struct rnic_dp_dev *dev, struct rnic_dp_qp *qp, uint8_t opcode,
                  uint64_t va, uint32_t rkey, uint32_t dma_len, const uint8_t *payload,
                  uint32_t plen)
{
    uint32_t flags = rnic_op_table[opcode].flags;
    int first = (flags & RNIC_OPF_FIRST) != 0, last = (flags & RNIC_OPF_LAST) != 0, rc;
    uint64_t left = first ? dma_len : qp->write_left;
    uint8_t *dst = qp->write_ptr;

    /* length (9.7.5.1, 9.7.7.1): no packet carries more than the RETH leaves, the LAST or
     * ONLY exactly that; a FIRST of a DMA length below one PMTU fails here, one of exactly
     * one PMTU at its next packet, which has nothing left to carry (as rxe decides) */
    if ((rc = rnic_dp_len_check(qp, opcode, plen)) < 0)
        return rc;
    if (left > RNIC_DP_MAX_MSG || plen > left || (last && plen != left))
        return -EMSGSIZE;
    if (first) {                                    /* key: the RETH's (10.6.3.2) */
        rc = rnic_dp_mr_check(dev, qp, qp->pd, rkey, va, dma_len, RNIC_DP_ACC_REMOTE_WRITE, &dst);
        if (rc < 0)
            return rc;
        qp->write_len = dma_len;
    }
    if (plen)
        memcpy(dst, payload, plen);
    if (last) {                                     /* the message is complete */
        qp->msg = RNIC_DP_MSG_NONE;
        qp->write_ptr = NULL;
        qp->write_left = 0;
        qp->msn = (qp->msn + 1) & 0xffffff;
    } else {
        qp->msg = RNIC_DP_MSG_WRITE;
        qp->write_ptr = dst + plen;
        qp->write_left = left - plen;
    }
    return 0;
}

#undef ACC_REMOTE
