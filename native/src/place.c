/*
 * place.c — bounds-checked payload placement into registered memory (RDMA atomics are
 * check.c's rnic_dp_atomic: under the device's atomic lock, journaled).
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
