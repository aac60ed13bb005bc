/*
 * rx.c — the responder's fast path: in-order RDMA WRITE packets of an RC connection are
 * checked and placed here, with no Python per packet. Anything else — another opcode, a
 * PSN out of sequence, a bad key, a malformed or corrupted packet — is left untouched for
 * core/roce/responder.py, which shares the QP's state (struct rnic_dp_qp) and knows how to
 * NAK, drop and count it. So every check here only decides "mine or not": errors are
 * never reported from C.
 *
 * Order of checks as IBTA 9.7.3 lists them: transport header (BTH, ICRC), QP and source,
 * PSN (== ePSN), opcode sequence, resources, length, key (check.c holds the shared ones).
 */
#include <errno.h>
#include <stdint.h>
#include <string.h>

#include "dp_util.h"
#include "rnic_dp.h"

enum { RX_WR_RDMA_READ = 4, RX_WC_RECV = 128, RX_WC_WITH_IMM = 2, RX_WC_GRH = 1 };
                                                                /* IBV_WR_*, IBV_WC_* */

/* the transport bits of the QP's packets (IBTA 9.2: RC 000, UC 001; A14.4.1: XRC 101) */
static inline uint32_t qp_transport(const struct rnic_dp_qp *qp)
{
    return qp->xrc ? RNIC_OPT_XRC : qp->unreliable ? RNIC_OPT_UC : RNIC_OPT_RC;
}

static inline uint32_t bth_pad(const uint8_t *pkt) { return (pkt[1] >> RNIC_BTH_PAD_SHIFT) & 3; }

static int icrc_ok(const struct rnic_dp_dev *dev, const uint8_t *pkt, uint32_t len,
                   uint32_t src_ip_be, uint16_t sport)
{
    return rnic_roce_icrc_check_v4(pkt, len, src_ip_be, dev->ip_be, sport, dev->port,
                                   dev->rx_ip_id);
}

/* What follows a response the completer took (9.7.5.1): window and timers, the WQEs it
 * finished into the CQ, more requests (or core/'s part of them). */
static int responded(struct rnic_dp_dev *dev, struct rnic_dp_qp *qp, uint32_t old_una)
{
    rnic_dp_progress(dev, qp, old_una);
    rnic_dp_retire(dev, qp);
    if (rnic_dp_pump(dev, qp) != RNIC_DP_PUMP_IDLE && dev->npumps < dev->pumps_cap)
        dev->pumps[dev->npumps++] = qp->qpn;
    qp->fast_pkts++;
    return 1;
}

/* The completer's PSN check on a response that passed its other checks: 1 to go on, 0 for
 * core/ (beyond what was sent); a stale one is counted and dropped here (-1). */
static int response_in_flight(struct rnic_dp_qp *qp, uint32_t psn)
{
    int rc = rnic_dp_resp_psn_check(qp, psn);

    if (rc == RNIC_DP_RESP_STALE) {
        qp->fast_pkts++;
        return -1;
    }
    return rc == 0;
}

/* An in-order RDMA READ request (9.7.4.1.5): start answering it from the region; what the
 * transmit buffer cannot take now core/ produces as it drains (dev->pumps). Duplicates (they
 * are re-executed), zero-length, oversized and bad ones are core/'s, and so is any READ
 * while another one is being answered (responses go out in PSN order). */
static int rx_read_request(struct rnic_dp_dev *dev, struct rnic_dp_qp *qp, const uint8_t *pkt,
                           uint32_t len, uint32_t psn, uint32_t src_ip_be, uint16_t sport)
{
    const uint8_t *reth = pkt + RNIC_BTH_LEN;
    uint32_t dlen;
    uint8_t *src;
    int n;

    if (len != (uint32_t)(RNIC_BTH_LEN + rnic_op_table[pkt[0]].hdr_len + RNIC_ICRC_LEN)
        || bth_pad(pkt) || rnic_dp_seq_check(qp, pkt[0]) < 0 || qp->rd_npkts
        || !icrc_ok(dev, pkt, len, src_ip_be, sport))
        return 0;
    dlen = dp_be32(reth + 12);
    if (dlen == 0 || dlen > RNIC_DP_MAX_MSG
        || rnic_dp_mr_check(dev, qp, qp->pd, dp_be32(reth + 8), dp_be64(reth), dlen,
                            RNIC_DP_ACC_REMOTE_READ, &src) < 0)
        return 0;
    if ((n = rnic_dp_read_begin(qp, psn, src, dlen)) < 0)
        return 0;
    qp->epsn = (psn + (uint32_t)n) & 0xffffff;
    qp->msn = (qp->msn + 1) & 0xffffff;
    qp->nak_sent = 0;
    qp->fast_pkts++;
    if (rnic_dp_read_continue(dev, qp) && dev->npumps < dev->pumps_cap)
        dev->pumps[dev->npumps++] = qp->qpn;
    return 1;
}

/* An RDMA READ response (9.7.5.1.3): rnic_dp_read_resp decides; stale ones are counted and
 * dropped; impossible, unmatched or wrong-length ones are core/'s. */
static int rx_read_response(struct rnic_dp_dev *dev, struct rnic_dp_qp *qp, const uint8_t *pkt,
                            uint32_t len, uint32_t psn, uint32_t src_ip_be, uint16_t sport)
{
    const struct rnic_opinfo *oi = &rnic_op_table[pkt[0]];
    uint32_t hdr = RNIC_BTH_LEN + oi->hdr_len, pad = bth_pad(pkt), old = qp->una;
    int rc;

    if (!qp->send_ok || len < hdr + RNIC_ICRC_LEN + pad)
        return 0;
    if ((oi->hdrs & RNIC_HDR_AETH) && (pkt[RNIC_BTH_LEN] >> RNIC_AETH_KIND_SHIFT) != 0)
        return 0;                                   /* only a positive AETH */
    if (!icrc_ok(dev, pkt, len, src_ip_be, sport) || (rc = response_in_flight(qp, psn)) == 0)
        return 0;
    if (rc < 0)
        return 1;
    if (rnic_dp_read_resp(dev, qp, psn, (oi->flags & RNIC_OPF_LAST) != 0, pkt + hdr,
                          len - hdr - RNIC_ICRC_LEN - pad) < 0)
        return 0;
    return responded(dev, qp, old);
}

/* An in-order atomic request (9.4.5, 9.7.5.1): executed, its ATOMIC ACKNOWLEDGE queued.
 * One that fails a check, or arrives while responses wait behind a READ, is core/'s (it NAKs
 * or queues with the same C functions). */
static int rx_atomic(struct rnic_dp_dev *dev, struct rnic_dp_qp *qp, const uint8_t *pkt,
                     uint32_t len, uint32_t psn, uint32_t src_ip_be, uint16_t sport)
{
    const uint8_t *eth = pkt + RNIC_BTH_LEN;
    uint64_t orig;

    if (len != RNIC_BTH_LEN + RNIC_ATOMICETH_LEN + RNIC_ICRC_LEN || bth_pad(pkt)
        || qp->rd_npkts || dev->ntx >= dev->tx_cap || rnic_dp_seq_check(qp, pkt[0]) < 0
        || rnic_dp_op_check(qp, pkt[0]) < 0 || !icrc_ok(dev, pkt, len, src_ip_be, sport))
        return 0;
    if (rnic_dp_atomic(dev, qp, psn, (pkt[0] & RNIC_OP_MASK) == RNIC_OP_COMPARE_SWAP,
                       dp_be64(eth), dp_be32(eth + 8), dp_be64(eth + 12), dp_be64(eth + 20),
                       &orig) < 0)
        return 0;
    qp->nak_sent = 0;
    rnic_dp_send_atomic_ack(dev, qp, psn, orig);
    qp->fast_pkts++;
    return 1;
}

/* An ATOMIC ACKNOWLEDGE for our atomic (9.7.5.1.3): rnic_dp_atomic_ack places the value. */
static int rx_atomic_ack(struct rnic_dp_dev *dev, struct rnic_dp_qp *qp, const uint8_t *pkt,
                         uint32_t len, uint32_t psn, uint32_t src_ip_be, uint16_t sport)
{
    uint32_t old = qp->una;
    int rc;

    if (len != RNIC_BTH_LEN + RNIC_AETH_LEN + RNIC_ATOMICACKETH_LEN + RNIC_ICRC_LEN
        || bth_pad(pkt) || !qp->send_ok || (pkt[RNIC_BTH_LEN] >> RNIC_AETH_KIND_SHIFT) != 0
        || !icrc_ok(dev, pkt, len, src_ip_be, sport) || (rc = response_in_flight(qp, psn)) == 0)
        return 0;
    if (rc < 0)
        return 1;
    if (rnic_dp_atomic_ack(dev, qp, psn, dp_be64(pkt + RNIC_BTH_LEN + RNIC_AETH_LEN)) < 0)
        return 0;
    return responded(dev, qp, old);
}

/* A positive ACK or a sequence NAK for our requests (9.7.5.1.2, 9.7.5.2.3): acknowledge,
 * go back N on a NAK or on a lost READ/atomic response, retire, send more. RNR and other
 * NAKs, and stale or impossible PSNs, are core/'s. */
static int rx_ack(struct rnic_dp_dev *dev, struct rnic_dp_qp *qp, const uint8_t *pkt,
                  uint32_t len, uint32_t psn, uint32_t src_ip_be, uint16_t sport)
{
    uint32_t old = qp->una, syndrome = pkt[RNIC_BTH_LEN];
    int rc;

    if (len != RNIC_BTH_LEN + RNIC_AETH_LEN + RNIC_ICRC_LEN || bth_pad(pkt) || !qp->send_ok
        || ((syndrome >> RNIC_AETH_KIND_SHIFT) != 0 && syndrome != RNIC_AETH_NAK_SEQ)
        || !icrc_ok(dev, pkt, len, src_ip_be, sport) || (rc = response_in_flight(qp, psn)) == 0)
        return 0;
    if (rc < 0)
        return 1;
    if (syndrome == RNIC_AETH_NAK_SEQ)
        rnic_dp_nak_seq(dev, qp, psn);
    else
        rnic_dp_ack_through(dev, qp, psn);
    return responded(dev, qp, old);
}

/* A datagram's lengths as 9.3.1 has them: payload and pad a multiple of 4, no payload where
 * the opcode carries none, pad only on the last packet of a message and within it. */
static int well_formed(const struct rnic_opinfo *oi, const uint8_t *pkt, uint32_t len)
{
    uint32_t hdr = RNIC_BTH_LEN + oi->hdr_len, body, pad = bth_pad(pkt);

    if (len < hdr + RNIC_ICRC_LEN)
        return 0;
    body = len - hdr - RNIC_ICRC_LEN;
    if (body & 3)
        return 0;
    if (!(oi->flags & RNIC_OPF_PAYLOAD))
        return body == 0 && pad == 0;
    return !pad || ((oi->flags & RNIC_OPF_LAST) && pad <= body);
}

/* An RC request at a PSN other than ePSN (9.7.5.1): the PSN check (rnic_dp_psn_check)
 * decides. Out of sequence: dropped, with a sequence NAK when one is due; a duplicate SEND or
 * WRITE: acknowledged again. Duplicate READs (re-executed) and atomics (replayed) are core/'s,
 * and so is everything while responses wait behind a READ (nothing may overtake them). */
static int rx_unexpected_psn(struct rnic_dp_dev *dev, struct rnic_dp_qp *qp, const uint8_t *pkt,
                             uint32_t len, const struct rnic_opinfo *oi, uint32_t psn,
                             uint32_t src_ip_be, uint16_t sport)
{
    uint64_t orig = 0;
    int dup = dp_psn_diff(psn, qp->epsn) < 0;

    if (qp->unreliable || qp->rd_npkts || qp->resp_queued || dev->ntx >= dev->tx_cap)
        return 0;
    /* a duplicate READ is re-executed by core/; an atomic is replayed, not executed again */
    if (dup && (oi->kind == RNIC_KIND_READ_REQ
                || (oi->kind == RNIC_KIND_ATOMIC && rnic_dp_atomic_replay(qp, psn, &orig) < 0)))
        return 0;
    if (!well_formed(oi, pkt, len) || !icrc_ok(dev, pkt, len, src_ip_be, sport))
        return 0;
    switch (rnic_dp_psn_check(qp, psn)) {
    case RNIC_DP_PSN_NAK:
        rnic_dp_send_aeth(dev, qp, RNIC_AETH_NAK_SEQ, qp->epsn);
        break;
    case RNIC_DP_PSN_DUP:
        if (oi->kind == RNIC_KIND_ATOMIC) {
            rnic_dp_send_atomic_ack(dev, qp, psn, orig);
            break;
        }
        if (!qp->ack_pending) {                     /* an ACK for epsn - 1 is owed */
            qp->ack_pending = 1;
            if (dev->nacks < dev->acks_len)
                dev->acks[dev->nacks++] = qp->qpn;
        }
        break;
    default:
        break;
    }
    qp->fast_pkts++;
    return 1;
}

int rnic_dp_recv_begin(struct rnic_dp_dev *dev, struct rnic_dp_qp *qp, uint64_t wr_id,
                       const struct rnic_sge *sg, uint32_t num_sge)
{
    uint32_t n = 0;

    if (num_sge > qp->recv_max_sge)
        return -EINVAL;
    for (uint32_t i = 0; i < num_sge; i++) {
        struct rnic_sge e;
        uint8_t *p;

        dp_copy_shared(&e, &sg[i], sizeof(e));     /* sg may be the client's ring */
        if (rnic_dp_mr_check(dev, qp, qp->pd, e.lkey, e.addr, e.length,
                             RNIC_DP_ACC_LOCAL_WRITE, &p) < 0)
            return -EACCES;
        if (e.length == 0)
            continue;
        qp->recv_pieces[n].ptr = p;
        qp->recv_pieces[n].len = e.length;
        n++;
    }
    qp->recv_wr_id = wr_id;
    qp->recv_off = 0;
    qp->recv_npieces = n;
    return 0;
}

int rnic_dp_recv_place(struct rnic_dp_qp *qp, const uint8_t *data, uint32_t n)
{
    uint32_t left = dp_pieces_copy(qp->recv_pieces, qp->recv_npieces, qp->recv_off,
                                   (uint8_t *)data, n, 1);

    qp->recv_off += n - left;
    return left ? -EMSGSIZE : 0;
}

/* Resolve the next receive WQE of the QP's own RQ without taking it; 0 if core/ must decide
 * (no RQ of ours, none posted -> RNR, a bad one -> LOC_PROT_ERR). */
static int peek_recv(struct rnic_dp_dev *dev, struct rnic_dp_qp *qp)
{
    const uint8_t *entry;
    struct rnic_recv_wqe w;
    uint32_t cons, prod;

    if (!qp->rq)
        return 0;
    cons = qp->rq->cons;                            /* only the daemon writes cons */
    prod = rnic_load_acquire(&qp->rq->prod);
    if (prod == cons || prod - cons > qp->rq_mask + 1)
        return 0;
    entry = qp->rq_entries + (size_t)(cons & qp->rq_mask) * qp->rq_entry_size;
    dp_copy_shared(&w, entry, RNIC_RECV_WQE_HDR_SIZE);  /* header read once; SGEs likewise */
    if (w.num_sge > (qp->rq_entry_size - RNIC_RECV_WQE_HDR_SIZE) / sizeof(struct rnic_sge))
        return 0;
    return rnic_dp_recv_begin(dev, qp, w.wr_id,
                              (const struct rnic_sge *)(entry + RNIC_RECV_WQE_HDR_SIZE),
                              w.num_sge) == 0;
}

static uint64_t recv_capacity(const struct rnic_dp_qp *qp)
{
    uint64_t total = 0;

    for (uint32_t i = 0; i < qp->recv_npieces; i++)
        total += qp->recv_pieces[i].len;
    return total;
}

/* The receive WQE being filled is complete: its CQE (recv_off bytes from src_qp; ImmDt in
 * the header before the payload when the opcode carries one), noted for the packet's commit. */
static void recv_done(struct rnic_dp_dev *dev, struct rnic_dp_qp *qp,
                      const struct rnic_opinfo *oi, const uint8_t *pkt, const uint8_t *payload,
                      uint32_t src_qp, uint32_t wc_flags)
{
    struct rnic_cqe c;

    memset(&c, 0, sizeof(c));
    c.wr_id = qp->recv_wr_id;
    c.opcode = RX_WC_RECV;
    c.byte_len = (uint32_t)qp->recv_off;
    c.qp_num = qp->qpn;
    c.src_qp = src_qp;
    c.wc_flags = wc_flags;
    if (oi->hdrs & RNIC_HDR_IMMDT) {
        c.imm_data = dp_be32(payload - RNIC_IMMDT_LEN);     /* the last header */
        c.wc_flags |= RX_WC_WITH_IMM;
    }
    dp_fx_cqe(dev, qp, qp->rcq, &c, (pkt[1] & RNIC_BTH_SE) != 0);
}

/* In-order SEND packets (IBTA 9.7.3, 9.7.7.1), sequence checked: into the receive WQE's
 * buffers, then a CQE. */
static int rx_send(struct rnic_dp_dev *dev, struct rnic_dp_qp *qp, const uint8_t *pkt,
                   const struct rnic_opinfo *oi, const uint8_t *payload, uint32_t plen)
{
    int first = (oi->flags & RNIC_OPF_FIRST) != 0, last = (oi->flags & RNIC_OPF_LAST) != 0;

    if (rnic_dp_len_check(qp, pkt[0], plen) < 0)
        return 0;
    if (first && qp->recv_held) {
        /* UC: the WQE of the SEND abandoned last is used again, from its start */
        if (plen > recv_capacity(qp))
            return 0;
        qp->recv_held = 0;
        qp->recv_off = 0;
        qp->msg = RNIC_DP_MSG_SEND;
    } else if (first) {
        /* take the WQE only once this packet fits: a SEND too long for it is core/'s to
         * complete with IBV_WC_LOC_LEN_ERR, from the WQE still in the ring */
        if (!peek_recv(dev, qp) || plen > recv_capacity(qp))
            return 0;
        dp_fx_rq_cons(qp, qp->rq->cons + 1);       /* published when the packet commits */
        qp->msg = RNIC_DP_MSG_SEND;
    }
    if (rnic_dp_recv_place(qp, payload, plen) < 0)
        return 0;       /* a later packet overflows: core/ completes the WQE in error */
    if (last) {
        qp->msg = RNIC_DP_MSG_NONE;
        qp->msn = (qp->msn + 1) & 0xffffff;
        recv_done(dev, qp, oi, pkt, payload, qp->dest_qpn, 0);
    }
    return 1;
}

void rnic_dp_ud_grh(uint8_t *grh, uint32_t src_ip_be, uint32_t dst_ip_be, uint32_t roce_len)
{
    uint8_t *ip = grh + 20;
    uint32_t total = 20 + 8 + roce_len;             /* IPv4 and UDP headers, then RoCE */

    memset(grh, 0, RNIC_UD_GRH_LEN);
    ip[0] = 0x45;                                   /* version 4, 5 words */
    ip[2] = (uint8_t)(total >> 8);
    ip[3] = (uint8_t)total;
    ip[6] = 0x40;                                   /* don't fragment */
    ip[8] = 64;                                     /* TTL */
    ip[9] = 17;                                     /* UDP */
    memcpy(ip + 12, &src_ip_be, 4);
    memcpy(ip + 16, &dst_ip_be, 4);
}

/* A UD datagram (IBTA 9.8.2, 11.4.1.1): a SEND ONLY (with immediate) whose Q_Key is the
 * QP's, into the next WQE of the QP's own RQ, GRH first, then a CQE naming the source QP.
 * No PSN, no ACK. Everything else — a bad Q_Key (core/ counts the drop), no WQE posted (a
 * drop: UD has no RNR), a WQE too small or bad (an error CQE), a malformed datagram — is
 * core/'s. */
static int rx_ud(struct rnic_dp_dev *dev, struct rnic_dp_qp *qp, const uint8_t *pkt,
                 uint32_t len, uint32_t src_ip_be, uint16_t sport)
{
    const struct rnic_opinfo *oi = &rnic_op_table[pkt[0]];
    uint32_t hdr = RNIC_BTH_LEN + oi->hdr_len, pad = bth_pad(pkt), plen;
    const uint8_t *deth = pkt + RNIC_BTH_LEN, *payload = pkt + hdr;
    uint8_t grh[RNIC_UD_GRH_LEN];

    if ((pkt[0] & RNIC_OPT_MASK) != RNIC_OPT_UD || !(oi->flags & RNIC_OPF_VALID)
        || oi->kind != RNIC_KIND_SEND || !(oi->hdrs & RNIC_HDR_DETH)
        || !well_formed(oi, pkt, len) || dp_be32(deth) != qp->qkey
        || !icrc_ok(dev, pkt, len, src_ip_be, sport))
        return 0;
    plen = len - hdr - RNIC_ICRC_LEN - pad;
    if (!peek_recv(dev, qp) || RNIC_UD_GRH_LEN + (uint64_t)plen > recv_capacity(qp))
        return 0;
    dp_fx_rq_cons(qp, qp->rq->cons + 1);           /* published when the packet commits */
    rnic_dp_ud_grh(grh, src_ip_be, dev->ip_be, len);
    rnic_dp_recv_place(qp, grh, RNIC_UD_GRH_LEN);
    rnic_dp_recv_place(qp, payload, plen);
    recv_done(dev, qp, oi, pkt, payload, dp_be24(deth + 5), RX_WC_GRH);
    qp->fast_pkts++;
    return 1;
}

static int rx_qp(struct rnic_dp_dev *dev, struct rnic_dp_qp *qp, const uint8_t *pkt,
                 uint32_t len, uint32_t src_ip_be, uint16_t sport)
{
    const struct rnic_opinfo *oi;
    uint32_t qpn = qp->qpn, psn, pad, hdr, plen;
    const uint8_t *payload;

    /* an opcode of the QP's transport (9.2; UC: SEND and RDMA WRITE only, 9.8) */
    oi = &rnic_op_table[pkt[0]];
    if (!(oi->flags & RNIC_OPF_VALID) || (pkt[0] & RNIC_OPT_MASK) != qp_transport(qp))
        return 0;
    psn = dp_be24(pkt + 9);
    if ((oi->flags & RNIC_OPF_REQUEST) && qp->resp_queued)
        return 0;                       /* core/'s responses wait: nothing may overtake them */
    if ((oi->flags & RNIC_OPF_REQUEST) && psn != qp->epsn)
        return rx_unexpected_psn(dev, qp, pkt, len, oi, psn, src_ip_be, sport);
    switch (oi->kind) {
    case RNIC_KIND_ACK:
        return rx_ack(dev, qp, pkt, len, psn, src_ip_be, sport);
    case RNIC_KIND_READ_REQ:
        return rx_read_request(dev, qp, pkt, len, psn, src_ip_be, sport);
    case RNIC_KIND_READ_RESP:
        return rx_read_response(dev, qp, pkt, len, psn, src_ip_be, sport);
    case RNIC_KIND_ATOMIC:
        return rx_atomic(dev, qp, pkt, len, psn, src_ip_be, sport);
    case RNIC_KIND_ATOMIC_ACK:
        return rx_atomic_ack(dev, qp, pkt, len, psn, src_ip_be, sport);
    case RNIC_KIND_SEND:
    case RNIC_KIND_WRITE:
        break;
    default:
        return 0;
    }
    /* core/'s too: SEND with Invalidate (a window), WRITE with immediate (a receive WQE) */
    if ((oi->hdrs & RNIC_HDR_IETH) || (oi->kind == RNIC_KIND_WRITE && (oi->hdrs & RNIC_HDR_IMMDT)))
        return 0;
    if (rnic_dp_seq_check(qp, pkt[0]) < 0)
        return 0;
    hdr = RNIC_BTH_LEN + oi->hdr_len;
    pad = bth_pad(pkt);
    if (len < hdr + RNIC_ICRC_LEN + pad || (pad && !(oi->flags & RNIC_OPF_LAST)))
        return 0;                                   /* pad only ends a message (9.3.1) */
    if (!icrc_ok(dev, pkt, len, src_ip_be, sport))
        return 0;
    plen = len - hdr - RNIC_ICRC_LEN - pad;
    payload = pkt + hdr;
    if (oi->kind == RNIC_KIND_SEND) {
        if (!rx_send(dev, qp, pkt, oi, payload, plen))
            return 0;
    } else {
        const uint8_t *reth = pkt + RNIC_BTH_LEN;
        int has_reth = (oi->hdrs & RNIC_HDR_RETH) != 0;

        if (rnic_dp_write(dev, qp, pkt[0], has_reth ? dp_be64(reth) : 0,
                          has_reth ? dp_be32(reth + 8) : 0, has_reth ? dp_be32(reth + 12) : 0,
                          payload, plen) < 0)
            return 0;
    }
    qp->epsn = (psn + 1) & 0xffffff;
    qp->nak_sent = 0;
    /* AckReq (9.7.5.1.2) */
    if ((pkt[8] & RNIC_BTH_ACKREQ) && !qp->ack_pending && !qp->unreliable) {
        qp->ack_pending = 1;
        if (dev->nacks < dev->acks_len)
            dev->acks[dev->nacks++] = qpn;
    }
    qp->fast_pkts++;
    return 1;
}

int rnic_dp_rx_one(struct rnic_dp_dev *dev, const uint8_t *pkt, uint32_t len,
                   uint32_t src_ip_be, uint16_t sport)
{
    struct rnic_dp_qp *qp;
    uint32_t qpn;
    int opened, rc;

    if (len < RNIC_BTH_LEN + RNIC_ICRC_LEN || (pkt[1] & RNIC_BTH_TVER_MASK) != 0)  /* 9.3.1 */
        return 0;
    qpn = dp_be24(pkt + 5);
    if (qpn >= dev->qps_len || !(qp = dev->qps[qpn]) || qp->qpn != qpn || !qp->fast
        || (!qp->ud && qp->peer_ip_be != src_ip_be))
        return 0;
    /* one packet is one change of the QP (txn.c): its ACK, CQE and consumer index go out
     * only once it is committed */
    opened = dp_txn_open(qp);
    rc = qp->ud ? rx_ud(dev, qp, pkt, len, src_ip_be, sport)
                : rx_qp(dev, qp, pkt, len, src_ip_be, sport);
    dp_txn_close(dev, qp, opened);
    return rc;
}

uint32_t rnic_dp_rx_batch(struct rnic_dp_dev *dev, const uint8_t *bufs, uint32_t buf_size,
                          const uint32_t *lens, const uint32_t *addrs_be,
                          const uint16_t *ports, uint32_t n, uint32_t *slow)
{
    uint32_t nslow = 0;

    for (uint32_t i = 0; i < n; i++) {
        if (lens[i] <= buf_size
            && rnic_dp_rx_one(dev, bufs + (size_t)i * buf_size, lens[i], addrs_be[i], ports[i])) {
            dev->fast_pkts++;
            continue;
        }
        dev->slow_pkts++;
        slow[nslow++] = i;
    }
    return nslow;
}
