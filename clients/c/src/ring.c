/* ring.c — mapping rings from rnicd (native/include/rnic_abi.h) and ringing the doorbell. */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "priv.h"

/* Map a ring memfd (closing it) and check its header: the client computes entry offsets
 * from it, so a bad header is refused (EPROTO) rather than trusted. */
int rring_map(struct rring *r, int fd, uint64_t size, uint32_t kind, const char *what)
{
    struct stat st;
    r->hdr = NULL;
    if (size < RNIC_RING_HDR_SIZE || size > (1ull << 31) || fstat(fd, &st) < 0 ||
        (uint64_t)st.st_size < size) {
        rnic_log("%s: ring size %llu from rnicd is invalid", what, (unsigned long long)size);
        close(fd);
        return -EPROTO;
    }
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    int e = errno;
    close(fd);
    if (p == MAP_FAILED)
        return -e;
    struct rnic_ring_hdr *h = p;
    uint32_t n = h->num_entries, es = h->entry_size;
    uint32_t need = kind == RNIC_RING_CQ ? RNIC_CQE_SIZE
                    : kind == RNIC_RING_SQ ? RNIC_SEND_WQE_HDR_SIZE +
                          (h->max_sge * 16 > h->max_inline ? h->max_sge * 16 : h->max_inline)
                    : RNIC_RECV_WQE_HDR_SIZE + h->max_sge * 16;
    if (ld_acq(&h->magic) != RNIC_RING_MAGIC || h->abi_version != RNIC_ABI_VERSION ||
        h->kind != kind || n == 0 || (n & (n - 1)) || es == 0 || es % 16 ||
        RNIC_RING_HDR_SIZE + (uint64_t)es * n > size || need > es) {
        rnic_log("%s: the ring from rnicd is invalid (magic/version/geometry)", what);
        munmap(p, size);
        return -EPROTO;
    }
    r->hdr = h;
    r->ents = (uint8_t *)p + RNIC_RING_HDR_SIZE;
    r->size = size;
    r->n = n;
    r->es = es;
    r->max_sge = h->max_sge;
    r->max_inline = h->max_inline;
    r->limit = n;
    return 0;
}

void rring_unmap(struct rring *r)
{
    if (r->hdr)
        munmap(r->hdr, r->size);
    r->hdr = NULL;
}

/* New WQEs wait: 8 bytes to the doorbell eventfd of the engine that serves the ring (its
 * header names it), unless the daemon flagged that it polls; to every doorbell when the ring
 * names none (r NULL: a receive queue in error, to be flushed). */
void rnic_doorbell(struct rnic_ctx *c, struct rring *r)
{
    int from = 0, to = c->ndoorbells;
    uint64_t one = 1;

    /* The WQE's index store must be visible before the flag is read: an engine clears the
     * flag, then looks at the rings once more, then sleeps (native/src/engine.c) */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (r) {
        uint32_t k = r->hdr->doorbell;

        if (ld_acq(&r->hdr->polling))
            return;
        if (k > 0 && k <= (uint32_t)c->ndoorbells) {
            from = (int)k - 1;
            to = (int)k;
        }
    }
    for (int i = from; i < to; i++)
        if (write(c->doorbell_fds[i], &one, sizeof(one)) < 0) {
            /* EAGAIN: the counter is saturated, a wake-up is pending anyway */
        }
}

/* A program that spins on an empty CQ (perftest does) holds its CPU until the scheduler's
 * tick preempts it, milliseconds later, while the engine that would produce its completion
 * waits for that CPU: with more spinners than CPUs (2 vCPUs: two programs, two engines) an
 * empty poll yields, so spinners on one CPU take turns in microseconds, and says on which
 * CPU it waits (h: the CQ's header, poller_cpu), so that an engine there that writes it a
 * completion yields to it at once. RNIC_POLL_YIELD=0 turns both off. */
void rnic_poll_idle(struct rnic_ring_hdr *h)
{
    static int mode = -1;       /* -1: not read yet */

    if (mode < 0) {
        const char *v = getenv("RNIC_POLL_YIELD");
        mode = !(v && v[0] == '0');
    }
    if (mode) {
        int cpu = sched_getcpu();

        if (cpu >= 0)
            __atomic_store_n(&h->poller_cpu, (uint32_t)cpu + 1, __ATOMIC_RELAXED);
        sched_yield();
    }
}
