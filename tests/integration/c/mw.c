/* mw.c — memory windows (ibv_alloc_mw(3), ibv_bind_mw(3), IBV_WR_BIND_MW, IBV_WR_LOCAL_INV,
 * IBV_WR_SEND_WITH_INV) between two processes on two daemons. The server binds a type 1
 * window with ibv_bind_mw and a type 2 window with ibv_wr_bind_mw and passes their rkeys
 * (round 2); the client writes through both, invalidates the type 2 window with
 * SEND_WITH_INV and sees a write through it refused (IBV_WC_REM_ACCESS_ERR). */
#include "common.h"

int main(int argc, char **argv)
{
    int server = argc > 1 && !strcmp(argv[1], "server");
    struct ibv_context *ctx = open_first_device();
    struct ibv_device_attr da;
    CHECK(ibv_query_device(ctx, &da) == 0 && da.max_mw > 0);
    struct ibv_pd *pd = ibv_alloc_pd(ctx);
    CHECK(pd);
    char *buf = calloc(1, 4096);
    struct ibv_mr *mr = ibv_reg_mr(pd, buf, 4096, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE |
                                   IBV_ACCESS_REMOTE_READ | IBV_ACCESS_MW_BIND);
    CHECK(mr);
    struct ibv_cq *cq = ibv_create_cq(ctx, 16, NULL, NULL, 0);
    CHECK(cq);
    struct ibv_qp_init_attr_ex qa = {
        .send_cq = cq, .recv_cq = cq, .qp_type = IBV_QPT_RC,
        .cap = {.max_send_wr = 8, .max_recv_wr = 8, .max_send_sge = 1, .max_recv_sge = 1},
        .comp_mask = IBV_QP_INIT_ATTR_PD | IBV_QP_INIT_ATTR_SEND_OPS_FLAGS, .pd = pd,
        .send_ops_flags = IBV_QP_EX_WITH_SEND | IBV_QP_EX_WITH_RDMA_WRITE | IBV_QP_EX_WITH_BIND_MW |
                          IBV_QP_EX_WITH_LOCAL_INV | IBV_QP_EX_WITH_SEND_WITH_INV};
    struct ibv_qp *qp = ibv_create_qp_ex(ctx, &qa);
    CHECK(qp);
    struct ibv_qp_ex *qx = ibv_qp_to_qp_ex(qp);
    CHECK(qx);
    to_init(qp);
    struct ibv_sge rs = {.addr = (uintptr_t)buf + 1024, .length = 64, .lkey = mr->lkey};
    struct ibv_recv_wr rwr = {.wr_id = 50, .sg_list = &rs, .num_sge = 1}, *rbad;
    if (server)
        CHECK(ibv_post_recv(qp, &rwr, &rbad) == 0);
    struct peer p;
    exchange(ctx, qp->qp_num, buf, mr->rkey, 0, &p);
    connect_qp(qp, &p, 1);
    struct ibv_wc wc;
    unsigned k1, k2;

    if (server) {
        errno = 0;
        CHECK(!ibv_alloc_mw(pd, (enum ibv_mw_type)3) && errno == EINVAL);
        struct ibv_mw *mw1 = ibv_alloc_mw(pd, IBV_MW_TYPE_1);
        struct ibv_mw *mw2 = ibv_alloc_mw(pd, IBV_MW_TYPE_2);
        struct ibv_mw *mw3 = ibv_alloc_mw(pd, IBV_MW_TYPE_2);
        CHECK(mw1 && mw2 && mw3 && mw1->type == IBV_MW_TYPE_1 && mw2->pd == pd);
        struct ibv_mw_bind b = {.wr_id = 7, .send_flags = IBV_SEND_SIGNALED,
                                .bind_info = {.mr = mr, .addr = (uintptr_t)buf, .length = 64,
                                              .mw_access_flags = IBV_ACCESS_REMOTE_WRITE}};
        CHECK(ibv_bind_mw(qp, mw2, &b) == EINVAL);          /* type 2: bound by a WR */
        uint32_t old = mw1->rkey;
        CHECK(ibv_bind_mw(qp, mw1, &b) == 0 && mw1->rkey == ibv_inc_rkey(old));
        wc = wait_wc(cq);
        CHECK(wc.status == IBV_WC_SUCCESS && wc.opcode == IBV_WC_BIND_MW && wc.wr_id == 7);

        ibv_wr_start(qx);
        qx->wr_id = 8;
        qx->wr_flags = IBV_SEND_SIGNALED;
        struct ibv_mw_bind_info info = {.mr = mr, .addr = (uintptr_t)buf + 64, .length = 64,
                                        .mw_access_flags = IBV_ACCESS_REMOTE_WRITE};
        k2 = ibv_inc_rkey(mw2->rkey);
        ibv_wr_bind_mw(qx, mw2, k2, &info);
        qx->wr_id = 9;
        ibv_wr_bind_mw(qx, mw3, ibv_inc_rkey(mw3->rkey), &info);
        CHECK(ibv_wr_complete(qx) == 0);
        for (int i = 0; i < 2; i++) {
            wc = wait_wc(cq);
            CHECK(wc.status == IBV_WC_SUCCESS && wc.opcode == IBV_WC_BIND_MW && wc.wr_id == 8u + i);
        }
        struct ibv_send_wr inv = {.wr_id = 10, .opcode = IBV_WR_LOCAL_INV,
                                  .send_flags = IBV_SEND_SIGNALED,
                                  .invalidate_rkey = ibv_inc_rkey(mw3->rkey)}, *bad;
        CHECK(ibv_post_send(qp, &inv, &bad) == 0);
        wc = wait_wc(cq);
        CHECK(wc.status == IBV_WC_SUCCESS && wc.opcode == IBV_WC_LOCAL_INV && wc.wr_id == 10);

        printf("KEYS %u %u\n", mw1->rkey, k2);
        fflush(stdout);
        CHECK(scanf(" KEYS %u %u", &k1, &k2) == 2);
        wc = wait_wc(cq);          /* the client's SEND_WITH_INV, after its writes */
        CHECK(wc.status == IBV_WC_SUCCESS && wc.opcode == IBV_WC_RECV && wc.wr_id == 50);
        CHECK((wc.wc_flags & IBV_WC_WITH_INV) && wc.invalidated_rkey == ibv_inc_rkey(mw2->rkey));
        CHECK(!strcmp(buf, "mw1 ok") && !strcmp(buf + 64, "mw2 ok") && !strcmp(buf + 1024, "inv"));
        say("WAIT %u", 0);
        char done[8];
        CHECK(scanf(" %7s %*u", done) == 1 && !strcmp(done, "DONE"));
        CHECK(ibv_dealloc_mw(mw1) == 0 && ibv_dealloc_mw(mw2) == 0 && ibv_dealloc_mw(mw3) == 0);
    } else {
        printf("KEYS 0 0\n");
        fflush(stdout);
        CHECK(scanf(" KEYS %u %u", &k1, &k2) == 2);
        strcpy(buf, "mw1 ok");
        strcpy(buf + 64, "mw2 ok");
        strcpy(buf + 128, "inv");
        struct ibv_sge s1 = {(uintptr_t)buf, 7, mr->lkey}, s2 = {(uintptr_t)buf + 64, 7, mr->lkey},
                       s3 = {(uintptr_t)buf + 128, 4, mr->lkey};
        struct ibv_send_wr w3 = {.wr_id = 3, .sg_list = &s3, .num_sge = 1,
                                 .opcode = IBV_WR_SEND_WITH_INV, .send_flags = IBV_SEND_SIGNALED,
                                 .invalidate_rkey = k2};
        struct ibv_send_wr w2 = {.wr_id = 2, .next = &w3, .sg_list = &s2, .num_sge = 1,
                                 .opcode = IBV_WR_RDMA_WRITE, .send_flags = IBV_SEND_SIGNALED,
                                 .wr.rdma = {p.addr + 64, k2}};
        struct ibv_send_wr w1 = {.wr_id = 1, .next = &w2, .sg_list = &s1, .num_sge = 1,
                                 .opcode = IBV_WR_RDMA_WRITE, .send_flags = IBV_SEND_SIGNALED,
                                 .wr.rdma = {p.addr, k1}}, *bad;
        CHECK(ibv_post_send(qp, &w1, &bad) == 0);
        for (int i = 1; i <= 3; i++) {
            wc = wait_wc(cq);
            if (wc.status != IBV_WC_SUCCESS)
                printf("wr %d: %s\n", (int)wc.wr_id, ibv_wc_status_str(wc.status));
            CHECK(wc.status == IBV_WC_SUCCESS && wc.wr_id == (uint64_t)i);
        }
        w2.next = NULL;            /* the window the SEND_WITH_INV invalidated refuses */
        CHECK(ibv_post_send(qp, &w2, &bad) == 0);
        wc = wait_wc(cq);
        CHECK(wc.wr_id == 2 && wc.status == IBV_WC_REM_ACCESS_ERR);
        say("DONE %u", 0);
        char w[8];
        CHECK(scanf(" %7s %*u", w) == 1 && !strcmp(w, "WAIT"));
    }
    CHECK(ibv_destroy_qp(qp) == 0);
    CHECK(ibv_destroy_cq(cq) == 0);
    CHECK(ibv_dereg_mr(mr) == 0);
    CHECK(ibv_dealloc_pd(pd) == 0);
    CHECK(ibv_close_device(ctx) == 0);
    printf("OK\n");
    return 0;
}
