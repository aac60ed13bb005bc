/* bad_use.c — libibverbs' documented errors for bad use, on rnicd's libibverbs (run through
 * `rnic exec`): every check prints what it expected; the exit status is the number of failures. */
#include <errno.h>
#include <fcntl.h>
#include <infiniband/verbs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

static int failures;
#define CHECK(cond, ...) do { if (cond) { printf("ok   "); } else { printf("FAIL "); failures++; } \
                              printf(__VA_ARGS__); printf("\n"); } while (0)

static int poll_one(struct ibv_cq *cq, struct ibv_wc *wc)
{
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        int n = ibv_poll_cq(cq, 1, wc);
        if (n)
            return n;
        clock_gettime(CLOCK_MONOTONIC, &t);
        if (t.tv_sec - t0.tv_sec > 5)
            return 0;
    }
}

/* How many mappings of this process are rnic's registration memfds? */
static int memfd_mappings(void)
{
    FILE *f = fopen("/proc/self/maps", "r");
    char line[512];
    int n = 0;
    while (f && fgets(line, sizeof(line), f))
        n += strstr(line, "memfd:rnic-mr") != NULL;
    if (f)
        fclose(f);
    return n;
}

/* `bad_use fatal`: the daemon goes away while a context is open (the test stops it when
 * this prints "ready" and then writes a line): a wait for a completion event and a CQ being
 * polled fail instead of waiting or spinning forever, one IBV_EVENT_DEVICE_FATAL, then
 * errors. */
static int fatal(struct ibv_context *ctx)
{
    struct ibv_cq *cq = ibv_create_cq(ctx, 16, NULL, NULL, 0);
    if (!cq) {
        printf("FAIL create_cq\n");
        return 1;
    }
    struct ibv_comp_channel *ch = ibv_create_comp_channel(ctx);
    struct ibv_cq *armed = ch ? ibv_create_cq(ctx, 16, NULL, ch, 0) : NULL;
    if (!armed || ibv_req_notify_cq(armed, 0)) {
        printf("FAIL channel\n");
        return 1;
    }
    printf("ready\n");
    fflush(stdout);
    char line[16];
    if (!fgets(line, sizeof(line), stdin))
        return 1;
    struct ibv_cq *ev_cq;
    void *ev_ctx;
    errno = 0;
    CHECK(ibv_get_cq_event(ch, &ev_cq, &ev_ctx) < 0 && errno == EIO,
          "waiting for a completion event fails once the daemon is gone (errno %d)", errno);
    struct ibv_wc wc;
    int n = 0;
    for (long i = 0; i < 100000000 && n == 0; i++)
        n = ibv_poll_cq(cq, 1, &wc);
    CHECK(n < 0, "polling the CQ fails once the daemon is gone (%d)", n);
    struct ibv_async_event ev;
    int rc = ibv_get_async_event(ctx, &ev);
    CHECK(rc == 0 && ev.event_type == IBV_EVENT_DEVICE_FATAL,
          "the daemon went away: IBV_EVENT_DEVICE_FATAL (%s)", rc ? "none" : ibv_event_type_str(ev.event_type));
    if (rc == 0)
        ibv_ack_async_event(&ev);
    errno = 0;
    struct ibv_pd *pd = ibv_alloc_pd(ctx);
    CHECK(!pd && errno != 0, "then alloc_pd fails: %s", strerror(errno));
    CHECK(ibv_close_device(ctx) == 0, "close_device");
    printf("%s\n", failures ? "FAILED" : "OK");
    return failures;
}

int main(int argc, char **argv)
{
    int num;
    struct ibv_device **list = ibv_get_device_list(&num);
    if (!list || num < 1) {
        printf("FAIL no device\n");
        return 1;
    }
    struct ibv_context *ctx = ibv_open_device(list[0]);
    ibv_free_device_list(list);
    if (argc > 1 && !strcmp(argv[1], "fatal"))
        return fatal(ctx);
    struct ibv_pd *pd = ibv_alloc_pd(ctx);
    char *buf = malloc(8192);
    memset(buf, 0, 8192);
    struct ibv_mr *mr = ibv_reg_mr(pd, buf, 8192, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE);
    CHECK(ctx && pd && mr, "open, alloc_pd, reg_mr on malloc'ed memory");
    if (!mr)
        return 1;
    CHECK(memfd_mappings() > 0, "the registered pages are memfd-backed (shared with rnicd)");

    errno = 0;
    CHECK(!ibv_reg_mr(pd, buf, 0, IBV_ACCESS_LOCAL_WRITE) && errno == EINVAL,
          "reg_mr of length 0: EINVAL (errno %d)", errno);
    void *hole = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    munmap(hole, 8192);
    errno = 0;
    CHECK(!ibv_reg_mr(pd, hole, 4096, IBV_ACCESS_LOCAL_WRITE) && errno == EFAULT,
          "reg_mr of unmapped memory: EFAULT (errno %d)", errno);
    void *ro = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    errno = 0;
    CHECK(!ibv_reg_mr(pd, ro, 4096, IBV_ACCESS_LOCAL_WRITE) && errno == EFAULT,
          "reg_mr with LOCAL_WRITE of read-only memory: EFAULT (errno %d)", errno);
    errno = 0;
    CHECK(!ibv_alloc_mw(pd, (enum ibv_mw_type)3) && errno == EINVAL,
          "alloc_mw of an unknown type: EINVAL (errno %d)", errno);
    struct ibv_cq_init_attr_ex cqa = {.cqe = 4, .wc_flags = IBV_WC_EX_WITH_COMPLETION_TIMESTAMP};
    errno = 0;
    CHECK(!ibv_create_cq_ex(ctx, &cqa) && errno == EOPNOTSUPP,
          "create_cq_ex with completion timestamps: EOPNOTSUPP (errno %d)", errno);
    struct ibv_comp_channel *ch = ibv_create_comp_channel(ctx);
    CHECK(ch && fcntl(ch->fd, F_SETFL, fcntl(ch->fd, F_GETFL) | O_NONBLOCK) == 0,
          "create_comp_channel, O_NONBLOCK on its fd");
    struct ibv_cq *evcq;
    void *evctx;
    errno = 0;
    CHECK(ch && ibv_get_cq_event(ch, &evcq, &evctx) == -1 && errno == EAGAIN,
          "get_cq_event on a non-blocking channel with no event: EAGAIN (errno %d)", errno);
    CHECK(ch && ibv_destroy_comp_channel(ch) == 0, "destroy_comp_channel");

    struct ibv_cq *cq = ibv_create_cq(ctx, 16, NULL, NULL, 0);
    struct ibv_qp_init_attr ia = {.send_cq = cq, .recv_cq = cq, .qp_type = IBV_QPT_RC,
                                  .cap = {.max_send_wr = 4, .max_recv_wr = 4,
                                          .max_send_sge = 1, .max_recv_sge = 1}};
    struct ibv_qp *qp = ibv_create_qp(pd, &ia);
    CHECK(cq && qp, "create_cq, create_qp (RC)");
    if (!qp)
        return 1;

    struct ibv_sge sge = {.addr = (uintptr_t)buf, .length = 64, .lkey = mr->lkey};
    struct ibv_send_wr wr = {.wr_id = 1, .sg_list = &sge, .num_sge = 1, .opcode = IBV_WR_SEND,
                             .send_flags = IBV_SEND_SIGNALED}, *bad = NULL;
    int rc = ibv_post_send(qp, &wr, &bad);
    CHECK(rc == EINVAL && bad == &wr, "post_send to a QP in RESET: EINVAL and bad_wr (rc %d)", rc);
    struct ibv_recv_wr rwr = {.wr_id = 2, .sg_list = &sge, .num_sge = 1}, *rbad = NULL;
    rc = ibv_post_recv(qp, &rwr, &rbad);
    CHECK(rc == EINVAL && rbad == &rwr, "post_recv to a QP in RESET: EINVAL and bad_wr (rc %d)", rc);

    /* connect the QP to itself: RTR/RTS with its own GID and QP number */
    union ibv_gid gid;
    ibv_query_gid(ctx, 1, 0, &gid);
    struct ibv_qp_attr a = {.qp_state = IBV_QPS_INIT, .port_num = 1,
                            .qp_access_flags = IBV_ACCESS_REMOTE_WRITE};
    rc = ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS);
    memset(&a, 0, sizeof(a));
    a.qp_state = IBV_QPS_RTR;
    a.path_mtu = IBV_MTU_1024;
    a.dest_qp_num = qp->qp_num;
    a.max_dest_rd_atomic = 1;
    a.min_rnr_timer = 12;
    a.ah_attr.is_global = 1;
    a.ah_attr.port_num = 1;
    a.ah_attr.grh.dgid = gid;
    a.ah_attr.grh.hop_limit = 1;
    rc |= ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN |
                                    IBV_QP_RQ_PSN | IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER);
    memset(&a, 0, sizeof(a));
    a.qp_state = IBV_QPS_RTS;
    a.timeout = 14;
    a.retry_cnt = 7;
    a.rnr_retry = 7;
    a.max_rd_atomic = 1;
    rc |= ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT |
                                    IBV_QP_RNR_RETRY | IBV_QP_SQ_PSN | IBV_QP_MAX_QP_RD_ATOMIC);
    CHECK(rc == 0, "modify_qp RESET -> INIT -> RTR -> RTS (to itself)");

    /* a good RDMA WRITE to itself, then one with a bad lkey */
    strcpy(buf, "hello");
    struct ibv_send_wr w = {.wr_id = 10, .sg_list = &sge, .num_sge = 1,
                            .opcode = IBV_WR_RDMA_WRITE, .send_flags = IBV_SEND_SIGNALED};
    sge.length = 6;
    w.wr.rdma.remote_addr = (uintptr_t)buf + 4096;
    w.wr.rdma.rkey = mr->rkey;
    struct ibv_wc wc;
    rc = ibv_post_send(qp, &w, &bad);
    int n = poll_one(cq, &wc);
    CHECK(rc == 0 && n == 1 && wc.status == IBV_WC_SUCCESS && wc.wr_id == 10 &&
          !strcmp(buf + 4096, "hello"), "RDMA WRITE to itself: success, data placed (%s)",
          n ? ibv_wc_status_str(wc.status) : "no completion");
    sge.lkey = mr->lkey ^ 0x5a5a00;
    w.wr_id = 11;
    rc = ibv_post_send(qp, &w, &bad);
    n = poll_one(cq, &wc);
    CHECK(rc == 0 && n == 1 && wc.wr_id == 11 && wc.status == IBV_WC_LOC_PROT_ERR,
          "post_send with a bad lkey: posted, completes with IBV_WC_LOC_PROT_ERR (%s)",
          n ? ibv_wc_status_str(wc.status) : "no completion");
    struct ibv_qp_attr qa;
    struct ibv_qp_init_attr qia;
    rc = ibv_query_qp(qp, &qa, IBV_QP_STATE, &qia);
    CHECK(rc == 0 && qa.qp_state == IBV_QPS_ERR, "the QP is then in ERR (query_qp: %d)", qa.qp_state);

    rc = ibv_destroy_cq(cq);
    CHECK(rc == EBUSY, "destroy_cq of a CQ a QP uses: EBUSY (rc %d)", rc);
    rc = ibv_dealloc_pd(pd);
    CHECK(rc == EBUSY, "dealloc_pd of a PD with a QP and an MR: EBUSY (rc %d)", rc);
    CHECK(ibv_destroy_qp(qp) == 0 && ibv_destroy_cq(cq) == 0 && ibv_dereg_mr(mr) == 0 &&
          ibv_dealloc_pd(pd) == 0, "destroy in order: qp, cq, mr, pd");
    CHECK(memfd_mappings() == 0 && !strcmp(buf + 4096, "hello"),
          "after dereg_mr the buffer is private memory again, contents kept");
    free(buf);
    CHECK(ibv_close_device(ctx) == 0, "close_device");
    printf("%s\n", failures ? "FAILED" : "OK");
    return failures;
}
