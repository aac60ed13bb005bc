/* xrc_ud_ex.c — the ibv_wr_* API on XRC and UD between two processes on two daemons, with
 * the XRC objects' documented errors: the server opens a private XRC domain, an XRC SRQ
 * (ibv_create_srq_ex, ibv_get_srq_num) and an XRC TGT QP, and a UD QP; the client sends to
 * the SRQ from an XRC INI QP (ibv_wr_set_xrc_srqn) and to the UD QP (ibv_wr_set_ud_addr,
 * inline data with an immediate). Round 2 passes the UD QPN. */
#include <arpa/inet.h>
#include <fcntl.h>

#include "common.h"

#define QKEY 0x11111111u

static void ud_up(struct ibv_qp *qp)
{
    struct ibv_qp_attr a = {.qp_state = IBV_QPS_INIT, .port_num = 1, .qkey = QKEY};
    CHECK(ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_QKEY) == 0);
    a.qp_state = IBV_QPS_RTR;
    CHECK(ibv_modify_qp(qp, &a, IBV_QP_STATE) == 0);
    a.qp_state = IBV_QPS_RTS;
    CHECK(ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_SQ_PSN) == 0);
}

int main(int argc, char **argv)
{
    int server = argc > 1 && !strcmp(argv[1], "server");
    struct ibv_context *ctx = open_first_device();
    struct ibv_pd *pd = ibv_alloc_pd(ctx);
    CHECK(pd);
    char *buf = calloc(1, 4096);
    struct ibv_mr *mr = ibv_reg_mr(pd, buf, 4096, IBV_ACCESS_LOCAL_WRITE);
    CHECK(mr);
    struct ibv_cq *cq = ibv_create_cq(ctx, 16, NULL, NULL, 0);
    CHECK(cq);
    struct ibv_qp_init_attr_ex ua = {
        .send_cq = cq, .recv_cq = cq, .qp_type = IBV_QPT_UD,
        .cap = {.max_send_wr = 4, .max_recv_wr = 4, .max_send_sge = 1, .max_recv_sge = 1,
                .max_inline_data = 32},
        .comp_mask = IBV_QP_INIT_ATTR_PD | IBV_QP_INIT_ATTR_SEND_OPS_FLAGS, .pd = pd,
        .send_ops_flags = IBV_QP_EX_WITH_SEND | IBV_QP_EX_WITH_SEND_WITH_IMM};
    struct ibv_qp *ud = ibv_create_qp_ex(ctx, &ua);
    CHECK(ud && ibv_qp_to_qp_ex(ud));
    ua.send_ops_flags = IBV_QP_EX_WITH_RDMA_WRITE;     /* UD carries sends only */
    errno = 0;
    CHECK(!ibv_create_qp_ex(ctx, &ua) && errno == EOPNOTSUPP);
    ud_up(ud);
    struct ibv_wc wc;
    struct peer p;
    unsigned ud_qpn;

    if (server) {
        struct ibv_xrcd_init_attr xa = {.comp_mask = 0};
        errno = 0;
        CHECK(!ibv_open_xrcd(ctx, &xa) && errno == EINVAL);   /* fd and oflags are required */
        xa = (struct ibv_xrcd_init_attr){.comp_mask = IBV_XRCD_INIT_ATTR_FD | IBV_XRCD_INIT_ATTR_OFLAGS,
                                         .fd = -1, .oflags = O_CREAT};
        struct ibv_xrcd *xrcd = ibv_open_xrcd(ctx, &xa);
        CHECK(xrcd);
        struct ibv_srq_init_attr_ex sa = {
            .attr = {.max_wr = 8, .max_sge = 1}, .srq_type = IBV_SRQT_XRC, .pd = pd, .xrcd = xrcd,
            .comp_mask = IBV_SRQ_INIT_ATTR_TYPE | IBV_SRQ_INIT_ATTR_PD | IBV_SRQ_INIT_ATTR_XRCD};
        errno = 0;
        CHECK(!ibv_create_srq_ex(ctx, &sa) && errno == EINVAL);   /* an XRC SRQ needs a CQ */
        sa.comp_mask |= IBV_SRQ_INIT_ATTR_CQ;
        sa.cq = cq;
        struct ibv_srq *srq = ibv_create_srq_ex(ctx, &sa);
        CHECK(srq);
        uint32_t srqn;
        CHECK(ibv_get_srq_num(srq, &srqn) == 0 && srqn > 0);
        struct ibv_qp_init_attr_ex ta = {.qp_type = IBV_QPT_XRC_RECV,
                                         .comp_mask = IBV_QP_INIT_ATTR_XRCD, .xrcd = xrcd};
        struct ibv_qp *tgt = ibv_create_qp_ex(ctx, &ta);
        CHECK(tgt);
        CHECK(ibv_close_xrcd(xrcd) == EBUSY);
        struct ibv_sge s = {(uintptr_t)buf, 64, mr->lkey};
        struct ibv_recv_wr r = {.wr_id = 70, .sg_list = &s, .num_sge = 1}, *bad;
        CHECK(ibv_post_srq_recv(srq, &r, &bad) == 0);
        struct ibv_sge us = {(uintptr_t)buf + 1024, 40 + 64, mr->lkey};
        struct ibv_recv_wr ur = {.wr_id = 71, .sg_list = &us, .num_sge = 1};
        CHECK(ibv_post_recv(ud, &ur, &bad) == 0);
        errno = 0;
        CHECK(ibv_post_recv(tgt, &r, &bad) != 0);           /* a TGT QP has no receive queue */
        to_init(tgt);
        exchange(ctx, tgt->qp_num, buf, mr->rkey, srqn, &p);
        connect_qp(tgt, &p, 0);                             /* a target needs only RTR */
        say("UD %u", ud->qp_num);
        CHECK(scanf(" UD %u", &ud_qpn) == 1);
        for (int got = 0; got < 2;) {
            wc = wait_wc(cq);
            CHECK(wc.status == IBV_WC_SUCCESS && wc.opcode == IBV_WC_RECV);
            if (wc.wr_id == 70) {        /* through the TGT QP into the SRQ */
                CHECK(wc.byte_len == 9 && !strcmp(buf, "xrc send") && wc.qp_num == tgt->qp_num);
            } else {
                CHECK(wc.wr_id == 71 && wc.byte_len == 40 + 7 && (wc.wc_flags & IBV_WC_GRH));
                CHECK((wc.wc_flags & IBV_WC_WITH_IMM) && ntohl(wc.imm_data) == 0xbeef);
                CHECK(wc.src_qp == ud_qpn && !memcmp(buf + 1024 + 40, "ud wr!", 7));
            }
            got++;
        }
        CHECK(ibv_destroy_qp(tgt) == 0 && ibv_destroy_srq(srq) == 0 && ibv_close_xrcd(xrcd) == 0);
    } else {
        struct ibv_qp_init_attr_ex ia = {
            .send_cq = cq, .qp_type = IBV_QPT_XRC_SEND,
            .cap = {.max_send_wr = 4, .max_send_sge = 1},
            .comp_mask = IBV_QP_INIT_ATTR_PD | IBV_QP_INIT_ATTR_SEND_OPS_FLAGS, .pd = pd,
            .send_ops_flags = IBV_QP_EX_WITH_SEND};
        struct ibv_qp *ini = ibv_create_qp_ex(ctx, &ia);
        CHECK(ini);
        struct ibv_qp_ex *qx = ibv_qp_to_qp_ex(ini);
        CHECK(qx);
        to_init(ini);
        exchange(ctx, ini->qp_num, buf, mr->rkey, 0, &p);
        connect_qp(ini, &p, 1);
        say("UD %u", ud->qp_num);
        CHECK(scanf(" UD %u", &ud_qpn) == 1);
        strcpy(buf, "xrc send");
        ibv_wr_start(qx);
        qx->wr_id = 1;
        qx->wr_flags = IBV_SEND_SIGNALED;
        ibv_wr_send(qx);
        ibv_wr_set_xrc_srqn(qx, p.extra);
        ibv_wr_set_sge(qx, mr->lkey, (uintptr_t)buf, 9);
        CHECK(ibv_wr_complete(qx) == 0);
        wc = wait_wc(cq);
        CHECK(wc.status == IBV_WC_SUCCESS && wc.wr_id == 1 && wc.opcode == IBV_WC_SEND);

        struct ibv_ah_attr aa = {.is_global = 1, .port_num = 1,
                                 .grh = {.dgid = p.gid, .hop_limit = 1}};
        struct ibv_ah *ah = ibv_create_ah(pd, &aa);
        CHECK(ah);
        struct ibv_qp_ex *ux = ibv_qp_to_qp_ex(ud);
        ibv_wr_start(ux);
        ux->wr_id = 2;
        ux->wr_flags = IBV_SEND_SIGNALED;
        ibv_wr_send_imm(ux, htonl(0xbeef));
        ibv_wr_set_ud_addr(ux, ah, ud_qpn, QKEY);
        ibv_wr_set_inline_data(ux, "ud wr!", 7);
        CHECK(ibv_wr_complete(ux) == 0);
        wc = wait_wc(cq);
        CHECK(wc.status == IBV_WC_SUCCESS && wc.wr_id == 2 && wc.opcode == IBV_WC_SEND);
        CHECK(ibv_destroy_ah(ah) == 0 && ibv_destroy_qp(ini) == 0);
    }
    CHECK(ibv_destroy_qp(ud) == 0);
    CHECK(ibv_destroy_cq(cq) == 0);
    CHECK(ibv_dereg_mr(mr) == 0);
    CHECK(ibv_dealloc_pd(pd) == 0);
    CHECK(ibv_close_device(ctx) == 0);
    printf("OK\n");
    return 0;
}
