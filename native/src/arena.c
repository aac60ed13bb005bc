/*
 * arena.c — the state arena: the memory the data plane's records (struct rnic_dp_qp, _cq,
 * _mr, _swqe, the QP and key tables, the engines' own records) are allocated from, so that
 * the engine processes see and write the same bytes as the daemon (docs/engines.md).
 *
 * One MAP_SHARED mapping of a memfd, made once per process before any engine is forked:
 * a forked engine inherits it at the same address, so the records keep their pointers.
 * The memfd is sparse (pages exist once touched) and only the daemon allocates, from
 * power-of-two size classes with free lists; freed blocks of 64 KiB and more give their
 * pages back (MADV_REMOVE).
 */
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "rnic_dp.h"

#define ARENA_BYTES (64ull << 30)   /* virtual size; only touched pages cost memory */
#define MIN_SHIFT 6                 /* 64-byte blocks (header included) */
#define MAX_SHIFT 36
#define HDR 64                      /* keeps every block cache-line aligned */
#define MAGIC 0x72617261u           /* "ara" */

struct arena_meta {
    uint32_t lock;
    uint32_t _rsvd;
    uint64_t next;                  /* bump offset of the next new block */
    uint64_t used;                  /* bytes in live blocks, headers included */
    uint64_t free_head[MAX_SHIFT + 1];  /* offsets of free blocks, 0: none */
};

struct block_hdr {
    uint32_t magic;
    uint32_t shift;
    uint64_t next_free;             /* while free: offset of the next free block */
    uint64_t dirty;                 /* while free: payload bytes from the start that may be
                                     * non-zero (the rest had its pages removed) */
};

static uint8_t *arena_base;

static void lock(struct arena_meta *m)
{
    while (__atomic_exchange_n(&m->lock, 1, __ATOMIC_ACQUIRE))
        __builtin_ia32_pause();
}

static void unlock(struct arena_meta *m) { __atomic_store_n(&m->lock, 0, __ATOMIC_RELEASE); }

void *rnic_arena_base(void)
{
    if (arena_base)
        return arena_base;
    int fd = memfd_create("rnicd-state", MFD_CLOEXEC);
    if (fd < 0)
        return NULL;
    if (ftruncate(fd, (off_t)ARENA_BYTES) < 0) {
        close(fd);
        return NULL;
    }
    void *p = mmap(NULL, ARENA_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0);
    close(fd);                      /* the mapping keeps the memory */
    if (p == MAP_FAILED)
        return NULL;
    ((struct arena_meta *)p)->next = 4096;
    arena_base = p;
    return p;
}

void *rnic_arena_alloc(size_t size)
{
    uint8_t *base = rnic_arena_base();
    struct arena_meta *m;
    struct block_hdr *b;
    uint32_t shift = MIN_SHIFT;
    uint64_t off;

    if (!base || size > (1ull << MAX_SHIFT) - HDR)
        return NULL;
    while ((1ull << shift) < size + HDR)
        shift++;
    m = (struct arena_meta *)base;
    lock(m);
    off = m->free_head[shift];
    if (off) {
        b = (struct block_hdr *)(base + off);
        m->free_head[shift] = b->next_free;
        memset((uint8_t *)b + HDR, 0, b->dirty);
    } else {                        /* never used: the memfd's pages read as zeros */
        uint64_t bytes = 1ull << shift, align = bytes < 4096 ? HDR : 4096;

        off = (m->next + HDR + align - 1) / align * align - HDR;   /* payload aligned */
        if (off + bytes > ARENA_BYTES) {
            unlock(m);
            return NULL;
        }
        m->next = off + bytes;
        b = (struct block_hdr *)(base + off);
    }
    m->used += 1ull << shift;
    b->magic = MAGIC;
    b->shift = shift;
    unlock(m);
    return (uint8_t *)b + HDR;
}

void rnic_arena_free(void *p)
{
    struct arena_meta *m;
    struct block_hdr *b;
    uint64_t off;

    if (!p || !arena_base)
        return;
    b = (struct block_hdr *)((uint8_t *)p - HDR);
    off = (uint64_t)((uint8_t *)b - arena_base);
    if (off >= ARENA_BYTES || b->magic != MAGIC || b->shift > MAX_SHIFT)
        return;                     /* not ours, or freed twice: leave it */
    m = (struct arena_meta *)arena_base;
    uint64_t payload = (1ull << b->shift) - HDR, whole = payload & ~4095ull;
    b->dirty = payload;
    /* give the pages back (they read as zeros again); the partial last page stays dirty */
    if (b->shift >= 16 && madvise((uint8_t *)p, whole, MADV_REMOVE) == 0) {
        memset((uint8_t *)p + whole, 0, payload - whole);
        b->dirty = 0;
    }
    lock(m);
    b->magic = 0;
    b->next_free = m->free_head[b->shift];
    m->free_head[b->shift] = off;
    m->used -= 1ull << b->shift;
    unlock(m);
}

uint64_t rnic_arena_used(void)
{
    return arena_base ? ((struct arena_meta *)arena_base)->used : 0;
}
