/*
 * sq.c — the requester's and completer's common case: segmenting SEND and RDMA WRITE WQEs
 * into packets (IBTA 9.7.1-9.7.2, segmentation 9.7.7), acknowledging them (coalesced ACKs,
 * 9.7.5.1.2), completing them in order (10.8.3) into the CQ ring (11.4.2), and the window.
 *
 * core/roce/ fetches and validates every WQE, builds READ and atomic requests, and handles
 * every NAK, timeout and response; it calls the same functions for the same jobs, so each
 * mechanism is written once.
 */
#include <errno.h>
#include <string.h>

#include "dp_util.h"
#include "rnic_dp.h"

enum {
    ROCE_PORT = 4791,           /* Annex A17.2.1 */
    WR_WRITE = 0, WR_WRITE_IMM = 1, WR_SEND = 2, WR_SEND_IMM = 3, WR_READ = 4, WR_CAS = 5,
    WR_FAA = 6, WR_LOCAL_INV = 7, WR_BIND_MW = 8, WR_SEND_INV = 9,
    SF_FENCE = 1, SF_SIGNALED = 2, SF_SOLICITED = 4, SF_INLINE = 8,
    WC_LOC_LEN_ERR = 1, WC_LOC_QP_OP_ERR = 2, WC_LOC_PROT_ERR = 4,   /* enum ibv_wc_status */
};

/* SEND and RDMA WRITE opcodes by [write][FIRST, MIDDLE, LAST, ONLY][with immediate]
 * (IBTA 9.2 Table 38); the transport bits come from the QP */
static const uint8_t data_ops[2][4][2] = {
    { { RNIC_OP_SEND_FIRST, RNIC_OP_SEND_FIRST }, { RNIC_OP_SEND_MIDDLE, RNIC_OP_SEND_MIDDLE },
      { RNIC_OP_SEND_LAST, RNIC_OP_SEND_LAST_WITH_IMMEDIATE },
      { RNIC_OP_SEND_ONLY, RNIC_OP_SEND_ONLY_WITH_IMMEDIATE } },
    { { RNIC_OP_RDMA_WRITE_FIRST, RNIC_OP_RDMA_WRITE_FIRST },
      { RNIC_OP_RDMA_WRITE_MIDDLE, RNIC_OP_RDMA_WRITE_MIDDLE },
      { RNIC_OP_RDMA_WRITE_LAST, RNIC_OP_RDMA_WRITE_LAST_WITH_IMMEDIATE },
      { RNIC_OP_RDMA_WRITE_ONLY, RNIC_OP_RDMA_WRITE_ONLY_WITH_IMMEDIATE } },
};

/* the transport bits of the QP's opcodes (IBTA 9.2: RC 000, UC 001; A14.4: XRC 101) */
static inline uint8_t opbase(const struct rnic_dp_qp *qp)
{
    return qp->xrc ? RNIC_OPT_XRC : qp->ud ? RNIC_OPT_UD : qp->unreliable ? RNIC_OPT_UC
                                                                            : RNIC_OPT_RC;
}

/* SEND and RDMA WRITE WQEs: segmented into packets here */
static inline int sends_data(uint32_t op) { return op <= WR_SEND_IMM || op == WR_SEND_INV; }
/* BIND_MW and LOCAL_INV (IBTA 10.6.7.2.x): no packets, core/ executes them when fetched */
static inline int local_op(uint32_t op) { return op == WR_LOCAL_INV || op == WR_BIND_MW; }
/* UC carries SEND and RDMA WRITE (with immediate) only: no READ, atomics, windows (9.8) */
static inline int uc_op(uint32_t op) { return op <= WR_SEND_IMM; }


uint32_t rnic_dp_retire(struct rnic_dp_dev *dev, struct rnic_dp_qp *qp)
{
    int opened = dp_txn_open(qp);
    uint32_t n = 0;

    while (qp->sq_head != qp->sq_next) {
        struct rnic_dp_swqe *w = &qp->swqes[qp->sq_head & qp->swqe_mask];

        int post = qp->sq_sig_all || (w->flags & SF_SIGNALED) || w->status != 0;
        struct rnic_cqe c;

        if (w->status < 0)
            break;
        if (qp->txn.effects & RNIC_DP_FX_CQE)
            dp_txn_checkpoint(dev, qp);             /* one completion a change */
        if (post) {
            memset(&c, 0, sizeof(c));
            c.wr_id = w->wr_id;
            c.status = (uint32_t)w->status;
            c.opcode = w->wc_opcode;
            c.byte_len = w->length;
            c.qp_num = qp->qpn;
        }
        w->npieces = 0;                             /* no pointer outlives its WQE */
        qp->sq_head++;
        /* The ring slot is free before its completion shows: an application that polled the
         * CQE may post into the slot at once (perftest keeps exactly the SQ depth in flight). */
        dp_fx_sq_cons(qp, qp->sq_head);
        if (post)
            dp_fx_cqe(dev, qp, qp->scq, &c, 0);
        n++;
    }
    dp_txn_close(dev, qp, opened);
    return n;
}

int64_t rnic_dp_ack(struct rnic_dp_dev *dev, struct rnic_dp_qp *qp, uint32_t psn)
{
    uint32_t target = dp_psn_add(psn, 1);

    (void)dev;
    for (uint32_t i = qp->sq_head; i != qp->sq_next; i++) {
        struct rnic_dp_swqe *w = &qp->swqes[i & qp->swqe_mask];

        if (w->status >= 0)
            continue;
        if (!sends_data(w->opcode)) {
            if (dp_psn_diff(psn, w->first_psn) >= 0) {
                /* the responder executed this READ/atomic but its response is missing */
                if (dp_psn_diff(w->first_psn, qp->una) > 0)
                    qp->una = w->first_psn;
                return w->first_psn;
            }
            break;
        }
        if (dp_psn_diff(psn, dp_psn_add(w->first_psn, (int32_t)w->npkts - 1)) < 0)
            break;
        w->status = 0;                              /* IBV_WC_SUCCESS */
    }
    if (dp_psn_diff(target, qp->una) > 0)
        qp->una = target;
    return -1;
}

void rnic_dp_progress(struct rnic_dp_dev *dev, struct rnic_dp_qp *qp, uint32_t old_una)
{
    int32_t d = dp_psn_diff(qp->una, old_una);

    if (d <= 0)
        return;
    qp->cwnd += (double)d / qp->cwnd;               /* additive increase */
    if (qp->cwnd > RNIC_DP_WINDOW)
        qp->cwnd = RNIC_DP_WINDOW;
    qp->rewound = 0;
    /* the responder took the probe's packet and nothing after it: what followed was
     * discarded (its sequence NAK was lost), so resend it now */
    if (qp->probe_stage == RNIC_DP_PROBE_SENT && d == 1 && qp->una != qp->send_psn)
        rnic_dp_go_back(dev, qp, qp->una, 0);
    qp->probe_stage = RNIC_DP_PROBE_NONE;
    qp->retry_left = qp->retry_cnt;
    qp->rnr_left = qp->rnr_retry;
    if (qp->rtt_timing && dp_psn_diff(qp->una, qp->rtt_psn) > 0) {
        double sample = dev->now - qp->rtt_sent;    /* RFC 6298's smoothing, alpha 1/8 */

        qp->srtt = qp->srtt > 0 ? qp->srtt + (sample - qp->srtt) / 8 : sample;
        qp->rtt_timing = 0;
    }
    qp->retrans_at = 0;
    if (qp->una != qp->send_psn)
        rnic_dp_arm_timer(dev, qp);
}

void rnic_dp_sent(struct rnic_dp_dev *dev, struct rnic_dp_qp *qp, uint32_t psn, uint32_t next)
{
    if (dp_psn_diff(psn, qp->high_psn) < 0) {
        qp->retransmitted_pkts++;
    } else if (!qp->rtt_timing) {
        qp->rtt_timing = 1;
        qp->rtt_psn = psn;
        qp->rtt_sent = dev->now;
    }
    if (dp_psn_diff(next, qp->high_psn) > 0)
        qp->high_psn = next;
    rnic_dp_arm_timer(dev, qp);
}

void rnic_dp_arm_timer(struct rnic_dp_dev *dev, struct rnic_dp_qp *qp)
{
    double probe = RNIC_DP_PROBE_RTTS * qp->srtt;

    if (qp->retrans_at != 0 || qp->timeout_s <= 0)
        return;
    qp->retrans_at = dev->now + qp->timeout_s;
    qp->probe_s = probe < RNIC_DP_PROBE_MIN_US * 1e-6 ? RNIC_DP_PROBE_MIN_US * 1e-6 : probe;
    qp->probe_at = qp->srtt > 0 ? dev->now + qp->probe_s : 0;
}

double rnic_dp_deadline(const struct rnic_dp_qp *qp)
{
    return qp->probe_at > 0 && qp->retrans_at > 0 && qp->probe_at < qp->retrans_at
           ? qp->probe_at : qp->retrans_at;
}

int rnic_dp_resp_psn_check(struct rnic_dp_qp *qp, uint32_t psn)
{
    int32_t d = dp_psn_diff(psn, qp->una);          /* requests in flight: [una, next_psn) */

    if (d < 0) {
        qp->duplicate_response++;
        return RNIC_DP_RESP_STALE;
    }
    return d < dp_psn_diff(qp->next_psn, qp->una) ? 0 : RNIC_DP_RESP_BAD;
}

int rnic_dp_read_resp(struct rnic_dp_dev *dev, struct rnic_dp_qp *qp, uint32_t psn, int last,
                      const uint8_t *data, uint32_t n)
{
    struct rnic_dp_swqe *w = dp_wqe_at(qp, psn);
    uint32_t k;
    uint64_t off;

    if (!w || w->opcode != WR_READ || w->status >= 0)
        return -ENOENT;
    if (dp_psn_diff(w->first_psn, qp->una) > 0)     /* implicitly, the requests before it */
        rnic_dp_ack_through(dev, qp, dp_psn_add(w->first_psn, -1));
    if (psn != qp->una) {
        /* a response was lost: ask again from una. Every READ request's stream ends in one
         * LAST/ONLY, so a LAST after a gap ends a lossy round: go back even if this una was
         * gone back to already. */
        if (rnic_dp_go_back(dev, qp, qp->una, last))
            qp->out_of_seq_response++;
        return 0;
    }
    k = (uint32_t)dp_psn_diff(psn, w->first_psn);
    off = (uint64_t)k * qp->mtu;
    if (w->length && n != (w->length - off < qp->mtu ? w->length - off : qp->mtu))
        return -EMSGSIZE;
    if (w->length)
        rnic_dp_swqe_place(w, off, data, n);
    qp->una = dp_psn_add(psn, 1);
    if (k == w->npkts - 1)
        w->status = 0;                              /* IBV_WC_SUCCESS */
    return 0;
}

int rnic_dp_atomic_ack(struct rnic_dp_dev *dev, struct rnic_dp_qp *qp, uint32_t psn,
                       uint64_t orig)
{
    struct rnic_dp_swqe *w = dp_wqe_at(qp, psn);

    if (!w || (w->opcode != WR_CAS && w->opcode != WR_FAA) || w->status >= 0)
        return -ENOENT;
    if (dp_psn_diff(w->first_psn, qp->una) > 0)     /* implicitly, the requests before it */
        rnic_dp_ack_through(dev, qp, dp_psn_add(w->first_psn, -1));
    if (psn != qp->una)
        return -ENOENT;         /* an earlier READ is asked again first */
    rnic_dp_swqe_place(w, 0, (const uint8_t *)&orig, sizeof(orig));    /* host order */
    w->status = 0;                                  /* IBV_WC_SUCCESS */
    qp->una = dp_psn_add(psn, 1);
    return 0;
}

/* cut: halve the window, once per window (a loss). The probe does not: it fires when an ACK
 * is late as often as when one was lost (on 2 busy CPUs, a scheduling delay of a few ms),
 * and halving on each late ACK kept a 64 B WRITE stream at a few packets in flight. */
static int go_back(struct rnic_dp_dev *dev, struct rnic_dp_qp *qp, uint32_t psn, int force,
                   int cut)
{
    double hold;

    if (!force && qp->rewound && dev->now < qp->rewind_holdoff)
        return 0;
    qp->rewound = 1;                                /* rnic_dp_progress clears it */
    /* what the old round still provokes arrives within about a round trip */
    hold = qp->timeout_s > 0 ? qp->timeout_s / 4 : 0.001;
    if (qp->srtt > 0 && 2 * qp->srtt < hold)
        hold = 2 * qp->srtt;
    qp->rewind_holdoff = dev->now + hold;
    if (dp_psn_diff(psn, qp->send_psn) < 0)
        qp->send_psn = psn;
    /* go-back-N resends a whole window per loss: a lossy path wants a smaller one. Once per
     * window (RFC 6582's recovery point): losses among the PSNs sent before the last cut
     * are the same congestion event. */
    if (cut && (!qp->cut_valid || dp_psn_diff(psn, qp->cut_psn) >= 0)) {
        qp->cwnd = qp->cwnd / 2 < RNIC_DP_MIN_WINDOW ? RNIC_DP_MIN_WINDOW : qp->cwnd / 2;
        qp->cut_psn = qp->high_psn;
        qp->cut_valid = 1;
    }
    if (qp->probe_stage == RNIC_DP_PROBE_ONE)
        qp->probe_stage = RNIC_DP_PROBE_SENT;       /* the round resends una's packet */
    qp->retrans_at = qp->probe_at = 0;
    qp->rtt_timing = 0;                             /* Karn: resent PSNs time nothing */
    return 1;
}

int rnic_dp_go_back(struct rnic_dp_dev *dev, struct rnic_dp_qp *qp, uint32_t psn, int force)
{
    return go_back(dev, qp, psn, force, 1);
}

void rnic_dp_ack_through(struct rnic_dp_dev *dev, struct rnic_dp_qp *qp, uint32_t psn)
{
    if (rnic_dp_ack(dev, qp, psn) >= 0 && rnic_dp_go_back(dev, qp, qp->una, 0))
        qp->implied_nak_seq_err++;                  /* re-issue the READ/atomic at una */
}

void rnic_dp_nak_seq(struct rnic_dp_dev *dev, struct rnic_dp_qp *qp, uint32_t psn)
{
    qp->rcvd_seq_err++;
    rnic_dp_ack_through(dev, qp, dp_psn_add(psn, -1));
    if (qp->una != psn)
        return;             /* an earlier READ/atomic is re-issued: that round comes first */
    /* the responder NAKs once a gap, and again only when a new round lost psn too
     * (rnic_dp_psn_check): always go back */
    if (rnic_dp_go_back(dev, qp, psn, 1))
        qp->nak_seq_retries++;
}

int rnic_dp_timer(struct rnic_dp_dev *dev, struct rnic_dp_qp *qp)
{
    if (qp->retrans_at <= 0)
        return RNIC_DP_TIMER_IDLE;
    if (dev->now < qp->retrans_at) {
        double ack_timeout = qp->retrans_at;

        struct rnic_dp_swqe *head;

        if (qp->probe_at <= 0 || dev->now < qp->probe_at || qp->una == qp->send_psn)
            return RNIC_DP_TIMER_IDLE;
        head = dp_wqe_at(qp, qp->una);
        if (head && !sends_data(head->opcode) && qp->una != head->first_psn) {
            /* a READ's responses come at the responder's pace once they have begun, and
             * going back would make it start over: only the ACK timeout decides there */
            qp->probe_at = 0;
            return RNIC_DP_TIMER_IDLE;
        }
        qp->early_retransmits++;
        if (head && sends_data(head->opcode))
            qp->probe_stage = RNIC_DP_PROBE_ONE;
        else
            go_back(dev, qp, qp->una, 1, 0);
        qp->retrans_at = ack_timeout;               /* it runs on: retries count there */
        qp->probe_s *= 2;                           /* and the probe backs off */
        qp->probe_at = dev->now + qp->probe_s;
        return RNIC_DP_TIMER_RETRY;
    }
    qp->retrans_at = 0;
    if (qp->una == qp->send_psn)
        return RNIC_DP_TIMER_IDLE;                  /* nothing outstanding */
    if (qp->retry_left == 0)
        return RNIC_DP_TIMER_EXCEEDED;
    qp->retry_left--;
    qp->timeout_retries++;
    rnic_dp_go_back(dev, qp, qp->una, 1);
    return RNIC_DP_TIMER_RETRY;
}

int rnic_dp_tx_push(struct rnic_dp_dev *dev, const uint8_t *data, uint32_t len,
                    uint32_t dst_ip_be)
{
    if (len > dev->tx_buf_size)
        return -EMSGSIZE;
    if (dev->ntx >= dev->tx_cap)
        return -ENOSPC;
    memcpy(dev->tx_bufs + (size_t)dev->ntx * dev->tx_buf_size, data, len);
    dev->tx_lens[dev->ntx] = len;
    dev->tx_addrs_be[dev->ntx] = dst_ip_be;
    dev->ntx++;
    return 0;
}

/* Queue the QP's next datagram (the caller checked for room): the headers of h, n payload
 * bytes gathered from offset off of the pieces, pad (9.3.1), ICRC (A17.3.3). */
static void tx_packet_to(struct rnic_dp_dev *dev, struct rnic_dp_qp *qp, struct rnic_hdr *h,
                         uint32_t dest_qpn, uint32_t ip_be, const struct rnic_dp_piece *pieces,
                         uint32_t npieces, uint64_t off, uint32_t n)
{
    uint32_t slot = dev->ntx++, len;
    uint8_t *out = dev->tx_bufs + (size_t)slot * dev->tx_buf_size;

    h->dest_qp = dest_qpn;
    h->pad = (uint8_t)((4 - n % 4) % 4);
    len = rnic_hdr_build(out, h);
    dp_pieces_copy(pieces, npieces, off, out + len, n, 0);
    len += n;
    memset(out + len, 0, h->pad);
    len += h->pad;
    rnic_roce_icrc_put(out + len, rnic_roce_icrc_v4(out, len, dev->ip_be, ip_be, dev->port,
                                                   ROCE_PORT));
    dev->tx_lens[slot] = len + RNIC_ICRC_LEN;
    dev->tx_addrs_be[slot] = ip_be;
    qp->sent_pkts++;
}

/* To the QP's peer (a connected QP). */
static void tx_packet(struct rnic_dp_dev *dev, struct rnic_dp_qp *qp, struct rnic_hdr *h,
                      const struct rnic_dp_piece *pieces, uint32_t npieces, uint64_t off,
                      uint32_t n)
{
    tx_packet_to(dev, qp, h, qp->dest_qpn, qp->peer_ip_be, pieces, npieces, off, n);
}

/* Queue packet k of SEND/WRITE WQE w at psn. IBTA 9.7.7: FIRST/MIDDLE carry one MTU,
 * LAST/ONLY the rest; RETH on the first packet of a WRITE, ImmDt on the last one of a
 * *_WITH_IMM, IETH on the last of a SEND_WITH_INV (9.3.9). */
static void build(struct rnic_dp_dev *dev, struct rnic_dp_qp *qp, const struct rnic_dp_swqe *w,
                  uint32_t k, uint32_t psn, int ackreq)
{
    uint64_t off = (uint64_t)k * qp->mtu;
    uint32_t n = w->length - off < qp->mtu ? (uint32_t)(w->length - off) : qp->mtu;
    int first = k == 0, last = k == w->npkts - 1;
    int write = w->opcode == WR_WRITE || w->opcode == WR_WRITE_IMM;
    int imm = w->opcode == WR_WRITE_IMM || w->opcode == WR_SEND_IMM;
    int32_t in_flight = dp_psn_diff(psn, qp->una) + 1;
    uint8_t op = data_ops[write][first && last ? 3 : first ? 0 : last ? 2 : 1][imm];
    struct rnic_hdr h;

    if (last && w->opcode == WR_SEND_INV)
        op = first ? RNIC_OP_SEND_ONLY_WITH_INVALIDATE : RNIC_OP_SEND_LAST_WITH_INVALIDATE;
    memset(&h, 0, sizeof(h));
    h.opcode = (uint8_t)(opbase(qp) | op);
    /* SE (9.3.1): the last packet of a solicited SEND or RDMA WRITE with immediate */
    h.se = last && (!write || imm) && (w->flags & SF_SOLICITED);
    /* AckReq: UC has no acknowledgements (IBTA 9.8) */
    h.ackreq = !qp->unreliable && (ackreq || last
                                   || k % RNIC_DP_ACKREQ_EVERY == RNIC_DP_ACKREQ_EVERY - 1
                                   || in_flight >= qp->cwnd / 2);
    h.psn = psn;
    h.xrc_srqn = w->xrc_srqn;
    h.va = w->remote_addr;
    h.rkey = w->rkey;
    h.dma_len = w->length;
    h.imm = w->imm;                                 /* ImmDt, or the IETH's R_Key */
    if (qp->ud) {                                   /* DETH (9.3.3), to the WQE's address */
        h.qkey = w->qkey;
        h.src_qp = qp->qpn;
        tx_packet_to(dev, qp, &h, w->dest_qpn, w->dest_ip_be, w->pieces, w->npieces, off, n);
        return;
    }
    tx_packet(dev, qp, &h, w->pieces, w->npieces, off, n);
}

/* An unfinished READ or atomic is in flight (a fenced WQE must wait for it, 10.8.3.3). */
static uint32_t rd_atomic_count(const struct rnic_dp_qp *qp)
{
    uint32_t n = 0;

    for (uint32_t i = qp->sq_head; i != qp->sq_next; i++) {
        const struct rnic_dp_swqe *w = &qp->swqes[i & qp->swqe_mask];

        n += w->status < 0 && !sends_data(w->opcode) && !local_op(w->opcode);
    }
    return n;
}

static int rd_atomic_in_flight(const struct rnic_dp_qp *qp) { return rd_atomic_count(qp) > 0; }

int32_t rnic_psn_diff(uint32_t a, uint32_t b) { return dp_psn_diff(a, b); }

int rnic_dp_sq_pending(const struct rnic_dp_qp *qp)
{
    uint32_t posted = rnic_load_acquire(&qp->sq->prod) - qp->sq_head;

    if (posted > qp->swqe_mask + 1 || posted < qp->sq_next - qp->sq_head)
        return -EPROTO;
    return (int)(posted - (qp->sq_next - qp->sq_head));
}

/* enum ibv_wc_opcode of each IBV_WR_* up to SEND_WITH_INV */
static const uint8_t wc_opcode_of[WR_SEND_INV + 1] = { 1, 1, 0, 0, 2, 3, 4, 6, 5, 0 };

void rnic_dp_swqe_load(struct rnic_dp_dev *dev, struct rnic_dp_qp *qp,
                       struct rnic_send_wqe *hdr)
{
    uint32_t slot = qp->sq_next & qp->swqe_mask;
    const uint8_t *entry = qp->sq_entries + (size_t)slot * qp->sq_entry_size;
    const struct rnic_sge *ring_sg = (const struct rnic_sge *)(entry + RNIC_SEND_WQE_HDR_SIZE);
    struct rnic_dp_swqe *d = &qp->swqes[slot];
    struct rnic_dp_piece *pieces = qp->sq_pieces + (size_t)slot * qp->sq_piece_stride;
    struct rnic_send_wqe w;
    uint32_t op, n = 0;
    uint64_t length = 0;

    dp_copy_shared(&w, entry, RNIC_SEND_WQE_HDR_SIZE);   /* the only read of the header */
    if (hdr)
        *hdr = w;
    op = w.opcode;
    d->wr_id = w.wr_id;
    d->remote_addr = w.remote_addr;
    d->idx = qp->sq_next;
    d->opcode = op;
    d->flags = w.send_flags;
    d->imm = w.imm_data;
    d->rkey = w.rkey;
    d->length = 0;
    d->npkts = 1;
    d->status = -1;
    d->wc_opcode = op <= WR_SEND_INV ? wc_opcode_of[op] : 0;
    d->npieces = 0;
    d->pieces = pieces;
    d->xrc_srqn = qp->xrc ? w.remote_srqn & 0xffffff : 0;
    d->compare_add = w.compare_add;
    d->swap = w.swap;
    /* an opcode the QP's transport does not carry (UC 9.8, UD 9.8.3: SENDs only) */
    if (op > WR_SEND_INV || (qp->unreliable && !uc_op(op))
        || (qp->ud && op != WR_SEND && op != WR_SEND_IMM)) {
        d->status = WC_LOC_QP_OP_ERR;
        return;
    }
    if (local_op(op)) {                             /* no data, no PSN */
        d->npkts = 0;
        if (w.num_sge || (w.send_flags & SF_INLINE))
            d->status = WC_LOC_QP_OP_ERR;
        return;
    }
    if (w.send_flags & SF_INLINE) {                 /* data in the slot, stable until retired */
        if (!sends_data(op) || w.inline_len > qp->max_inline
            || w.inline_len > qp->sq_entry_size - RNIC_SEND_WQE_HDR_SIZE) {
            d->status = WC_LOC_LEN_ERR;
            return;
        }
        if (w.inline_len) {
            pieces[0].ptr = (uint8_t *)ring_sg;
            pieces[0].len = w.inline_len;
            n = 1;
        }
        length = w.inline_len;
    } else {
        /* READ and atomic results are written locally: LOCAL_WRITE (IBTA 10.6.3.1) */
        uint32_t need = sends_data(op) ? 0 : RNIC_DP_ACC_LOCAL_WRITE;

        if (w.num_sge > qp->max_send_sge
            || w.num_sge > (qp->sq_entry_size - RNIC_SEND_WQE_HDR_SIZE) / sizeof(*ring_sg)) {
            d->status = WC_LOC_LEN_ERR;
            return;
        }
        for (uint32_t i = 0; i < w.num_sge; i++) {
            struct rnic_sge sg;
            uint8_t *p;

            dp_copy_shared(&sg, &ring_sg[i], sizeof(sg));
            /* IBTA 10.6.3.2: an lkey of the QP's PD covering the range */
            if (rnic_dp_mr_check(dev, qp, qp->pd, sg.lkey, sg.addr, sg.length, need, &p) < 0) {
                d->status = WC_LOC_PROT_ERR;
                return;
            }
            if (sg.length == 0)
                continue;
            pieces[n].ptr = p;
            pieces[n].len = sg.length;
            n++;
            length += sg.length;
        }
        if (length > RNIC_DP_MAX_MSG || ((op == WR_CAS || op == WR_FAA) && length != 8)) {
            d->status = WC_LOC_LEN_ERR;
            return;
        }
    }
    if (qp->ud && length > qp->mtu) {         /* a UD message is one packet */
        d->status = WC_LOC_LEN_ERR;
        return;
    }
    if (qp->ud) {                   /* IBTA 11.4.1.1: through an AH of the QP's PD */
        const struct rnic_dp_ah *a = w.ah < dev->ahs_len ? dev->ahs[w.ah] : NULL;

        if (!a || a->pd != qp->pd) {
            d->status = WC_LOC_QP_OP_ERR;
            return;
        }
        d->dest_qpn = w.remote_qpn & 0xffffff;
        d->dest_ip_be = a->ip_be;
        /* a Q_Key with the high bit set asks for the QP's own (10.2.5) */
        d->qkey = w.remote_qkey & 0x80000000u ? qp->qkey : w.remote_qkey;
    }
    d->length = (uint32_t)length;
    d->npieces = n;
    if ((sends_data(op) || op == WR_READ) && length)
        d->npkts = (uint32_t)((length + qp->mtu - 1) / qp->mtu);
}

int rnic_dp_swqe_commit(struct rnic_dp_qp *qp)
{
    struct rnic_dp_swqe *d = &qp->swqes[qp->sq_next & qp->swqe_mask];

    if (d->status < 0) {
        /* in flight from una to the WQE's last PSN: less than 2^23 (IBTA 9.7.1) */
        if ((uint64_t)((qp->next_psn - qp->una) & 0xffffff) + d->npkts > 0x800000)
            return -EAGAIN;
        d->first_psn = qp->next_psn;
        qp->next_psn = dp_psn_add(qp->next_psn, (int32_t)d->npkts);
    }
    qp->sq_next++;
    return 0;
}

int rnic_dp_fetch(struct rnic_dp_dev *dev, struct rnic_dp_qp *qp)
{
    int pending = rnic_dp_sq_pending(qp), fetched = 0;
    uint32_t max_rd = qp->max_rd_atomic ? qp->max_rd_atomic : 1;

    while (fetched < pending && dp_psn_diff(qp->next_psn, qp->send_psn) < qp->cwnd) {
        const struct rnic_dp_swqe *d = &qp->swqes[qp->sq_next & qp->swqe_mask];
        int rd_atomic;

        rnic_dp_swqe_load(dev, qp, NULL);
        rd_atomic = !sends_data(d->opcode) && !local_op(d->opcode);
        if (d->status < 0 && (((d->flags & SF_FENCE) && rd_atomic_in_flight(qp))
                              || (rd_atomic && rd_atomic_count(qp) >= max_rd)))
            return fetched ? fetched : -EAGAIN;     /* a response lets it go (10.8.3.3) */
        if (d->status >= 0 || local_op(d->opcode))
            return fetched ? fetched : -1;          /* core/'s: it loads the WQE again */
        if (rnic_dp_swqe_commit(qp) < 0)
            return fetched ? fetched : -EAGAIN;     /* its PSNs wait for ACKs */
        fetched++;
    }
    return pending < 0 ? -1 : fetched;              /* a corrupt index: core/ fails the QP */
}

/* Queue the request of READ or atomic WQE w at psn; returns the PSN after it. A READ goes
 * out as requests of RNIC_DP_READ_CHUNK response packets; a re-issued one asks only for the
 * rest of its original request (the responder may never have seen the next one, and must
 * not answer PSNs beyond its ePSN as a duplicate: 9.7.4.1.4). */
static uint32_t build_rd_atomic(struct rnic_dp_dev *dev, struct rnic_dp_qp *qp,
                                const struct rnic_dp_swqe *w, uint32_t psn)
{
    struct rnic_hdr h;
    uint32_t npkts = 1;

    memset(&h, 0, sizeof(h));
    h.psn = psn;
    h.ackreq = 1;
    h.xrc_srqn = w->xrc_srqn;
    h.rkey = w->rkey;
    if (w->opcode == WR_READ) {
        uint32_t k = (uint32_t)dp_psn_diff(psn, w->first_psn);
        uint64_t off = (uint64_t)k * qp->mtu, n = w->length - off,
                 chunk = (uint64_t)(RNIC_DP_READ_CHUNK - k % RNIC_DP_READ_CHUNK) * qp->mtu;

        n = n < chunk ? n : chunk;
        h.opcode = (uint8_t)(opbase(qp) | RNIC_OP_RDMA_READ_REQUEST);
        h.va = w->remote_addr + off;
        h.dma_len = (uint32_t)n;
        npkts = n ? (uint32_t)((n + qp->mtu - 1) / qp->mtu) : 1;
    } else {                                        /* 9.4.5: AtomicETH */
        h.opcode = (uint8_t)(opbase(qp) | (w->opcode == WR_CAS ? RNIC_OP_COMPARE_SWAP
                                                                : RNIC_OP_FETCH_ADD));
        h.va = w->remote_addr;
        h.swap_add = w->opcode == WR_CAS ? w->swap : w->compare_add;
        h.compare = w->compare_add;
    }
    tx_packet(dev, qp, &h, NULL, 0, 0, 0);
    return dp_psn_add(psn, (int32_t)npkts);
}

/* The probe's one packet (rnic_dp_timer): una's, again, asking for an ACK. */
static int probe_one(struct rnic_dp_dev *dev, struct rnic_dp_qp *qp)
{
    struct rnic_dp_swqe *w = dp_wqe_at(qp, qp->una);

    if (dev->ntx >= dev->tx_cap)
        return RNIC_DP_PUMP_TX_FULL;
    qp->probe_stage = RNIC_DP_PROBE_SENT;
    if (w && sends_data(w->opcode) && qp->una != qp->send_psn) {
        build(dev, qp, w, (uint32_t)dp_psn_diff(qp->una, w->first_psn), qp->una, 1);
        rnic_dp_sent(dev, qp, qp->una, dp_psn_add(qp->una, 1));
    }
    return RNIC_DP_PUMP_IDLE;
}

static int pump(struct rnic_dp_dev *dev, struct rnic_dp_qp *qp)
{
    if (dp_psn_diff(qp->send_psn, qp->una) < 0)
        qp->send_psn = qp->una;                     /* an ACK of an old round overtook */
    if (qp->probe_stage == RNIC_DP_PROBE_ONE && probe_one(dev, qp) != RNIC_DP_PUMP_IDLE)
        return RNIC_DP_PUMP_TX_FULL;
    while (dp_psn_diff(qp->send_psn, qp->una) < qp->cwnd) {
        struct rnic_dp_swqe *w;
        uint32_t psn = qp->send_psn;

        if (psn == qp->next_psn) {
            int n = rnic_dp_fetch(dev, qp);

            if (n == -EAGAIN)
                return RNIC_DP_PUMP_IDLE;           /* a response or ACK pumps again */
            if (n <= 0)
                return RNIC_DP_PUMP_FETCH;          /* empty, or the next WQE is core/'s */
        }
        w = dp_wqe_at(qp, psn);
        if (!w || local_op(w->opcode))
            return RNIC_DP_PUMP_SLOW;
        if (dev->ntx >= dev->tx_cap)
            return RNIC_DP_PUMP_TX_FULL;
        if (!sends_data(w->opcode)) {               /* READ, atomic: one request */
            qp->send_psn = build_rd_atomic(dev, qp, w, psn);
            rnic_dp_sent(dev, qp, psn, qp->send_psn);
            continue;
        }
        build(dev, qp, w, (uint32_t)dp_psn_diff(psn, w->first_psn), psn, 0);
        qp->send_psn = dp_psn_add(psn, 1);
        if (qp->unreliable) {
            /* UC: nothing is acknowledged or resent; the WQE is done once its last
             * packet is sent (IBTA 9.8) */
            qp->una = qp->high_psn = qp->send_psn;
            if (qp->send_psn == dp_psn_add(w->first_psn, (int32_t)w->npkts))
                w->status = 0;                      /* IBV_WC_SUCCESS */
        } else {
            rnic_dp_sent(dev, qp, psn, qp->send_psn);
        }
    }
    return RNIC_DP_PUMP_IDLE;
}

int rnic_dp_pump(struct rnic_dp_dev *dev, struct rnic_dp_qp *qp)
{
    int rc, opened;

    if (!qp->send_ok || qp->rnr_wait)
        return RNIC_DP_PUMP_IDLE;
    opened = dp_txn_open(qp);       /* WQEs fetched and PSNs given out: all, or none */
    rc = pump(dev, qp);
    if (qp->unreliable)
        rnic_dp_retire(dev, qp);                    /* what was sent is complete */
    dp_txn_close(dev, qp, opened);
    return rc;
}

/* An ACKNOWLEDGE or ATOMIC ACKNOWLEDGE (9.7.5.2, 9.3.7) of the QP's transport for psn: AETH
 * with syndrome and the QP's MSN, and for the second the original remote value. */
static int send_ack(struct rnic_dp_dev *dev, struct rnic_dp_qp *qp, uint8_t op,
                    uint32_t syndrome, uint32_t psn, uint64_t orig)
{
    struct rnic_hdr h;

    if (dev->ntx >= dev->tx_cap)
        return -ENOSPC;
    memset(&h, 0, sizeof(h));
    h.opcode = (uint8_t)(opbase(qp) | op);          /* RC or XRC */
    h.psn = psn & 0xffffff;
    h.syndrome = (uint8_t)syndrome;
    h.msn = qp->msn;
    h.orig = orig;
    tx_packet(dev, qp, &h, NULL, 0, 0, 0);
    return 0;
}

int rnic_dp_send_aeth(struct rnic_dp_dev *dev, struct rnic_dp_qp *qp, uint32_t syndrome,
                      uint32_t psn)
{
    return send_ack(dev, qp, RNIC_OP_ACKNOWLEDGE, syndrome, psn, 0);
}

int rnic_dp_send_atomic_ack(struct rnic_dp_dev *dev, struct rnic_dp_qp *qp, uint32_t psn,
                            uint64_t orig)
{
    return send_ack(dev, qp, RNIC_OP_ATOMIC_ACKNOWLEDGE, RNIC_AETH_ACK, psn, orig);
}

uint32_t rnic_dp_flush_acks(struct rnic_dp_dev *dev)
{
    uint32_t sent = 0;

    for (uint32_t i = 0; i < dev->nacks; i++) {
        uint32_t qpn = dev->acks[i];
        struct rnic_dp_qp *qp = qpn < dev->qps_len ? dev->qps[qpn] : NULL;

        /* a READ still being answered goes first: core/ sends the ACK after it */
        if (!qp || qp->qpn != qpn || !qp->ack_pending || qp->rd_npkts)
            continue;
        if (rnic_dp_send_aeth(dev, qp, RNIC_AETH_ACK, (qp->epsn - 1) & 0xffffff) < 0)
            break;
        qp->ack_pending = 0;
        sent++;
    }
    dev->nacks = 0;
    return sent;
}

int rnic_dp_read_begin(struct rnic_dp_qp *qp, uint32_t psn, const uint8_t *src, uint64_t len)
{
    if (len > RNIC_DP_MAX_MSG)
        return -EMSGSIZE;
    if (qp->rd_npkts)
        return -EBUSY;
    qp->rd_src = src;
    qp->rd_len = (uint32_t)len;
    qp->rd_psn = psn;
    qp->rd_msn = qp->msn;
    qp->rd_next = 0;
    qp->rd_npkts = len ? (uint32_t)((len + qp->mtu - 1) / qp->mtu) : 1;
    return (int)qp->rd_npkts;
}

uint32_t rnic_dp_read_continue(struct rnic_dp_dev *dev, struct rnic_dp_qp *qp)
{
    uint32_t mtu = qp->mtu, n = qp->rd_npkts;

    while (qp->rd_next < n && dev->ntx < dev->tx_cap) {
        uint32_t k = qp->rd_next++;
        uint64_t off = (uint64_t)k * mtu;
        uint32_t plen = qp->rd_len - off < mtu ? (uint32_t)(qp->rd_len - off) : mtu;
        struct rnic_dp_piece src = { (uint8_t *)qp->rd_src, qp->rd_len };
        struct rnic_hdr h;

        memset(&h, 0, sizeof(h));
        /* 9.7.5.1.3: FIRST, MIDDLE..., LAST or ONLY; AETH (ACK) on all but MIDDLE */
        h.opcode = (uint8_t)(opbase(qp) | (n == 1 ? RNIC_OP_RDMA_READ_RESPONSE_ONLY
                                           : k == 0 ? RNIC_OP_RDMA_READ_RESPONSE_FIRST
                                           : k == n - 1 ? RNIC_OP_RDMA_READ_RESPONSE_LAST
                                           : RNIC_OP_RDMA_READ_RESPONSE_MIDDLE));
        h.psn = dp_psn_add(qp->rd_psn, (int32_t)k);
        h.syndrome = RNIC_AETH_ACK;
        h.msn = qp->rd_msn;
        tx_packet(dev, qp, &h, &src, 1, off, plen);
    }
    if (qp->rd_next < n)
        return n - qp->rd_next;
    qp->rd_npkts = qp->rd_next = 0;
    qp->rd_src = NULL;
    return 0;
}

int rnic_dp_swqe_place(struct rnic_dp_swqe *w, uint64_t off, const uint8_t *data, uint32_t n)
{
    return dp_pieces_copy(w->pieces, w->npieces, off, (uint8_t *)data, n, 1) ? -EMSGSIZE : 0;
}
