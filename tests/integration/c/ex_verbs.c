/* ex_verbs.c — the extended CQ (ibv_create_cq_ex, start/next/end_poll, ibv_wc_read_*) and the
 * extended QP's post API (ibv_create_qp_ex with send_ops_flags, ibv_wr_*) between two
 * processes on two daemons. Run as `ex_verbs server` and `ex_verbs client`: each prints
 * "INFO qpn gid addr rkey extra" and reads the peer's line on stdin (the test relays them).
 * Prints OK at the end; any failure prints FAIL and exits 1. */
#include <arpa/inet.h>

#include "common.h"

static struct ibv_cq_ex *cq;
static uint64_t wc_flags = IBV_WC_EX_WITH_BYTE_LEN | IBV_WC_EX_WITH_IMM | IBV_WC_EX_WITH_QP_NUM |
                           IBV_WC_EX_WITH_SRC_QP | IBV_WC_EX_WITH_SLID | IBV_WC_EX_WITH_SL |
                           IBV_WC_EX_WITH_DLID_PATH_BITS;

struct got { uint64_t wr_id; int status, opcode; uint32_t byte_len, imm, qp_num, flags; };

/* Wait for n completions through start_poll / next_poll / end_poll. */
static void poll_n(int n, struct got *g)
{
    int k = 0;
    struct ibv_poll_cq_attr attr = {0};
    while (k < n) {
        int rc = ibv_start_poll(cq, &attr);
        if (rc == ENOENT)
            continue;
        CHECK(rc == 0);
        do {
            CHECK(k < n);
            g[k].wr_id = cq->wr_id;
            g[k].status = cq->status;
            g[k].opcode = ibv_wc_read_opcode(cq);
            g[k].byte_len = ibv_wc_read_byte_len(cq);
            g[k].flags = ibv_wc_read_wc_flags(cq);
            g[k].imm = (g[k].flags & IBV_WC_WITH_IMM) ? ntohl(ibv_wc_read_imm_data(cq)) : 0;
            g[k].qp_num = ibv_wc_read_qp_num(cq);
            (void)ibv_wc_read_src_qp(cq); (void)ibv_wc_read_slid(cq); (void)ibv_wc_read_sl(cq);
            (void)ibv_wc_read_dlid_path_bits(cq); (void)ibv_wc_read_vendor_err(cq);
            if (g[k].status != IBV_WC_SUCCESS)
                printf("completion %llu: %s\n", (unsigned long long)g[k].wr_id,
                       ibv_wc_status_str(g[k].status));
            CHECK(g[k].status == IBV_WC_SUCCESS);
            k++;
        } while (k < n && (rc = ibv_next_poll(cq)) == 0);
        CHECK(rc == 0 || rc == ENOENT);
        ibv_end_poll(cq);
    }
}

int main(int argc, char **argv)
{
    int server = argc > 1 && !strcmp(argv[1], "server");
    setvbuf(stdout, NULL, _IOLBF, 0);
    struct ibv_context *ctx = open_first_device();
    struct ibv_pd *pd = ibv_alloc_pd(ctx);
    CHECK(pd);
    char *buf = aligned_alloc(4096, 4096);
    memset(buf, 0, 4096);
    struct ibv_mr *mr = ibv_reg_mr(pd, buf, 4096, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE |
                                   IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_ATOMIC);
    CHECK(mr);

    /* extended CQ: timestamps are not offered (EOPNOTSUPP), unknown flags are EINVAL */
    struct ibv_cq_init_attr_ex ca = {.cqe = 64, .wc_flags = IBV_WC_EX_WITH_COMPLETION_TIMESTAMP};
    errno = 0;
    CHECK(!ibv_create_cq_ex(ctx, &ca) && errno == EOPNOTSUPP);
    ca.wc_flags = 1ull << 40;
    errno = 0;
    CHECK(!ibv_create_cq_ex(ctx, &ca) && errno == EINVAL);
    ca.wc_flags = wc_flags;
    cq = ibv_create_cq_ex(ctx, &ca);
    CHECK(cq);
    struct ibv_poll_cq_attr pa = {0};
    CHECK(ibv_start_poll(cq, &pa) == ENOENT);      /* empty; no end_poll after ENOENT */

    /* a plain QP has no ibv_qp_ex; unsupported send ops are EOPNOTSUPP */
    struct ibv_qp_init_attr_ex qa = {
        .send_cq = ibv_cq_ex_to_cq(cq), .recv_cq = ibv_cq_ex_to_cq(cq), .qp_type = IBV_QPT_RC,
        .cap = {.max_send_wr = 16, .max_recv_wr = 16, .max_send_sge = 2, .max_recv_sge = 1,
                .max_inline_data = 64},
        .comp_mask = IBV_QP_INIT_ATTR_PD, .pd = pd};
    struct ibv_qp *plain = ibv_create_qp_ex(ctx, &qa);
    CHECK(plain && ibv_qp_to_qp_ex(plain) == NULL);
    CHECK(ibv_destroy_qp(plain) == 0);
    qa.comp_mask |= IBV_QP_INIT_ATTR_SEND_OPS_FLAGS;
    qa.send_ops_flags = IBV_QP_EX_WITH_TSO;
    errno = 0;
    CHECK(!ibv_create_qp_ex(ctx, &qa) && errno == EOPNOTSUPP);
    qa.send_ops_flags = IBV_QP_EX_WITH_SEND | IBV_QP_EX_WITH_SEND_WITH_IMM | IBV_QP_EX_WITH_RDMA_WRITE |
                        IBV_QP_EX_WITH_RDMA_WRITE_WITH_IMM | IBV_QP_EX_WITH_RDMA_READ |
                        IBV_QP_EX_WITH_ATOMIC_CMP_AND_SWP | IBV_QP_EX_WITH_ATOMIC_FETCH_AND_ADD;
    struct ibv_qp *qp = ibv_create_qp_ex(ctx, &qa);
    CHECK(qp);
    struct ibv_qp_ex *qx = ibv_qp_to_qp_ex(qp);
    CHECK(qx);

    to_init(qp);
    if (server) {       /* the receives are there before the peer learns our QPN */
        uint64_t *ctr = (uint64_t *)(buf + 2048);
        *ctr = 100;
        for (int i = 0; i < 2; i++) {
            struct ibv_sge s = {.addr = (uintptr_t)buf + 1024 + 64 * i, .length = 64, .lkey = mr->lkey};
            struct ibv_recv_wr r = {.wr_id = 100 + i, .sg_list = &s, .num_sge = 1}, *bad;
            CHECK(ibv_post_recv(qp, &r, &bad) == 0);
        }
    }
    struct peer p;
    exchange(ctx, qp->qp_num, buf, mr->rkey, 0, &p);
    connect_qp(qp, &p, 1);
    unsigned rrkey = p.rkey;
    unsigned long long raddr = p.addr;

    struct got g[8];
    if (server) {
        poll_n(1, g);    /* the SEND_WITH_IMM (inline), after the RDMA WRITE before it */
        CHECK(g[0].wr_id == 100 && g[0].opcode == IBV_WC_RECV && g[0].byte_len == 7);
        CHECK((g[0].flags & IBV_WC_WITH_IMM) && g[0].imm == 0x1234 && g[0].qp_num == qp->qp_num);
        CHECK(!memcmp(buf + 1024, "inline!", 7));
        CHECK(!strcmp(buf, "hello write"));
        poll_n(1, g);    /* the client's last send: its reads and atomics are done */
        CHECK(g[0].wr_id == 101 && g[0].byte_len == 3 && !(g[0].flags & IBV_WC_WITH_IMM));
        CHECK(*(uint64_t *)(buf + 2048) == 7);    /* 100 + 5, then swapped 105 -> 7 */
    } else {
        strcpy(buf + 512, "hello write");
        qx->wr_flags = IBV_SEND_SIGNALED;
        ibv_wr_start(qx);                          /* an aborted batch posts nothing */
        qx->wr_id = 99;
        ibv_wr_send(qx);
        ibv_wr_set_sge(qx, mr->lkey, (uintptr_t)buf + 512, 4);
        ibv_wr_abort(qx);
        ibv_wr_start(qx);                          /* a bad batch posts nothing: EINVAL */
        ibv_wr_send(qx);
        struct ibv_sge three[3] = {{0}};
        ibv_wr_set_sge_list(qx, 3, three);
        CHECK(ibv_wr_complete(qx) == EINVAL);

        ibv_wr_start(qx);
        qx->wr_id = 1;
        ibv_wr_rdma_write(qx, rrkey, raddr);
        ibv_wr_set_sge(qx, mr->lkey, (uintptr_t)buf + 512, 12);
        qx->wr_id = 2;
        ibv_wr_send_imm(qx, htonl(0x1234));
        char tmp[8] = "inline!";
        ibv_wr_set_inline_data(qx, tmp, 7);
        memset(tmp, 'x', sizeof(tmp));             /* copied at the call */
        CHECK(ibv_wr_complete(qx) == 0);
        poll_n(2, g);
        CHECK(g[0].wr_id == 1 && g[0].opcode == IBV_WC_RDMA_WRITE);
        CHECK(g[1].wr_id == 2 && g[1].opcode == IBV_WC_SEND);

        ibv_wr_start(qx);
        qx->wr_id = 3;
        ibv_wr_rdma_read(qx, rrkey, raddr);
        struct ibv_sge two[2] = {{(uintptr_t)buf + 1024, 6, mr->lkey}, {(uintptr_t)buf + 1100, 6, mr->lkey}};
        ibv_wr_set_sge_list(qx, 2, two);
        qx->wr_id = 4;
        ibv_wr_atomic_fetch_add(qx, rrkey, raddr + 2048, 5);
        ibv_wr_set_sge(qx, mr->lkey, (uintptr_t)buf + 2048, 8);
        qx->wr_id = 5;
        ibv_wr_atomic_cmp_swp(qx, rrkey, raddr + 2048, 105, 7);
        ibv_wr_set_sge(qx, mr->lkey, (uintptr_t)buf + 2056, 8);
        CHECK(ibv_wr_complete(qx) == 0);
        poll_n(3, g);
        CHECK(g[0].wr_id == 3 && g[0].opcode == IBV_WC_RDMA_READ && g[0].byte_len == 12);
        CHECK(!memcmp(buf + 1024, "hello ", 6) && !memcmp(buf + 1100, "write", 6));
        CHECK(g[1].wr_id == 4 && g[1].opcode == IBV_WC_FETCH_ADD && *(uint64_t *)(buf + 2048) == 100);
        CHECK(g[2].wr_id == 5 && g[2].opcode == IBV_WC_COMP_SWAP && *(uint64_t *)(buf + 2056) == 105);

        ibv_wr_start(qx);
        qx->wr_id = 6;
        ibv_wr_send(qx);
        ibv_wr_set_sge(qx, mr->lkey, (uintptr_t)buf + 512, 3);
        CHECK(ibv_wr_complete(qx) == 0);
        poll_n(1, g);
        CHECK(g[0].wr_id == 6);
    }
    CHECK(ibv_destroy_qp(qp) == 0);
    CHECK(ibv_destroy_cq(ibv_cq_ex_to_cq(cq)) == 0);
    CHECK(ibv_dereg_mr(mr) == 0);
    CHECK(ibv_dealloc_pd(pd) == 0);
    CHECK(ibv_close_device(ctx) == 0);
    printf("OK\n");
    return 0;
}
