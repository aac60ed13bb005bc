/*
 * place.c — bounds-checked access to registered memory: RDMA atomics (IBTA vol 1 9.4.5,
 * 8-byte aligned 64-bit CmpSwap / FetchAdd) and payload placement.
 *
 * Every range is checked as (off <= len && n <= len - off), which cannot wrap, before any
 * byte is touched. Key, PD and access checks happen before these calls; these are the last
 * line, so that no peer-supplied offset can reach outside the region.
 */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "rnic_dp.h"

static int range_ok(size_t len, size_t off, size_t n)
{
    return off <= len && n <= len - off;
}

static uint64_t *atomic_slot(uint8_t *base, size_t len, size_t off)
{
    if (!base || !range_ok(len, off, 8) || ((uintptr_t)(base + off) & 7))
        return NULL;
    return (uint64_t *)(base + off);
}

int rnic_atomic_cas64(uint8_t *base, size_t len, size_t off, uint64_t compare,
                      uint64_t swap, uint64_t *orig)
{
    uint64_t *p = atomic_slot(base, len, off);

    if (!p || !orig)
        return -EINVAL;
    /* On failure the builtin writes the current value into compare: the original either way. */
    __atomic_compare_exchange_n(p, &compare, swap, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    *orig = compare;
    return 0;
}

int rnic_atomic_faa64(uint8_t *base, size_t len, size_t off, uint64_t add, uint64_t *orig)
{
    uint64_t *p = atomic_slot(base, len, off);

    if (!p || !orig)
        return -EINVAL;
    *orig = __atomic_fetch_add(p, add, __ATOMIC_SEQ_CST);
    return 0;
}

int rnic_copy_in(uint8_t *dst, size_t dst_len, size_t off, const uint8_t *src, size_t n)
{
    if (!range_ok(dst_len, off, n))
        return -ERANGE;
    if (n)
        memcpy(dst + off, src, n);
    return 0;
}

int rnic_copy_out(uint8_t *dst, const uint8_t *src, size_t src_len, size_t off, size_t n)
{
    if (!range_ok(src_len, off, n))
        return -ERANGE;
    if (n)
        memcpy(dst, src + off, n);
    return 0;
}
