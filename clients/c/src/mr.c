/* mr.c — protection domains and memory regions (docs/memory-registration.md). */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "priv.h"

#define WRITE_ACCESS (IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | \
                      IBV_ACCESS_REMOTE_ATOMIC | IBV_ACCESS_MW_BIND)

RNIC_EXPORT struct ibv_pd *ibv_alloc_pd(struct ibv_context *ctx)
{
    struct rreply rep;
    if (rnic_call(rctx(ctx), "alloc_pd", NULL, NULL, 0, &rep, 0))
        return NULL;
    int64_t h;
    int bad = mo_int(rep.r, "pd", &h);
    rreply_free(&rep);
    if (bad) {
        errno = EPROTO;
        return NULL;
    }
    struct rnic_pd *pd = calloc(1, sizeof(*pd));
    if (!pd) {
        rnic_simple(rctx(ctx), "dealloc_pd", "pd", (uint32_t)h);
        errno = ENOMEM;
        return NULL;
    }
    pd->pd.context = ctx;
    pd->pd.handle = pd->handle = (uint32_t)h;
    return &pd->pd;
}

RNIC_EXPORT int ibv_dealloc_pd(struct ibv_pd *pd)
{
    struct rnic_pd *p = container(pd, struct rnic_pd, pd);
    if (p->base) {            /* a parent domain: rnicd has no object of its own for it */
        __atomic_sub_fetch(&p->base->children, 1, __ATOMIC_RELAXED);
        free(p);
        return 0;
    }
    if (__atomic_load_n(&p->children, __ATOMIC_RELAXED))
        return EBUSY;         /* a parent domain still uses it */
    if (rnic_simple(rctx(pd->context), "dealloc_pd", "pd", pd->handle))
        return errno;
    free(p);
    return 0;
}

/* ibv_alloc_parent_domain(3): a PD standing for attr->pd in every verb (QPs, SRQs, MRs,
 * extended CQs) with a context for the application. rnicd places queues in its own shared
 * memory, so the allocators are accepted and never called: the man page lets a provider
 * allocate as it would without them (IBV_ALLOCATOR_USE_DEFAULT). Thread domains are not
 * offered (ibv_alloc_td answers EOPNOTSUPP), so attr->td must be NULL. */
struct ibv_pd *rnic_alloc_parent_domain(struct ibv_context *ctx,
                                        struct ibv_parent_domain_init_attr *attr)
{
    const uint32_t known = IBV_PARENT_DOMAIN_INIT_ATTR_ALLOCATORS |
                           IBV_PARENT_DOMAIN_INIT_ATTR_PD_CONTEXT;
    if (!attr || !attr->pd || attr->pd->context != ctx || (attr->comp_mask & ~known) ||
        container(attr->pd, struct rnic_pd, pd)->base ||
        ((attr->comp_mask & IBV_PARENT_DOMAIN_INIT_ATTR_ALLOCATORS) &&
         (!attr->alloc || !attr->free))) {
        errno = EINVAL;
        return NULL;
    }
    if (attr->td) {
        errno = EOPNOTSUPP;
        return NULL;
    }
    struct rnic_pd *base = container(attr->pd, struct rnic_pd, pd);
    struct rnic_pd *pd = calloc(1, sizeof(*pd));
    if (!pd) {
        errno = ENOMEM;
        return NULL;
    }
    pd->pd.context = ctx;
    pd->pd.handle = pd->handle = base->handle;
    pd->base = base;
    __atomic_add_fetch(&base->children, 1, __ATOMIC_RELAXED);
    return &pd->pd;
}

static struct ibv_mr *reg(struct ibv_pd *pd, void *addr, size_t length, uint64_t iova,
                          unsigned int access)
{
    access &= ~(unsigned int)IBV_ACCESS_OPTIONAL_RANGE;   /* hints rnicd may ignore */
    if (iova != (uintptr_t)addr) {
        rnic_log("reg_mr: an iova other than the address is not supported");
        errno = EOPNOTSUPP;
        return NULL;
    }
    if ((access & (IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_ATOMIC)) &&
        !(access & IBV_ACCESS_LOCAL_WRITE)) {
        errno = EINVAL;   /* IBTA 10.6.3.1: remote write/atomic need local write */
        return NULL;
    }
    struct rpin *pin;
    int rc = rpin_get(addr, length, (access & WRITE_ACCESS) != 0, &pin);
    if (rc < 0) {
        errno = -rc;
        return NULL;
    }
    struct rargs a;
    struct rreply rep;
    int fds[16], nfds = 0;
    rargs_init(&a);
    ra_uint(&a, "pd", pd->handle);
    ra_uint(&a, "addr", (uintptr_t)addr);
    ra_uint(&a, "length", length);
    ra_uint(&a, "access", access);
    rpin_args(pin, &a, fds, &nfds);
    if (rnic_call(rctx(pd->context), "reg_mr", &a, fds, nfds, &rep, 0)) {
        int e = errno;
        rpin_put(pin);
        errno = e;
        return NULL;
    }
    int64_t h, lkey, rkey;
    int bad = mo_int(rep.r, "mr", &h) | mo_int(rep.r, "lkey", &lkey) | mo_int(rep.r, "rkey", &rkey);
    rreply_free(&rep);
    struct rnic_mr *mr = bad ? NULL : calloc(1, sizeof(*mr));
    if (!mr) {
        if (!bad)
            rnic_simple(rctx(pd->context), "dereg_mr", "mr", (uint32_t)h);
        rpin_put(pin);
        errno = bad ? EPROTO : ENOMEM;
        return NULL;
    }
    mr->mr.context = pd->context;
    mr->mr.pd = pd;
    mr->mr.addr = addr;
    mr->mr.length = length;
    mr->mr.handle = (uint32_t)h;
    mr->mr.lkey = (uint32_t)lkey;
    mr->mr.rkey = (uint32_t)rkey;
    mr->pin = pin;
    return &mr->mr;
}

#undef ibv_reg_mr
#undef ibv_reg_mr_iova
RNIC_EXPORT struct ibv_mr *ibv_reg_mr(struct ibv_pd *pd, void *addr, size_t length, int access)
{
    return reg(pd, addr, length, (uintptr_t)addr, (unsigned int)access);
}

RNIC_EXPORT struct ibv_mr *ibv_reg_mr_iova(struct ibv_pd *pd, void *addr, size_t length,
                                           uint64_t iova, int access)
{
    return reg(pd, addr, length, iova, (unsigned int)access);
}

RNIC_EXPORT struct ibv_mr *ibv_reg_mr_iova2(struct ibv_pd *pd, void *addr, size_t length,
                                            uint64_t iova, unsigned int access)
{
    return reg(pd, addr, length, iova, access);
}

RNIC_EXPORT int ibv_dereg_mr(struct ibv_mr *ibmr)
{
    struct rnic_mr *mr = container(ibmr, struct rnic_mr, mr);
    if (rnic_simple(rctx(ibmr->context), "dereg_mr", "mr", ibmr->handle))
        return errno;
    rpin_put(mr->pin);
    free(mr);
    return 0;
}

RNIC_EXPORT int ibv_rereg_mr(struct ibv_mr *ibmr, int flags, struct ibv_pd *pd, void *addr,
                             size_t length, int access)
{
    struct rnic_mr *mr = container(ibmr, struct rnic_mr, mr);
    const int known = IBV_REREG_MR_CHANGE_TRANSLATION | IBV_REREG_MR_CHANGE_PD |
                      IBV_REREG_MR_CHANGE_ACCESS;
    if (flags == 0 || (flags & ~known) ||
        ((flags & IBV_REREG_MR_CHANGE_TRANSLATION) && (!addr || !length)) ||
        ((flags & IBV_REREG_MR_CHANGE_PD) && !pd)) {
        errno = EINVAL;
        return IBV_REREG_MR_ERR_INPUT;
    }
    access &= ~IBV_ACCESS_OPTIONAL_RANGE;
    struct rpin *pin = NULL;
    struct rargs a;
    int fds[16], nfds = 0;
    rargs_init(&a);
    ra_uint(&a, "mr", ibmr->handle);
    ra_int(&a, "flags", flags);
    if (flags & IBV_REREG_MR_CHANGE_PD)
        ra_uint(&a, "pd", pd->handle);
    if (flags & IBV_REREG_MR_CHANGE_ACCESS)
        ra_uint(&a, "access", (unsigned)access);
    if (flags & IBV_REREG_MR_CHANGE_TRANSLATION) {
        int writable = (flags & IBV_REREG_MR_CHANGE_ACCESS) ? (access & WRITE_ACCESS) != 0 : 1;
        int rc = rpin_get(addr, length, writable, &pin);
        if (rc < 0) {
            rargs_free(&a);
            errno = -rc;
            return IBV_REREG_MR_ERR_INPUT;
        }
        ra_uint(&a, "addr", (uintptr_t)addr);
        ra_uint(&a, "length", length);
        rpin_args(pin, &a, fds, &nfds);
    }
    struct rreply rep;
    if (rnic_call(rctx(ibmr->context), "rereg_mr", &a, fds, nfds, &rep, 0)) {
        int e = errno;
        rpin_put(pin);
        errno = e;
        return IBV_REREG_MR_ERR_CMD;
    }
    rreply_free(&rep);
    if (flags & IBV_REREG_MR_CHANGE_TRANSLATION) {
        rpin_put(mr->pin);
        mr->pin = pin;
        ibmr->addr = addr;
        ibmr->length = length;
    }
    if (flags & IBV_REREG_MR_CHANGE_PD)
        ibmr->pd = pd;
    return 0;
}

/* ---- sharing an imported context's objects (ibv_import_pd(3), ibv_import_mr(3)) ---------- */
RNIC_EXPORT struct ibv_pd *ibv_import_pd(struct ibv_context *ctx, uint32_t handle)
{
    struct rargs a;
    struct rreply rep;
    rargs_init(&a);
    ra_uint(&a, "pd", handle);
    if (rnic_call(rctx(ctx), "import_pd", &a, NULL, 0, &rep, 0))
        return NULL;       /* ENOENT unless the shared context has it */
    rreply_free(&rep);
    struct rnic_pd *pd = calloc(1, sizeof(*pd));
    if (!pd) {
        errno = ENOMEM;
        return NULL;
    }
    pd->pd.context = ctx;
    pd->pd.handle = pd->handle = handle;
    return &pd->pd;
}

/* Forget the local object only; the PD lives on in the shared context. */
RNIC_EXPORT void ibv_unimport_pd(struct ibv_pd *pd)
{
    free(container(pd, struct rnic_pd, pd));
}

RNIC_EXPORT struct ibv_mr *ibv_import_mr(struct ibv_pd *pd, uint32_t handle)
{
    struct rargs a;
    struct rreply rep;
    rargs_init(&a);
    ra_uint(&a, "mr", handle);
    if (rnic_call(rctx(pd->context), "import_mr", &a, NULL, 0, &rep, 0))
        return NULL;
    int64_t addr, length, lkey, rkey;
    int bad = mo_int(rep.r, "addr", &addr) |
              mo_int(rep.r, "length", &length) | mo_int(rep.r, "lkey", &lkey) |
              mo_int(rep.r, "rkey", &rkey);
    rreply_free(&rep);
    if (bad) {
        errno = EPROTO;
        return NULL;
    }
    struct rnic_mr *mr = calloc(1, sizeof(*mr));
    if (!mr) {
        errno = ENOMEM;
        return NULL;
    }
    mr->mr.context = pd->context;
    mr->mr.pd = pd;
    mr->mr.addr = (void *)(uintptr_t)addr;   /* the registering process's address */
    mr->mr.length = (size_t)length;
    mr->mr.handle = handle;
    mr->mr.lkey = (uint32_t)lkey;
    mr->mr.rkey = (uint32_t)rkey;
    return &mr->mr;     /* no pin: the memory is the registering process's */
}

RNIC_EXPORT void ibv_unimport_mr(struct ibv_mr *mr)
{
    free(container(mr, struct rnic_mr, mr));
}
