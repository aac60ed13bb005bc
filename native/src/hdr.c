/*
 * hdr.c — the one writer of RoCE transport headers: the BTH (IBTA 9.3.1) and the extended
 * headers rnic_op_table lists for the opcode, in wire order (9.2; XRCETH A14.4.2).
 */
#include <string.h>

#include "dp_util.h"
#include "rnic_dp.h"

uint32_t rnic_hdr_build(uint8_t *out, const struct rnic_hdr *h)
{
    const struct rnic_opinfo *oi = &rnic_op_table[h->opcode];
    uint8_t *p = out + RNIC_BTH_LEN;

    if (!(oi->flags & RNIC_OPF_VALID))
        return 0;
    out[0] = h->opcode;                             /* 9.3.1: TVer 0, M 0 */
    out[1] = (uint8_t)((h->se ? RNIC_BTH_SE : 0) | (h->pad & 3) << RNIC_BTH_PAD_SHIFT);
    out[2] = RNIC_DEFAULT_PKEY >> 8;
    out[3] = RNIC_DEFAULT_PKEY & 0xff;
    out[4] = 0;                                     /* FECN, BECN, Resv6 */
    dp_put24(out + 5, h->dest_qp);
    out[8] = h->ackreq ? RNIC_BTH_ACKREQ : 0;
    dp_put24(out + 9, h->psn);
    if (oi->hdrs & RNIC_HDR_XRCETH) {               /* A14.4.2: Resv8 | XRCSRQ */
        dp_put32(p, h->xrc_srqn & 0xffffff);
        p += RNIC_XRCETH_LEN;
    }
    if (oi->hdrs & RNIC_HDR_DETH) {                 /* 9.3.3: Q_Key, Resv8 | SrcQP */
        dp_put32(p, h->qkey);
        dp_put32(p + 4, h->src_qp & 0xffffff);
        p += RNIC_DETH_LEN;
    }
    if (oi->hdrs & RNIC_HDR_RETH) {                 /* 9.3.4: VA, R_Key, DMA length */
        dp_put64(p, h->va);
        dp_put32(p + 8, h->rkey);
        dp_put32(p + 12, h->dma_len);
        p += RNIC_RETH_LEN;
    }
    if (oi->hdrs & RNIC_HDR_ATOMICETH) {            /* 9.3.5: VA, R_Key, SwapAdd, Compare */
        dp_put64(p, h->va);
        dp_put32(p + 8, h->rkey);
        dp_put64(p + 12, h->swap_add);
        dp_put64(p + 20, h->compare);
        p += RNIC_ATOMICETH_LEN;
    }
    if (oi->hdrs & RNIC_HDR_AETH) {                 /* 9.3.6: Syndrome, MSN */
        p[0] = h->syndrome;
        dp_put24(p + 1, h->msn);
        p += RNIC_AETH_LEN;
    }
    if (oi->hdrs & RNIC_HDR_ATOMICACKETH) {         /* 9.3.7: OrigRemData */
        dp_put64(p, h->orig);
        p += RNIC_ATOMICACKETH_LEN;
    }
    if (oi->hdrs & (RNIC_HDR_IMMDT | RNIC_HDR_IETH)) {  /* 9.3.8 ImmDt, 9.3.9 IETH R_Key */
        dp_put32(p, h->imm);
        p += RNIC_IMMDT_LEN;
    }
    return (uint32_t)(p - out);
}
