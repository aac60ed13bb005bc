/* common.h — what the two-process test programs share: CHECK, the "INFO" line exchange (the
 * test relays each side's line to the other's stdin) and bringing a connected QP to RTS. */
#ifndef RNIC_TEST_COMMON_H
#define RNIC_TEST_COMMON_H
#include <errno.h>
#include <infiniband/verbs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define CHECK(c) do { if (!(c)) { printf("FAIL %s:%d %s (errno %d)\n", __FILE__, __LINE__, #c, errno); exit(1); } } while (0)

struct peer { unsigned qpn, rkey, extra; unsigned long long addr; union ibv_gid gid; };

/* "INFO qpn gid addr rkey extra" out, the peer's in. */
static inline void exchange(struct ibv_context *ctx, uint32_t qpn, void *addr, uint32_t rkey,
                            uint32_t extra, struct peer *p)
{
    union ibv_gid gid;
    char hex[33], rhex[33];
    CHECK(ibv_query_gid(ctx, 1, 0, &gid) == 0);
    for (int i = 0; i < 16; i++)
        sprintf(hex + 2 * i, "%02x", gid.raw[i]);
    printf("INFO %u %s %llu %u %u\n", qpn, hex, (unsigned long long)(uintptr_t)addr, rkey, extra);
    fflush(stdout);
    CHECK(scanf(" INFO %u %32s %llu %u %u", &p->qpn, rhex, &p->addr, &p->rkey, &p->extra) == 5);
    for (int i = 0; i < 16; i++)
        CHECK(sscanf(rhex + 2 * i, "%2hhx", &p->gid.raw[i]) == 1);
}

/* One more line each way (a later round of the exchange). */
static inline void say(const char *fmt, unsigned v)
{
    printf(fmt, v);
    printf("\n");
    fflush(stdout);
}

/* The first device (rnicd's rnic0 through `rnic exec`), opened. */
static inline struct ibv_context *open_first_device(void)
{
    int n;
    struct ibv_device **devs = ibv_get_device_list(&n);
    CHECK(devs && n > 0);
    struct ibv_context *ctx = ibv_open_device(devs[0]);
    CHECK(ctx);
    ibv_free_device_list(devs);
    return ctx;
}

static inline void to_init(struct ibv_qp *qp)
{
    struct ibv_qp_attr a = {.qp_state = IBV_QPS_INIT, .port_num = 1,
                            .qp_access_flags = IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ |
                                               IBV_ACCESS_REMOTE_ATOMIC};
    CHECK(ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS) == 0);
}

/* INIT -> RTR -> RTS toward the peer's QP (RC or XRC); rts 0 stops at RTR (an XRC target). */
static inline void connect_qp(struct ibv_qp *qp, const struct peer *p, int rts)
{
    struct ibv_qp_attr a;
    memset(&a, 0, sizeof(a));
    a.qp_state = IBV_QPS_RTR;
    a.path_mtu = IBV_MTU_1024;
    a.dest_qp_num = p->qpn;
    a.max_dest_rd_atomic = 4;
    a.min_rnr_timer = 12;
    a.ah_attr.is_global = 1;
    a.ah_attr.grh.dgid = p->gid;
    a.ah_attr.grh.hop_limit = 1;
    a.ah_attr.port_num = 1;
    int mask = IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN;
    if (qp->qp_type != IBV_QPT_XRC_SEND)      /* an XRC initiator has no responder side */
        mask |= IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER;
    CHECK(ibv_modify_qp(qp, &a, mask) == 0);
    if (!rts)
        return;
    a.qp_state = IBV_QPS_RTS;
    a.timeout = 14;
    a.retry_cnt = 7;
    a.rnr_retry = 7;
    a.max_rd_atomic = 4;
    CHECK(ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY |
                        IBV_QP_SQ_PSN | IBV_QP_MAX_QP_RD_ATOMIC) == 0);
}

/* Wait (10 s at most) for one completion on a plain CQ. */
static inline struct ibv_wc wait_wc(struct ibv_cq *cq)
{
    struct ibv_wc wc;
    int n;
    time_t end = time(NULL) + 10;
    while ((n = ibv_poll_cq(cq, 1, &wc)) == 0)
        CHECK(time(NULL) < end);
    CHECK(n == 1);
    return wc;
}
#endif
