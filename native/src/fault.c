/*
 * fault.c — fault injection on the transmit buffer, in C so that a run under faults is bound
 * by the protocol rather than by a per-datagram Python loop (issue 22, item 6). The same
 * knobs and order as rnicd/core/fault.py's FaultInjector: each datagram independently may
 * be dropped, corrupted (one bit flipped: the peer's ICRC check catches it), delayed or
 * reordered (held back for the caller to send later), and duplicated. Seeded: one seed and
 * one traffic pattern give one sequence of decisions.
 */
#include <string.h>

#include "rnic_dp.h"

/* splitmix64 (Steele, Lea, Flood 2014): a full-period 64-bit generator, enough here */
static uint64_t fault_next(struct rnic_fault *f)
{
    uint64_t z = (f->rng += 0x9e3779b97f4a7c15ULL);

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static int fault_hit(struct rnic_fault *f, uint64_t threshold)
{
    return threshold && (fault_next(f) >> 32) < threshold;
}

uint32_t rnic_fault_mark(struct rnic_dp_dev *dev, struct rnic_fault *f, uint8_t *marks,
                         uint32_t *held, uint32_t held_cap)
{
    uint32_t nheld = 0;

    for (uint32_t i = 0; i < dev->ntx; i++) {
        uint8_t m = RNIC_FAULT_SEND;

        if (fault_hit(f, f->drop)) {
            f->n_drop++;
            marks[i] = RNIC_FAULT_DROP;
            continue;
        }
        if (fault_hit(f, f->corrupt) && dev->tx_lens[i]) {
            uint8_t *d = dev->tx_bufs + (size_t)i * dev->tx_buf_size;
            uint64_t r = fault_next(f);

            d[(r >> 8) % dev->tx_lens[i]] ^= (uint8_t)(1u << (r & 7));
            f->n_corrupt++;
        }
        if (fault_hit(f, f->delay)) {
            f->n_delay++;
            m = RNIC_FAULT_DELAY;
        } else if (fault_hit(f, f->reorder)) {
            f->n_reorder++;
            m = RNIC_FAULT_REORDER;
        }
        if (fault_hit(f, f->dup)) {
            f->n_dup++;
            m |= RNIC_FAULT_DUP;
        }
        if ((m & RNIC_FAULT_HOLD) && nheld < held_cap)
            held[nheld++] = i;
        else
            m &= (uint8_t)~RNIC_FAULT_HOLD;         /* no room to hold it: sent now */
        marks[i] = m;
    }
    return nheld;
}

uint32_t rnic_fault_compact(struct rnic_dp_dev *dev, const uint8_t *marks)
{
    uint32_t n = dev->ntx, out = 0, lost = 0;
    size_t sz = dev->tx_buf_size;

    for (uint32_t i = 0; i < n; i++) {
        if (marks[i] == RNIC_FAULT_DROP || (marks[i] & RNIC_FAULT_HOLD))
            continue;                               /* the caller took the held ones */
        if (out != i) {
            memmove(dev->tx_bufs + out * sz, dev->tx_bufs + i * sz, dev->tx_lens[i]);
            dev->tx_lens[out] = dev->tx_lens[i];
            dev->tx_addrs_be[out] = dev->tx_addrs_be[i];
        }
        out++;
    }
    /* duplicates of the datagrams sent now go after them, while the buffer has room */
    uint32_t end = out;
    for (uint32_t i = 0, k = 0; i < n; i++) {
        if (marks[i] == RNIC_FAULT_DROP || (marks[i] & RNIC_FAULT_HOLD))
            continue;
        if (marks[i] & RNIC_FAULT_DUP) {
            if (end < dev->tx_cap) {
                memcpy(dev->tx_bufs + end * sz, dev->tx_bufs + k * sz, dev->tx_lens[k]);
                dev->tx_lens[end] = dev->tx_lens[k];
                dev->tx_addrs_be[end] = dev->tx_addrs_be[k];
                end++;
            } else {
                lost++;
            }
        }
        k++;
    }
    dev->ntx = end;
    return lost;
}

uint32_t rnic_fault_held(const struct rnic_fault *f, uint8_t mark, double *hold_s)
{
    *hold_s = (mark & ~RNIC_FAULT_DUP) == RNIC_FAULT_DELAY ? f->delay_s : f->reorder_s;
    return (mark & RNIC_FAULT_DUP) ? 2 : 1;
}
