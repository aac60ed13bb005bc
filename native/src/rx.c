/*
 * rx.c — the responder's fast path: in-order RDMA WRITE packets of an RC connection are
 * checked and placed here, with no Python per packet. Anything else — another opcode, a
 * PSN out of sequence, a bad key, a malformed or corrupted packet — is left untouched for
 * core/roce/responder.py, which shares the QP's state (struct rnic_dp_qp) and knows how to
 * NAK, drop and count it. So every check here only decides "mine or not": errors are
 * never reported from C.
 *
 * Order of checks as IBTA 9.7.3 lists them: transport header (BTH, ICRC), QP and source,
 * PSN (== ePSN), opcode sequence, RETH access (rkey, PD, access, bounds), length.
 */
#include <errno.h>
#include <stdint.h>
#include <string.h>

#include "dp_util.h"
#include "rnic_dp.h"

enum {
    RX_BTH_LEN = 12, RX_RETH_LEN = 16, RX_ICRC_LEN = 4,
    RX_OP_WRITE_FIRST = 0x06, RX_OP_WRITE_MIDDLE = 0x07, RX_OP_WRITE_LAST = 0x08, RX_OP_WRITE_ONLY = 0x0a,
    RX_ACCESS_REMOTE_WRITE = 2, RX_OP_ACK = 0x11, RX_AETH_LEN = 4, RX_ACCESS_LOCAL_WRITE = 1,
    RX_OP_SEND_FIRST = 0x00, RX_OP_SEND_MIDDLE = 0x01, RX_OP_SEND_LAST = 0x02,
    RX_OP_SEND_LAST_IMM = 0x03, RX_OP_SEND_ONLY = 0x04, RX_OP_SEND_ONLY_IMM = 0x05,
    RX_OP_READ_REQUEST = 0x0c, RX_OP_READ_RESP_FIRST = 0x0d, RX_OP_READ_RESP_MIDDLE = 0x0e,
    RX_OP_READ_RESP_ONLY = 0x10, RX_ACCESS_REMOTE_READ = 4, RX_WR_RDMA_READ = 4,
    RX_OP_WRITE_ONLY_IMM = 0x0b, RX_TRANSPORT_RC = 0, RX_TRANSPORT_UC = 1,
};



/* IBTA 10.6.3.2, 10.6.7.2: MRs and bound windows alike (rnic_dp.h) */
uint8_t *rnic_dp_rkey(const struct rnic_dp_dev *dev, const struct rnic_dp_qp *qp,
                      uint32_t rkey, uint64_t va, uint64_t n, uint32_t need)
{
    uint32_t idx = rkey >> 8;
    const struct rnic_dp_mr *mr;

    if (!(qp->access & need) || idx >= dev->mrs_len)
        return NULL;
    mr = dev->mrs[idx];
    if (!mr || mr->rkey != rkey || mr->pd != qp->pd || !(mr->access & need)
        || (mr->flags & RNIC_DP_KEY_INVALID) || (mr->qpn && mr->qpn != qp->qpn))
        return NULL;
    if (va < mr->iova || va - mr->iova > mr->length || n > mr->length - (va - mr->iova))
        return NULL;
    return mr->base + (va - mr->iova);
}

static int icrc_ok(const struct rnic_dp_dev *dev, const uint8_t *pkt, uint32_t len,
                   uint32_t src_ip_be, uint16_t sport)
{
    return dp_le32(pkt + len - RX_ICRC_LEN)
        == rnic_roce_icrc_v4(pkt, len - RX_ICRC_LEN, src_ip_be, dev->ip_be, sport, dev->port);
}

/* An in-order RDMA READ request (9.7.4.1.5): start answering it from the region; what the
 * transmit buffer cannot take now core/ produces as it drains (dev->pumps). Duplicates (they
 * are re-executed), zero-length, oversized and bad ones are core/'s, and so is any READ
 * while another one is being answered (responses go out in PSN order). */
static int rx_read_request(struct rnic_dp_dev *dev, struct rnic_dp_qp *qp, const uint8_t *pkt,
                           uint32_t len, uint32_t psn, uint32_t src_ip_be, uint16_t sport)
{
    uint64_t va;
    uint32_t rkey, dlen;
    const uint8_t *src;
    int n;

    if (len != RX_BTH_LEN + RX_RETH_LEN + RX_ICRC_LEN || (pkt[1] & 0x30) || psn != qp->epsn
        || qp->msg != RNIC_DP_MSG_NONE || qp->rd_npkts || !icrc_ok(dev, pkt, len, src_ip_be, sport))
        return 0;
    va = dp_be64(pkt + RX_BTH_LEN);
    rkey = dp_be32(pkt + RX_BTH_LEN + 8);
    dlen = dp_be32(pkt + RX_BTH_LEN + 12);
    if (dlen == 0 || dlen > RNIC_DP_MAX_MSG
        || !(src = rnic_dp_rkey(dev, qp, rkey, va, dlen, RX_ACCESS_REMOTE_READ)))
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

/* An in-order RDMA READ response for the READ at the head of what is unanswered: place it;
 * the last one completes the WQE (9.7.5.1.3). Gaps, stale or odd responses are core/'s. */
static int rx_read_response(struct rnic_dp_dev *dev, struct rnic_dp_qp *qp, const uint8_t *pkt,
                            uint32_t len, uint32_t psn, uint32_t src_ip_be, uint16_t sport)
{
    uint32_t op = pkt[0], hdr = RX_BTH_LEN + (op == RX_OP_READ_RESP_MIDDLE ? 0 : RX_AETH_LEN);
    uint32_t pad = (pkt[1] >> 4) & 3, plen, k, expect, old = qp->una;
    struct rnic_dp_swqe *w;

    if (!qp->send_ok || psn != qp->una || len < hdr + RX_ICRC_LEN + pad)
        return 0;
    if (op != RX_OP_READ_RESP_MIDDLE && (pkt[RX_BTH_LEN] >> 5) != 0)
        return 0;                                   /* only a positive AETH */
    w = dp_wqe_at(qp, psn);
    if (!w || w->opcode != RX_WR_RDMA_READ || w->status >= 0)
        return 0;
    if (!icrc_ok(dev, pkt, len, src_ip_be, sport))
        return 0;
    k = (uint32_t)dp_psn_diff(psn, w->first_psn);
    plen = len - hdr - RX_ICRC_LEN - pad;
    expect = w->length - k * qp->mtu < qp->mtu ? w->length - k * qp->mtu : qp->mtu;
    if (plen != expect || rnic_dp_swqe_place(w, (uint64_t)k * qp->mtu, pkt + hdr, plen) < 0)
        return 0;
    qp->una = (psn + 1) & 0xffffff;
    if (k == w->npkts - 1)
        w->status = 0;                              /* IBV_WC_SUCCESS */
    rnic_dp_progress(dev, qp, old);
    rnic_dp_retire(dev, qp);
    if (rnic_dp_pump(dev, qp) != RNIC_DP_PUMP_IDLE && dev->npumps < dev->pumps_cap)
        dev->pumps[dev->npumps++] = qp->qpn;
    qp->fast_pkts++;
    return 1;
}

/* A positive ACK for our requests (9.7.5.1.2): acknowledge, retire, send more. NAKs, stale
 * or impossible PSNs, and ACKs that reveal a lost READ response are core/'s. */
static int rx_ack(struct rnic_dp_dev *dev, struct rnic_dp_qp *qp, const uint8_t *pkt,
                  uint32_t len, uint32_t psn, uint32_t src_ip_be, uint16_t sport)
{
    uint32_t old = qp->una;
    int32_t d;
    int64_t lost;

    if (len != RX_BTH_LEN + RX_AETH_LEN + RX_ICRC_LEN || (pkt[1] & 0x30)
        || (pkt[RX_BTH_LEN] >> 5) != 0 || !qp->send_ok)
        return 0;
    d = dp_psn_diff(psn, qp->una);                 /* requests in flight: [una, next_psn) */
    if (d < 0 || d >= dp_psn_diff(qp->next_psn, qp->una))
        return 0;
    if (!icrc_ok(dev, pkt, len, src_ip_be, sport))
        return 0;
    lost = rnic_dp_ack(dev, qp, psn);
    rnic_dp_progress(dev, qp, old);
    rnic_dp_retire(dev, qp);
    if (lost >= 0)
        return 0;           /* core/ re-issues the READ/atomic (it repeats the ack harmlessly) */
    if (rnic_dp_pump(dev, qp) != RNIC_DP_PUMP_IDLE && dev->npumps < dev->pumps_cap)
        dev->pumps[dev->npumps++] = qp->qpn;
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
        const struct rnic_dp_mr *mr;
        uint64_t addr, len;

        dp_copy_shared(&e, &sg[i], sizeof(e));     /* sg may be the client's ring */
        mr = dp_lkey_mr(dev, e.lkey);
        addr = e.addr;
        len = e.length;
        if (len == 0)
            continue;
        if (!mr || mr->pd != qp->pd
            || !(mr->access & RX_ACCESS_LOCAL_WRITE) || addr < mr->iova
            || addr - mr->iova > mr->length || len > mr->length - (addr - mr->iova))
            return -EACCES;
        qp->recv_pieces[n].ptr = mr->base + (addr - mr->iova);
        qp->recv_pieces[n].len = len;
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

/* In-order SEND packets (IBTA 9.7.3, 9.7.7.1): into the receive WQE's buffers, then a CQE. */
static int rx_send(struct rnic_dp_dev *dev, struct rnic_dp_qp *qp, const uint8_t *pkt,
                   uint32_t op, uint32_t hdr, const uint8_t *payload, uint32_t plen)
{
    int first = op == RX_OP_SEND_FIRST || op >= RX_OP_SEND_ONLY;
    int last = op != RX_OP_SEND_FIRST && op != RX_OP_SEND_MIDDLE;
    int imm = op == RX_OP_SEND_LAST_IMM || op == RX_OP_SEND_ONLY_IMM;

    if (plen > qp->mtu || (!last && plen != qp->mtu))
        return 0;
    if (first ? qp->msg != RNIC_DP_MSG_NONE : qp->msg != RNIC_DP_MSG_SEND)
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
        rnic_store_release(&qp->rq->cons, qp->rq->cons + 1);
        qp->msg = RNIC_DP_MSG_SEND;
    }
    if (rnic_dp_recv_place(qp, payload, plen) < 0)
        return 0;       /* a later packet overflows: core/ completes the WQE in error */
    if (last) {
        struct rnic_cqe c;

        memset(&c, 0, sizeof(c));
        c.wr_id = qp->recv_wr_id;
        c.opcode = 128;                             /* IBV_WC_RECV */
        c.byte_len = (uint32_t)qp->recv_off;
        c.qp_num = qp->qpn;
        c.src_qp = qp->dest_qpn;
        if (imm) {
            c.imm_data = dp_be32(pkt + hdr - 4);
            c.wc_flags = 2;                         /* IBV_WC_WITH_IMM */
        }
        qp->msg = RNIC_DP_MSG_NONE;
        qp->msn = (qp->msn + 1) & 0xffffff;
        rnic_dp_cq_push(dev, qp->rcq, &c, pkt[1] >> 7);
    }
    return 1;
}

int rnic_dp_rx_one(struct rnic_dp_dev *dev, const uint8_t *pkt, uint32_t len,
                   uint32_t src_ip_be, uint16_t sport)
{
    struct rnic_dp_qp *qp;
    uint32_t op, qpn, psn, pad, hdr, plen, mtu;
    const uint8_t *payload;

    if (len < RX_BTH_LEN + RX_ICRC_LEN || (pkt[1] & 0x0f) != 0)       /* TVer 0 (9.2.4) */
        return 0;
    qpn = dp_be24(pkt + 5);
    if (qpn >= dev->qps_len || !(qp = dev->qps[qpn]) || qp->qpn != qpn || !qp->fast
        || qp->peer_ip_be != src_ip_be)
        return 0;
    /* the transport bits (IBTA 9.2) must be the QP's: RC 000, UC 001; a UC opcode is
     * handled as the RC opcode of its low 5 bits, SEND and RDMA WRITE only (9.8) */
    op = pkt[0];
    if (op >> 5 != (qp->unreliable ? RX_TRANSPORT_UC : RX_TRANSPORT_RC))
        return 0;
    op &= 0x1f;
    if (qp->unreliable && op > RX_OP_WRITE_ONLY_IMM)
        return 0;
    if (op != RX_OP_WRITE_FIRST && op != RX_OP_WRITE_MIDDLE && op != RX_OP_WRITE_LAST
        && op != RX_OP_WRITE_ONLY && op != RX_OP_ACK && op > RX_OP_SEND_ONLY_IMM
        && (op < RX_OP_READ_REQUEST || op > RX_OP_READ_RESP_ONLY))
        return 0;
    psn = dp_be24(pkt + 9);
    if (op == RX_OP_ACK)
        return rx_ack(dev, qp, pkt, len, psn, src_ip_be, sport);
    if (op == RX_OP_READ_REQUEST)
        return rx_read_request(dev, qp, pkt, len, psn, src_ip_be, sport);
    if (op >= RX_OP_READ_RESP_FIRST)
        return rx_read_response(dev, qp, pkt, len, psn, src_ip_be, sport);
    if (psn != qp->epsn)
        return 0;
    hdr = RX_BTH_LEN + ((op == RX_OP_WRITE_FIRST || op == RX_OP_WRITE_ONLY) ? RX_RETH_LEN : 0)
          + ((op == RX_OP_SEND_LAST_IMM || op == RX_OP_SEND_ONLY_IMM) ? 4 : 0);
    pad = (pkt[1] >> 4) & 3;
    if (len < hdr + RX_ICRC_LEN + pad)
        return 0;
    if (!icrc_ok(dev, pkt, len, src_ip_be, sport))
        return 0;
    plen = len - hdr - RX_ICRC_LEN - pad;
    payload = pkt + hdr;
    mtu = qp->mtu;
    if (plen > mtu || (pad && (op == RX_OP_WRITE_FIRST || op == RX_OP_WRITE_MIDDLE
                               || op == RX_OP_SEND_FIRST || op == RX_OP_SEND_MIDDLE)))
        return 0;
    if (op <= RX_OP_SEND_ONLY_IMM) {
        if (!rx_send(dev, qp, pkt, op, hdr, payload, plen))
            return 0;
        goto accepted;
    }

    if (op == RX_OP_WRITE_FIRST || op == RX_OP_WRITE_ONLY) {
        uint64_t va = dp_be64(pkt + RX_BTH_LEN);
        uint32_t rkey = dp_be32(pkt + RX_BTH_LEN + 8);
        uint64_t dlen = dp_be32(pkt + RX_BTH_LEN + 12);
        uint8_t *dst;

        if (qp->msg != RNIC_DP_MSG_NONE || dlen == 0)
            return 0;
        /* FIRST carries exactly one MTU of a longer message; ONLY all of it (9.7.7.1). */
        if (op == RX_OP_WRITE_FIRST ? (plen != mtu || dlen <= mtu) : plen != dlen)
            return 0;
        if (!(dst = rnic_dp_rkey(dev, qp, rkey, va, dlen, RX_ACCESS_REMOTE_WRITE)))
            return 0;
        memcpy(dst, payload, plen);
        if (op == RX_OP_WRITE_FIRST) {
            qp->msg = RNIC_DP_MSG_WRITE;
            qp->write_ptr = dst + plen;
            qp->write_left = dlen - plen;
            qp->write_len = dlen;
        } else {
            qp->msn = (qp->msn + 1) & 0xffffff;
        }
    } else {
        if (qp->msg != RNIC_DP_MSG_WRITE)
            return 0;
        if (op == RX_OP_WRITE_MIDDLE ? (plen != mtu || qp->write_left <= mtu)
                                  : (plen == 0 || plen != qp->write_left))
            return 0;
        memcpy(qp->write_ptr, payload, plen);
        qp->write_ptr += plen;
        qp->write_left -= plen;
        if (op == RX_OP_WRITE_LAST) {
            qp->msg = RNIC_DP_MSG_NONE;
            qp->write_ptr = NULL;
            qp->msn = (qp->msn + 1) & 0xffffff;
        }
    }
accepted:
    qp->epsn = (psn + 1) & 0xffffff;
    qp->nak_sent = 0;
    if ((pkt[8] & 0x80) && !qp->ack_pending && !qp->unreliable) {   /* AckReq (9.7.5.1.2) */
        qp->ack_pending = 1;
        if (dev->nacks < dev->acks_len)
            dev->acks[dev->nacks++] = qpn;
    }
    qp->fast_pkts++;
    return 1;
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
