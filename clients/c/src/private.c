/*
 * private.c — rdma-core's IBVERBS_PRIVATE_34 interface (for providers) and old sysfs/kernel
 * helpers. Provider libraries that programs link (libmlx5, libefa: perftest) reference these
 * and are bound at load time (BIND_NOW), so each symbol must exist; none of them is used with
 * rnicd. verbs_register_driver_34 is called from providers' constructors: harmless here.
 * Deliberately without verbs.h: only the symbols matter.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define RNIC_EXPORT __attribute__((visibility("default")))
#define STUB(name) RNIC_EXPORT int name(void) { return EOPNOTSUPP; }

RNIC_EXPORT void verbs_register_driver_34(void *ops) { (void)ops; }
RNIC_EXPORT _Bool verbs_allow_disassociate_destroy;   /* a variable in rdma-core */
RNIC_EXPORT void ibv_register_driver(const char *name, void *init) { (void)name; (void)init; }
RNIC_EXPORT void __verbs_log(void *ctx, int level, const char *fmt, ...) { (void)ctx; (void)level; (void)fmt; }
RNIC_EXPORT int ibv_read_sysfs_file(const char *dir, const char *file, char *buf, size_t size)
{
    (void)dir; (void)file; (void)buf; (void)size;
    errno = ENOENT;     /* no sysfs device: callers fall back */
    return -1;
}
RNIC_EXPORT int ibv_read_ibdev_sysfs_file(char *buf, size_t size, void *dev, const char *fmt, ...)
{
    (void)buf; (void)size; (void)dev; (void)fmt;
    errno = ENOENT;
    return -1;
}
RNIC_EXPORT const char *ibv_get_sysfs_path(void) { return "/sys"; }
RNIC_EXPORT void *_verbs_init_and_alloc_context(void) { errno = EOPNOTSUPP; return NULL; }
RNIC_EXPORT void verbs_uninit_context(void *c) { (void)c; }
RNIC_EXPORT void verbs_set_ops(void *c, const void *ops) { (void)c; (void)ops; }
RNIC_EXPORT void verbs_init_cq(void *cq, void *ctx, void *ch, void *cq_ctx)
{
    (void)cq; (void)ctx; (void)ch; (void)cq_ctx;
}
/* ibv_copy_*_from_kern/to_kern convert uverbs kernel structures, which rnicd never has. */
RNIC_EXPORT void ibv_copy_qp_attr_from_kern(void *dst, const void *src) { (void)dst; (void)src; }
RNIC_EXPORT void ibv_copy_ah_attr_from_kern(void *dst, const void *src) { (void)dst; (void)src; }
RNIC_EXPORT void ibv_copy_path_rec_from_kern(void *dst, const void *src) { (void)dst; (void)src; }
RNIC_EXPORT void ibv_copy_path_rec_to_kern(void *dst, const void *src) { (void)dst; (void)src; }

STUB(__ioctl_final_num_attrs) STUB(execute_ioctl) STUB(verbs_open_device)
STUB(ibv_cmd_advise_mr) STUB(ibv_cmd_alloc_dm) STUB(ibv_cmd_alloc_mw) STUB(ibv_cmd_alloc_pd)
STUB(ibv_cmd_attach_mcast) STUB(ibv_cmd_close_xrcd) STUB(ibv_cmd_create_ah)
STUB(ibv_cmd_create_counters) STUB(ibv_cmd_create_cq) STUB(ibv_cmd_create_cq_ex)
STUB(ibv_cmd_create_flow) STUB(ibv_cmd_create_flow_action_esp) STUB(ibv_cmd_create_qp)
STUB(ibv_cmd_create_qp_ex) STUB(ibv_cmd_create_qp_ex2) STUB(ibv_cmd_create_rwq_ind_table)
STUB(ibv_cmd_create_srq) STUB(ibv_cmd_create_srq_ex) STUB(ibv_cmd_create_wq)
STUB(ibv_cmd_dealloc_mw) STUB(ibv_cmd_dealloc_pd) STUB(ibv_cmd_dereg_mr) STUB(ibv_cmd_destroy_ah)
STUB(ibv_cmd_destroy_counters) STUB(ibv_cmd_destroy_cq) STUB(ibv_cmd_destroy_flow)
STUB(ibv_cmd_destroy_flow_action) STUB(ibv_cmd_destroy_qp) STUB(ibv_cmd_destroy_rwq_ind_table)
STUB(ibv_cmd_destroy_srq) STUB(ibv_cmd_destroy_wq) STUB(ibv_cmd_detach_mcast) STUB(ibv_cmd_free_dm)
STUB(ibv_cmd_get_context) STUB(ibv_cmd_modify_cq) STUB(ibv_cmd_modify_flow_action_esp)
STUB(ibv_cmd_modify_qp) STUB(ibv_cmd_modify_qp_ex) STUB(ibv_cmd_modify_srq) STUB(ibv_cmd_modify_wq)
STUB(ibv_cmd_open_qp) STUB(ibv_cmd_open_xrcd) STUB(ibv_cmd_poll_cq) STUB(ibv_cmd_post_recv)
STUB(ibv_cmd_post_send) STUB(ibv_cmd_post_srq_recv) STUB(ibv_cmd_query_context)
STUB(ibv_cmd_query_device_any) STUB(ibv_cmd_query_mr) STUB(ibv_cmd_query_port)
STUB(ibv_cmd_query_qp) STUB(ibv_cmd_query_srq) STUB(ibv_cmd_read_counters)
STUB(ibv_cmd_reg_dm_mr) STUB(ibv_cmd_reg_dmabuf_mr) STUB(ibv_cmd_reg_mr)
STUB(ibv_cmd_req_notify_cq) STUB(ibv_cmd_rereg_mr) STUB(ibv_cmd_resize_cq)
