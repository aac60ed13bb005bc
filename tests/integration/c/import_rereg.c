/* import_rereg.c — on one daemon: ibv_import_device / ibv_import_pd / ibv_import_mr /
 * ibv_unimport_* in a forked child sharing the parent's context (its cmd_fd), and
 * ibv_rereg_mr (access, then translation) with an RDMA WRITE between two QPs of the context
 * landing in the MR's new pages. */
#include <sys/wait.h>
#include <unistd.h>

#include "common.h"

int main(void)
{
    struct ibv_context *ctx = open_first_device();
    struct ibv_pd *pd = ibv_alloc_pd(ctx);
    CHECK(pd);
    char *buf = calloc(1, 8192), *buf2 = calloc(1, 8192);
    struct ibv_mr *mr = ibv_reg_mr(pd, buf, 4096, IBV_ACCESS_LOCAL_WRITE);
    CHECK(mr);

    /* ---- import, in a child process sharing the context ---- */
    errno = 0;
    CHECK(!ibv_import_device(-1) && errno == EBADF);
    int fd = dup(ctx->cmd_fd), pipefd[2];
    CHECK(pipe(pipefd) == 0);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        struct ibv_context *c2 = ibv_import_device(fd);
        CHECK(c2 && !strcmp(ibv_get_device_name(c2->device), ibv_get_device_name(ctx->device)));
        errno = 0;
        CHECK(!ibv_import_pd(c2, pd->handle + 1000) && errno == ENOENT);
        struct ibv_pd *pd2 = ibv_import_pd(c2, pd->handle);
        CHECK(pd2 && pd2->handle == pd->handle);
        struct ibv_mr *mr2 = ibv_import_mr(pd2, mr->handle);
        CHECK(mr2 && mr2->lkey == mr->lkey && mr2->rkey == mr->rkey && mr2->addr == (void *)buf &&
              mr2->length == 4096 && mr2->pd == pd2);
        struct ibv_pd *own = ibv_alloc_pd(c2);     /* objects made here are shared too */
        CHECK(own);
        CHECK(write(pipefd[1], &own->handle, 4) == 4);
        ibv_unimport_mr(mr2);
        ibv_unimport_pd(pd2);
        CHECK(ibv_close_device(c2) == 0);
        _exit(0);
    }
    close(fd);
    int st;
    CHECK(waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0);
    struct ibv_pd *again = ibv_import_pd(ctx, pd->handle);  /* the PD outlived the child's unimport */
    CHECK(again);
    ibv_unimport_pd(again);
    uint32_t child_pd;
    CHECK(read(pipefd[0], &child_pd, 4) == 4);
    struct ibv_pd *theirs = ibv_import_pd(ctx, child_pd);  /* the child's PD, in our context */
    CHECK(theirs && ibv_dealloc_pd(theirs) == 0);

    /* ---- rereg_mr, then a write into the new translation ---- */
    CHECK(ibv_rereg_mr(mr, 0, NULL, NULL, 0, 0) == IBV_REREG_MR_ERR_INPUT);
    CHECK(ibv_rereg_mr(mr, IBV_REREG_MR_CHANGE_ACCESS, NULL, NULL, 0,
                       IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE) == 0);
    CHECK(ibv_rereg_mr(mr, IBV_REREG_MR_CHANGE_TRANSLATION, NULL, buf2, 8192, 0) == 0);
    CHECK(mr->addr == buf2 && mr->length == 8192);
    struct ibv_mr *src = ibv_reg_mr(pd, buf, 4096, IBV_ACCESS_LOCAL_WRITE);
    CHECK(src);
    struct ibv_cq *cq = ibv_create_cq(ctx, 16, NULL, NULL, 0);
    CHECK(cq);
    struct ibv_qp_init_attr ia = {.send_cq = cq, .recv_cq = cq, .qp_type = IBV_QPT_RC,
                                  .cap = {.max_send_wr = 4, .max_recv_wr = 4, .max_send_sge = 1,
                                          .max_recv_sge = 1}};
    struct ibv_qp *q1 = ibv_create_qp(pd, &ia), *q2 = ibv_create_qp(pd, &ia);
    CHECK(q1 && q2);
    union ibv_gid gid;
    CHECK(ibv_query_gid(ctx, 1, 0, &gid) == 0);
    struct peer p1 = {.qpn = q1->qp_num, .gid = gid}, p2 = {.qpn = q2->qp_num, .gid = gid};
    to_init(q1);
    to_init(q2);
    connect_qp(q1, &p2, 1);
    connect_qp(q2, &p1, 1);
    strcpy(buf, "rereg ok");
    struct ibv_sge s = {(uintptr_t)buf, 9, src->lkey};
    struct ibv_send_wr w = {.wr_id = 1, .sg_list = &s, .num_sge = 1, .opcode = IBV_WR_RDMA_WRITE,
                            .send_flags = IBV_SEND_SIGNALED,
                            .wr.rdma = {(uintptr_t)buf2 + 4096, mr->rkey}}, *bad;
    CHECK(ibv_post_send(q1, &w, &bad) == 0);
    struct ibv_wc wc = wait_wc(cq);
    CHECK(wc.status == IBV_WC_SUCCESS && !strcmp(buf2 + 4096, "rereg ok"));
    CHECK(ibv_destroy_qp(q1) == 0 && ibv_destroy_qp(q2) == 0 && ibv_destroy_cq(cq) == 0);
    CHECK(ibv_dereg_mr(src) == 0 && ibv_dereg_mr(mr) == 0);
    CHECK(ibv_close_device(ctx) == 0);
    printf("OK\n");
    return 0;
}
