/*
 * ring.c — ring headers and the index atomics (native/include/rnic_abi.h).
 *
 * prod and cons are free-running uint32 counters with one writer each; the writer
 * publishes with a release store after filling (or retiring) entries, the reader loads with
 * acquire before reading them. The shared fields are plain uint32_t in the ABI (so that C
 * clients and cffi see one layout); they are accessed here as _Atomic uint32_t, which has
 * the same size and alignment on every target rnicd builds for (checked below).
 */
#include <errno.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "rnic_dp.h"

_Static_assert(sizeof(_Atomic uint32_t) == sizeof(uint32_t), "atomic u32 layout");
_Static_assert(_Alignof(_Atomic uint32_t) == _Alignof(uint32_t), "atomic u32 alignment");
_Static_assert(sizeof(struct rnic_ring_hdr) == RNIC_RING_HDR_SIZE, "ring header size");
_Static_assert(offsetof(struct rnic_ring_hdr, prod) == 64, "prod on its own cache line");
_Static_assert(offsetof(struct rnic_ring_hdr, cons) == 128, "cons on its own cache line");
_Static_assert(offsetof(struct rnic_ring_hdr, arm) == 192, "notification line");
_Static_assert(sizeof(struct rnic_send_wqe) == RNIC_SEND_WQE_HDR_SIZE, "send WQE header");
_Static_assert(sizeof(struct rnic_recv_wqe) == RNIC_RECV_WQE_HDR_SIZE, "recv WQE header");
_Static_assert(sizeof(struct rnic_cqe) == RNIC_CQE_SIZE, "CQE size");
_Static_assert(sizeof(struct rnic_sge) == 16, "SGE size");

#define RING_PAGE 4096u
#define RING_ENTRY_ALIGN 16u
#define RING_BASE_ALIGN 8u /* entries hold uint64_t fields */

uint32_t rnic_load_acquire(const uint32_t *p)
{
    return atomic_load_explicit((const _Atomic uint32_t *)p, memory_order_acquire);
}

void rnic_store_release(uint32_t *p, uint32_t v)
{
    atomic_store_explicit((_Atomic uint32_t *)p, v, memory_order_release);
}

uint32_t rnic_xchg(uint32_t *p, uint32_t v)
{
    return atomic_exchange_explicit((_Atomic uint32_t *)p, v, memory_order_acq_rel);
}

uint32_t rnic_fetch_add(uint32_t *p, uint32_t v)
{
    return atomic_fetch_add_explicit((_Atomic uint32_t *)p, v, memory_order_acq_rel);
}

size_t rnic_ring_bytes(uint32_t entry_size, uint32_t num_entries)
{
    size_t n = RNIC_RING_HDR_SIZE + (size_t)entry_size * num_entries; /* < 2^64, no wrap */
    return (n + RING_PAGE - 1) & ~(size_t)(RING_PAGE - 1);
}

/* Smallest entry able to hold what the header promises for a ring of this kind. */
static int ring_geometry_ok(uint32_t kind, uint32_t entry_size, uint32_t max_sge,
                            uint32_t max_inline)
{
    uint64_t sges = (uint64_t)max_sge * sizeof(struct rnic_sge);

    switch (kind) {
    case RNIC_RING_SQ:
        return RNIC_SEND_WQE_HDR_SIZE + sges <= entry_size &&
               RNIC_SEND_WQE_HDR_SIZE + (uint64_t)max_inline <= entry_size;
    case RNIC_RING_RQ:
    case RNIC_RING_SRQ:
        return RNIC_RECV_WQE_HDR_SIZE + sges <= entry_size;
    case RNIC_RING_CQ:
        return RNIC_CQE_SIZE <= entry_size;
    default:
        return 0;
    }
}

int rnic_ring_init(void *base, size_t size, uint32_t kind, uint32_t entry_size,
                   uint32_t num_entries, uint32_t max_sge, uint32_t max_inline)
{
    if (!base || ((uintptr_t)base & (RING_BASE_ALIGN - 1)))
        return -EINVAL;
    if (num_entries == 0 || (num_entries & (num_entries - 1)))
        return -EINVAL;
    if (entry_size == 0 || entry_size % RING_ENTRY_ALIGN)
        return -EINVAL;
    if (!ring_geometry_ok(kind, entry_size, max_sge, max_inline))
        return -EINVAL;
    if (size < RNIC_RING_HDR_SIZE ||
        (size - RNIC_RING_HDR_SIZE) / entry_size < num_entries)
        return -EINVAL;

    struct rnic_ring_hdr *h = base;
    memset(base, 0, RNIC_RING_HDR_SIZE + (size_t)entry_size * num_entries);
    h->abi_version = RNIC_ABI_VERSION;
    h->kind = kind;
    h->entry_size = entry_size;
    h->num_entries = num_entries;
    h->max_sge = max_sge;
    h->max_inline = max_inline;
    /* Magic last: whoever sees it also sees the rest of the header. */
    rnic_store_release(&h->magic, RNIC_RING_MAGIC);
    return 0;
}

void *rnic_ring_entry(struct rnic_ring_hdr *h, uint32_t idx)
{
    return (uint8_t *)h + RNIC_RING_HDR_SIZE +
           (size_t)(idx & (h->num_entries - 1)) * h->entry_size;
}
