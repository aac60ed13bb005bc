/*
 * engine.c — an engine: a process forked from the daemon that runs only this C loop and
 * serves the steady state of its QPs (docs/engines.md): its UDP socket (the port's
 * SO_REUSEPORT group steers it the datagrams of its QPs), the doorbells, the fast paths of
 * rx.c and sq.c, ACKs, READ responses, fault injection on what it sends, CQEs and
 * completion-channel wake-ups. What it cannot finish it hands to core/ as an event.
 *
 * Sharing with core/ (the daemon's Python) is by holding: core/ works on QP state only while
 * every engine is held at a safe point (the top of the loop, nothing half done, its
 * transmit buffer flushed), so each field has one writer at a time. A sleeping engine is
 * held without waking it. Memory core/ maps after the fork (rings, MRs) is mapped here at
 * the same address on command, before core/ publishes any pointer into it.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "dp_util.h"
#include "rnic_dp.h"

#define RX_BUF 65536            /* a GRO batch of segments, at most an IPv4 datagram */
#define RX_BATCH 32             /* buffers per recvmmsg */
#define RX_BATCHES 8            /* recvmmsg batches per turn, then the rest of the loop */
#define FDMAP_LEN (1 << 20)     /* the daemon raises its descriptor limit to this */
#define HELD_CAP 256            /* datagrams faults hold back (delay, reorder) */
#define TIMER_EVERY 0.001       /* look at the retransmit timers this often while busy */
#define SLEEP_MAX_MS RNIC_ENGINE_BEAT_MS      /* it beats at least this often */
/* A spinning engine yields the CPU on every idle turn. A yield that takes this long means a
 * task that does not yield (an application spinning on memory, as ib_write_lat does) had the
 * CPU: spinning then only delays our own wake-up, since a runnable task waits for the other's
 * time slice while a sleeping one preempts it when its packet comes. So the engine stops
 * spinning for a while, doubling the while each time the CPU is found taken again (measured
 * with ib_write_lat, 2 daemons and 2 apps on 2 CPUs: 105-130 us typical, p99 2 ms, before;
 * 28-44 us after; engines that never spin: 25 us, but then ib_send_lat is 40 us, not 12). */
#define YIELD_TAKEN 500e-6       /* longer than any engine turn, shorter than a time slice */
#define NOSPIN_MIN 0.1
#define NOSPIN_MAX 1.6

_Static_assert(sizeof(((struct rnic_engine_event *)0)->data) == RNIC_EV_DATA, "event size");

enum { TAG_SOCK = 1, TAG_CMD = 2, TAG_DOORBELL = 3 };

static double mono(void)
{
    struct timespec t;

    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

double rnic_monotonic(void) { return mono(); }

static inline uint32_t ld(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }
static inline void st(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_SEQ_CST); }

/* ---- the daemon's side ------------------------------------------------------------------ */

int rnic_engine_hold(struct rnic_engine *e, double timeout_s, int pidfd)
{
    double deadline = 0;
    struct pollfd dead = {.fd = pidfd, .events = POLLIN};

    st(&e->pause_req, 1);
    for (uint32_t spins = 0;; spins++) {
        uint32_t s = ld(&e->state), want = RNIC_ENGINE_SLEEP;

        if (s == RNIC_ENGINE_HELD)
            return 0;
        if (s == RNIC_ENGINE_SLEEP
            && __atomic_compare_exchange_n(&e->state, &want, RNIC_ENGINE_HELD, 0,
                                           __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
            return 0;                   /* asleep: it holds itself when it wakes */
        if (s == RNIC_ENGINE_EXITED)
            return -ESRCH;
        if (spins < 256) {
            __builtin_ia32_pause();
            continue;
        }
        if (pidfd >= 0 && poll(&dead, 1, 0) > 0)
            return -ESRCH;              /* it died before core/ noticed */
        if (deadline == 0)
            deadline = mono() + timeout_s;
        else if (mono() > deadline)
            return -ETIMEDOUT;
        sched_yield();                  /* 2 CPUs: let it reach its safe point */
    }
}

void rnic_engine_release(struct rnic_engine *e)
{
    uint64_t one = 1;

    st(&e->pause_req, 0);
    if (ld(&e->hold_waiting) && write(e->resume_fd, &one, sizeof(one)) < 0) {
        /* EAGAIN: a wake-up is pending anyway */
    }
}

int rnic_engine_command(int sock, const struct rnic_engine_cmd *c, int fd, double timeout_s)
{
    char ctl[CMSG_SPACE(sizeof(int))];
    struct iovec iov = {.iov_base = (void *)c, .iov_len = sizeof(*c)};
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1};
    struct pollfd p = {.fd = sock, .events = POLLIN};
    int32_t rc;

    if (fd >= 0) {
        memset(ctl, 0, sizeof(ctl));
        m.msg_control = ctl;
        m.msg_controllen = sizeof(ctl);
        struct cmsghdr *cm = CMSG_FIRSTHDR(&m);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(cm), &fd, sizeof(int));
    }
    if (sendmsg(sock, &m, MSG_NOSIGNAL) < 0)
        return -errno;
    for (;;) {
        int n = poll(&p, 1, (int)(timeout_s * 1000));

        if (n == 0)
            return -ETIMEDOUT;
        if (n < 0 && errno != EINTR)
            return -errno;
        if (n > 0)
            break;
    }
    ssize_t got = recv(sock, &rc, sizeof(rc), 0);
    if (got != sizeof(rc))
        return got == 0 ? -EPIPE : -errno;
    return rc;
}

uint32_t rnic_engine_take_fast(struct rnic_engine *e, struct rnic_dp_dev *dev)
{
    uint32_t cons = e->ev_cons, prod = __atomic_load_n(&e->ev_prod, __ATOMIC_ACQUIRE), n = 0;

    while (cons != prod) {
        const struct rnic_engine_event *ev = &e->events[cons & (e->ev_cap - 1)];

        if (ev->kind != RNIC_EV_PACKET || ev->len < RNIC_BTH_LEN
            || dp_be24(ev->data + 5) == 1   /* a CM MAD: core/ orders it (engines.py) */
            || (dev->rx_ip_id = ev->ip_id,
                !rnic_dp_rx_one(dev, ev->data, ev->len, ev->src_ip_be, ev->sport)))
            break;
        cons++;
        n++;
        __atomic_store_n(&e->ev_cons, cons, __ATOMIC_RELEASE);
    }
    dev->rx_ip_id = 0;
    return n;
}

/* ---- the engine's process ---------------------------------------------------------------- */

static struct rnic_engine *E;
static struct rnic_dp_dev *D;
static int epfd;
static int32_t fdmap[FDMAP_LEN];        /* daemon fd number -> ours + 1; 0: none */
static uint8_t rxbufs[RX_BATCH * RX_BUF];     /* pages untouched until a batch lands */
static uint32_t rxlens[RX_BATCH], rxsegs[RX_BATCH], rxaddrs[RX_BATCH];
static uint16_t rxports[RNIC_MAX_BATCH], txports[RNIC_MAX_BATCH];
static uint32_t pumps[4096];
static uint32_t reading[4096], nreading;
static int events_waiting;              /* posted since the daemon was last woken */
static int doorbell_rung;               /* a doorbell woke us: core/'s QPs may have work */
static int yield_to_poller;             /* rx wrote a CQE for a poller on this CPU */
static uint8_t marks[4096];
static uint32_t held_idx[HELD_CAP];
static struct held {
    double at;
    uint32_t len, addr_be;
    uint8_t data[4608];
} held[HELD_CAP];
static uint32_t nheld;

static struct rnic_dp_qp *own_qp(uint32_t qpn)
{
    struct rnic_dp_qp *qp = qpn < D->qps_len ? D->qps[qpn] : NULL;

    return qp && qp->qpn == qpn && qp->engine == E->id ? qp : NULL;
}

static int ev_full(void) { return E->ev_prod - ld(&E->ev_cons) >= E->ev_cap; }

static struct rnic_engine_event *ev_slot(void)
{
    if (ev_full()) {
        st(&E->ev_overflow, 1);         /* core/ then looks at everything */
        E->ev_dropped++;
        events_waiting = 1;
        return NULL;
    }
    return &E->events[E->ev_prod & (E->ev_cap - 1)];
}

static void ev_publish(void)
{
    __atomic_store_n(&E->ev_prod, E->ev_prod + 1, __ATOMIC_RELEASE);
    E->events_posted++;
    events_waiting = 1;
}

static int post(uint32_t kind, uint32_t id)
{
    struct rnic_engine_event *ev = ev_slot();

    if (!ev)
        return -1;
    ev->kind = kind;
    ev->id = id;
    ev->len = 0;
    ev_publish();
    return 0;
}

/* The engine runs the QP's requester: in RTS (send_ok), with the receive side in C too
 * (fast; not XRC), or UD, whose sends need nothing of its receives (an SRQ's are core/'s). */
static inline int sends_here(const struct rnic_dp_qp *qp)
{
    return qp->send_ok && (qp->fast || qp->ud);
}

static void post_pump(struct rnic_dp_qp *qp)
{
    if (!qp->eng_pump_posted && post(RNIC_EV_PUMP, qp->qpn) == 0)
        qp->eng_pump_posted = 1;        /* core/ clears it once it has pumped */
}

/* A datagram for core/; later ones of its QP follow it there until core/ has handled it,
 * so that core/ and the fast path never see one QP's packets out of order. */
static void hand_up(struct rnic_dp_qp *qp, const uint8_t *pkt, uint32_t len, uint32_t ip_be,
                    uint16_t sport)
{
    struct rnic_engine_event *ev;

    if (len > RNIC_EV_DATA) {
        E->rx_drop_oversize++;
        return;
    }
    if (!(ev = ev_slot()))
        return;                         /* lost like a dropped datagram: RC resends it */
    ev->kind = RNIC_EV_PACKET;
    ev->id = qp ? qp->qpn : 0;
    ev->len = len;
    ev->src_ip_be = ip_be;
    ev->sport = sport;
    ev->ip_id = D->rx_ip_id;
    memcpy(ev->data, pkt, len);
    if (qp)
        qp->eng_last_slow = E->ev_prod + 1;
    ev_publish();
}

static int slow_pending(const struct rnic_dp_qp *qp)
{
    return qp->eng_last_slow && (int32_t)(qp->eng_last_slow - ld(&E->ev_cons)) > 0;
}

/* ---- transmit ----------------------------------------------------------------------------- */

static void send_now(uint8_t *bufs, uint32_t stride, const uint32_t *lens,
                     const uint32_t *addrs, uint32_t n)
{
    uint32_t sent = 0;

    while (sent < n) {
        uint32_t k = n - sent < RNIC_MAX_BATCH ? n - sent : RNIC_MAX_BATCH;
        int rc = E->udp_gso
                 ? rnic_send_gso(E->sock_fd, bufs + (size_t)sent * stride, stride, lens + sent,
                                 k, addrs + sent, E->peer_port)
                 : rnic_send_batch(E->sock_fd, bufs + (size_t)sent * stride, stride,
                                   lens + sent, k, addrs + sent, txports);

        if (E->udp_gso && (rc == -EIO || rc == -EINVAL)) {
            E->udp_gso = 0;             /* the route cannot offload: plain sends from now */
            continue;
        }
        if (rc <= 0) {                  /* the rest is lost: the retransmit timers cover it */
            if (rc == 0)
                E->tx_dropped_busy += n - sent;
            else
                E->tx_errors += n - sent;
            return;
        }
        sent += (uint32_t)rc;
        E->tx_pkts += (uint32_t)rc;
    }
}

/* Faults first (fault.c, as the daemon's own transmit path), then sendmmsg. */
static void flush_tx(double now)
{
    if (!D->ntx)
        return;
    if (E->fault_on) {
        uint32_t nh = rnic_fault_mark(D, &E->fault, marks, held_idx, HELD_CAP - nheld);

        for (uint32_t k = 0; k < nh; k++) {
            uint32_t i = held_idx[k];
            double wait;
            uint32_t copies = rnic_fault_held(&E->fault, marks[i], &wait);

            for (uint32_t c = 0; c < copies && nheld < HELD_CAP; c++) {
                struct held *h = &held[nheld++];

                h->at = now + wait;
                h->len = D->tx_lens[i] < sizeof(h->data) ? D->tx_lens[i] : sizeof(h->data);
                h->addr_be = D->tx_addrs_be[i];
                memcpy(h->data, D->tx_bufs + (size_t)i * D->tx_buf_size, h->len);
            }
        }
        E->fault_no_room += rnic_fault_compact(D, marks);
    }
    send_now(D->tx_bufs, D->tx_buf_size, D->tx_lens, D->tx_addrs_be, D->ntx);
    D->ntx = 0;
}

static int release_held(double now)
{
    uint32_t kept = 0, sent = 0;

    for (uint32_t i = 0; i < nheld; i++) {
        if (held[i].at <= now) {
            send_now(held[i].data, 0, &held[i].len, &held[i].addr_be, 1);
            sent++;
        } else {
            if (kept != i)
                held[kept] = held[i];
            kept++;
        }
    }
    nheld = kept;
    return sent > 0;
}

/* ---- requester ---------------------------------------------------------------------------- */

static void note_reading(struct rnic_dp_qp *qp)
{
    for (uint32_t i = 0; i < nreading; i++)
        if (reading[i] == qp->qpn)
            return;
    if (nreading < sizeof(reading) / sizeof(reading[0]))
        reading[nreading++] = qp->qpn;
}

/* Queue READ responses while the transmit buffer has room (flushing a full one first);
 * returns how many are still to go. */
static uint32_t produce_reads(struct rnic_dp_qp *qp, double now)
{
    if (D->ntx >= D->tx_cap)
        flush_tx(now);
    return rnic_dp_read_continue(D, qp);
}

/* What core/'s requester loop does for a QP, as far as the data plane can: READ responses
 * still to go, then SEND/WRITE WQEs; the rest is core/'s. */
static void pump_qp(struct rnic_dp_qp *qp, double now)
{
    if (qp->rd_npkts && produce_reads(qp, now))
        note_reading(qp);
    if (!sends_here(qp)) {
        if (rnic_dp_sq_pending(qp) != 0)
            post_pump(qp);
        return;
    }
    for (int turn = 0, again = 0; turn < 64; turn++) {
        switch (rnic_dp_pump(D, qp)) {
        case RNIC_DP_PUMP_IDLE:
            return;
        case RNIC_DP_PUMP_TX_FULL:
            flush_tx(now);
            continue;
        case RNIC_DP_PUMP_FETCH:        /* none left, or the next WQE is core/'s */
            if (rnic_dp_sq_pending(qp) == 0)
                return;
            if (!again++)               /* or posted since the pump looked: once more */
                continue;
            post_pump(qp);
            return;
        default:                        /* RNIC_DP_PUMP_SLOW: a READ or atomic at send_psn */
            post_pump(qp);
            return;
        }
    }
}

static int continue_reads(double now)
{
    uint32_t n = nreading, kept = 0;

    for (uint32_t i = 0; i < n; i++) {
        struct rnic_dp_qp *qp = own_qp(reading[i]);

        if (qp && qp->rd_npkts && produce_reads(qp, now))
            reading[kept++] = qp->qpn;
    }
    nreading = kept;
    return n > 0;
}

/* New WQEs (a doorbell, or seen while polling): the data plane's, or core/'s. A doorbell
 * also goes to core/ for every QP that is not the data plane's (a receive posted to a QP in
 * error is flushed there; receive rings show no change the engine could see for UD). */
static int scan_qps(double now, int doorbell)
{
    int work = 0;

    for (uint32_t i = 0; i < E->nqps; i++) {
        struct rnic_dp_qp *qp = own_qp(E->qpns[i]);
        uint32_t sq, rq;

        if (!qp)
            continue;
        sq = qp->sq ? rnic_load_acquire(&qp->sq->prod) : 0;
        rq = qp->rq ? rnic_load_acquire(&qp->rq->prod) : 0;
        if (sends_here(qp)) {
            if (sq != qp->eng_seen_sq) {
                uint32_t before = D->ntx;

                pump_qp(qp, now);
                work |= D->ntx != before || qp->eng_pump_posted;
            }
        } else if (doorbell || sq != qp->eng_seen_sq
                   || (rq != qp->eng_seen_rq && !(qp->ud && qp->fast))) {
            /* UD sends, XRC, not in RTS, in error: core/'s (a UD QP's receives are ours) */
            post_pump(qp);
            work = 1;
        }
        qp->eng_seen_sq = sq;
        qp->eng_seen_rq = rq;
    }
    return work;
}

/* Expired timers (the probe, the retransmit timer): the common case (requests outstanding,
 * retries left) goes back N here (rnic_dp_timer, the decision core/ calls too); the rest is
 * core/'s: RNR waits, an exhausted retry count (the head WQE fails), a QP not in RTS, or one
 * whose datagrams wait in core/'s queue (they came first). Returns the earliest deadline still
 * ahead (0: none). */
static double timers(double now)
{
    double next = 0;

    D->now = now;
    for (uint32_t i = 0; i < E->nqps; i++) {
        struct rnic_dp_qp *qp = own_qp(E->qpns[i]);
        double t;

        if (!qp || (t = rnic_dp_deadline(qp)) <= 0)
            continue;
        if (t <= now) {
            if (sends_here(qp) && !qp->rnr_wait && qp->retry_left > 0
                && !qp->eng_timer_posted && !slow_pending(qp)) {
                if (rnic_dp_timer(D, qp) == RNIC_DP_TIMER_RETRY)
                    pump_qp(qp, now);               /* which arms the timer again */
            } else if (!qp->eng_timer_posted && post(RNIC_EV_TIMER, qp->qpn) == 0) {
                qp->eng_timer_posted = 1;
            }
            if ((t = rnic_dp_deadline(qp)) <= now)
                continue;
        }
        if (next == 0 || t < next)
            next = t;
    }
    return next;
}

/* ---- receive ------------------------------------------------------------------------------ */

/* Datagrams received and not yet handled: a batch stops where core/'s event ring is full
 * and goes on from there once core/ has made room (back-pressure: the socket buffer holds
 * the rest; nothing is dropped for want of an event). */
static uint32_t rx_pos, rx_n, rx_off, rx_k;    /* buffer; byte and segment in it */

static int rx_backlog(void) { return rx_pos < rx_n; }

/* The coalesced ACKs owed (9.7.5.1.2) into the transmit buffer, after what it holds
 * (flushed first if they would not fit). */
static void queue_acks(double now)
{
    if (D->ntx + D->nacks > D->tx_cap)
        flush_tx(now);
    rnic_dp_flush_acks(D);
}

/* One datagram (segment rx_k of its buffer): the fast path, else core/'s. 0: core/'s ring
 * is full, try it again later. */
static int rx_datagram(const uint8_t *pkt, uint32_t len, uint32_t addr_be, uint16_t port)
{
    struct rnic_dp_qp *qp = NULL;

    D->rx_ip_id = (uint16_t)rx_k;      /* GSO numbered it so: its ICRC covers that */
    if (len >= RNIC_BTH_LEN)
        qp = own_qp(dp_be24(pkt + 5));
    if (qp && !slow_pending(qp) && rnic_dp_rx_one(D, pkt, len, addr_be, port)) {
        D->fast_pkts++;
        return 1;
    }
    if (ev_full()) {
        events_waiting = 1;             /* core/ is behind: wait for it, drop nothing */
        return 0;
    }
    D->slow_pkts++;
    hand_up(qp, pkt, len, addr_be, port);
    return 1;
}

static int rx(double now)
{
    int total = 0;

    D->now = now;
    for (int b = 0; b < RX_BATCHES; b++) {
        if (!rx_backlog()) {
            int n = E->udp_gso
                    ? rnic_recv_gro(E->sock_fd, rxbufs, RX_BUF, RX_BATCH, rxlens, rxsegs,
                                    rxaddrs, rxports)
                    : rnic_recv_batch(E->sock_fd, rxbufs, RX_BUF, RX_BATCH, rxlens, rxaddrs,
                                      rxports);

            if (n <= 0)
                break;
            rx_pos = rx_off = rx_k = 0;
            rx_n = (uint32_t)n;
            if (!E->udp_gso)
                memcpy(rxsegs, rxlens, sizeof(rxlens[0]) * rx_n);
        }
        for (; rx_pos < rx_n; rx_pos++, rx_off = rx_k = 0) {
            uint32_t i = rx_pos, total_len = rxlens[i], seg = rxsegs[i] ? rxsegs[i] : 1;
            const uint8_t *buf = rxbufs + (size_t)i * RX_BUF;

            if (total_len > RX_BUF) {
                D->slow_pkts++;
                E->rx_drop_oversize++;
                continue;
            }
            do {                        /* an empty datagram is one too */
                uint32_t len = total_len - rx_off < seg ? total_len - rx_off : seg;

                if (!rx_datagram(buf + rx_off, len, rxaddrs[i], rxports[i]))
                    goto stop;
                E->rx_pkts++;
                total++;
                rx_off += len;
                rx_k++;
            } while (rx_off < total_len);
        }
        if (rx_n < RX_BATCH)
            break;
    }
stop:
    D->rx_ip_id = 0;
    E->rx_backlog = rx_n - rx_pos;
    if (!total)
        return 0;
    /* one coalesced ACK per QP that came to owe one (9.7.5.1.2) */
    if (D->nacks >= D->acks_len) {
        D->nacks = 0;
        for (uint32_t i = 0; i < E->nqps && D->nacks < D->acks_len; i++) {
            struct rnic_dp_qp *qp = own_qp(E->qpns[i]);

            if (qp && qp->ack_pending)
                D->acks[D->nacks++] = qp->qpn;
        }
    }
    if (D->ntx + D->nacks > D->tx_cap)
        flush_tx(now);
    if (!D->poller_here)
        rnic_dp_flush_acks(D);          /* else after the pumps, or the yield (below) */
    /* requesters that may send more, READs with responses to go */
    uint32_t np = D->npumps;
    if (np >= D->pumps_cap || np > sizeof(pumps) / sizeof(pumps[0])) {
        D->npumps = 0;
        for (uint32_t i = 0; i < E->nqps; i++) {
            struct rnic_dp_qp *qp = own_qp(E->qpns[i]);

            if (qp)
                pump_qp(qp, now);
        }
    } else {
        memcpy(pumps, D->pumps, np * sizeof(uint32_t));
        D->npumps = 0;
        for (uint32_t i = 0; i < np; i++) {
            struct rnic_dp_qp *qp = own_qp(pumps[i]);

            if (qp)
                pump_qp(qp, now);
        }
    }
    if (D->poller_here) {
        /* A program polling on this CPU got a CQE: it runs only when we yield. With nothing
         * else to send (a ping-pong, not a stream) engine_loop yields, and the ACKs owed
         * go after its answer, if it posts one at once. */
        D->poller_here = 0;
        if (D->ntx == 0)
            yield_to_poller = 1;
        else
            queue_acks(now);
    }
    return total;
}

/* Completion channels: written here when we hold the eventfd, else by core/. */
static void flush_notify(void)
{
    static const uint64_t one = 1;

    for (uint32_t i = 0; i < D->nnotify; i++) {
        int32_t fd = D->notify_fds[i];

        if (fd >= 0 && write(fd, &one, sizeof(one)) == sizeof(one))
            E->channel_events++;
        else
            post(RNIC_EV_NOTIFY, D->notify[i]);
    }
    D->nnotify = 0;
}

/* ---- commands ----------------------------------------------------------------------------- */

static int32_t run_command(const struct rnic_engine_cmd *c, int fd)
{
    int32_t rc = 0;

    switch (c->op) {
    case RNIC_ENGINE_CMD_MAP: {
        void *p = mmap((void *)(uintptr_t)c->addr, c->len, PROT_READ | PROT_WRITE,
                       MAP_SHARED | MAP_FIXED, fd, (off_t)c->off);
        rc = p == MAP_FAILED ? -errno : 0;
        break;
    }
    case RNIC_ENGINE_CMD_UNMAP:
        rc = munmap((void *)(uintptr_t)c->addr, c->len) < 0 ? -errno : 0;
        break;
    case RNIC_ENGINE_CMD_FD:
        if (fd < 0 || c->dfd < 0 || c->dfd >= FDMAP_LEN)
            return -EBADF;
        if (fdmap[c->dfd] > 0)
            close(fdmap[c->dfd] - 1);
        fdmap[c->dfd] = fd + 1;         /* 0: none */
        if (c->flags & RNIC_ENGINE_FD_DOORBELL) {
            struct epoll_event ev = {.events = EPOLLIN | EPOLLET,
                                     .data.u64 = (uint64_t)fd << 8 | TAG_DOORBELL};

            epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
        }
        return 0;                       /* the fd is kept */
    case RNIC_ENGINE_CMD_CLOSE_FD:
        if (c->dfd >= 0 && c->dfd < FDMAP_LEN && fdmap[c->dfd] > 0) {
            close(fdmap[c->dfd] - 1);   /* closing also leaves the epoll set */
            fdmap[c->dfd] = 0;
        }
        break;
    default:
        rc = -EINVAL;
    }
    if (fd >= 0)
        close(fd);
    return rc;
}

static void commands(void)
{
    for (;;) {
        struct rnic_engine_cmd c;
        char ctl[CMSG_SPACE(sizeof(int))];
        struct iovec iov = {.iov_base = &c, .iov_len = sizeof(c)};
        struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl,
                           .msg_controllen = sizeof(ctl)};
        ssize_t n = recvmsg(E->cmd_fd, &m, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        int fd = -1;
        int32_t rc;

        if (n == 0)
            _exit(0);                   /* the daemon is gone */
        if (n < 0)
            return;
        for (struct cmsghdr *cm = CMSG_FIRSTHDR(&m); cm; cm = CMSG_NXTHDR(&m, cm))
            if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS)
                memcpy(&fd, CMSG_DATA(cm), sizeof(int));
        rc = n == sizeof(c) ? run_command(&c, fd) : -EINVAL;
        if (send(E->cmd_fd, &rc, sizeof(rc), MSG_NOSIGNAL) < 0)
            _exit(0);
    }
}

/* ---- holding and sleeping ---------------------------------------------------------------- */

static void drain_fd(int fd)
{
    uint64_t v;

    while (read(fd, &v, sizeof(v)) > 0) {
    }
}

/* At a safe point: wait while core/ works, serving commands (core/ maps memory meanwhile). */
static void hold(void)
{
    st(&E->state, RNIC_ENGINE_HELD);
    for (;;) {
        if (!ld(&E->pause_req)) {
            st(&E->state, RNIC_ENGINE_RUN);
            if (!ld(&E->pause_req))
                return;
            st(&E->state, RNIC_ENGINE_HELD);
            continue;
        }
        commands();
        E->heartbeat++;                 /* held, not hung */
        st(&E->hold_waiting, 1);
        if (ld(&E->pause_req)) {
            struct pollfd p[2] = {{.fd = E->cmd_fd, .events = POLLIN},
                                  {.fd = E->resume_fd, .events = POLLIN}};
            poll(p, 2, 100);
        }
        st(&E->hold_waiting, 0);
        drain_fd(E->resume_fd);
        if (ld(&E->stop))
            _exit(0);
    }
}

/* The ring headers' polling flag: clients skip the doorbell while we look anyway. */
static void set_polling(uint32_t on)
{
    for (uint32_t i = 0; i < E->nqps; i++) {
        struct rnic_dp_qp *qp = own_qp(E->qpns[i]);

        if (qp && qp->sq)
            rnic_store_release(&qp->sq->polling, on);
    }
}

static void flush_all(double now)
{
    flush_tx(now);
    flush_notify();
    if (events_waiting) {
        uint64_t one = 1;

        events_waiting = 0;
        if (write(E->wake_fd, &one, sizeof(one)) < 0) {
            /* EAGAIN: the daemon has a wake-up pending */
        }
    }
}

static void sleep_until(double now, double next_timer)
{
    struct epoll_event evs[64];
    int ms = SLEEP_MAX_MS, n;
    uint32_t want = RNIC_ENGINE_SLEEP;

    set_polling(0);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (scan_qps(now, 0)) {             /* posted before the flag was down: no doorbell */
        set_polling(1);
        return;
    }
    flush_all(now);
    if (next_timer > 0) {
        double wait = (next_timer - now) * 1000 + 1;
        ms = wait < 0 ? 0 : wait > SLEEP_MAX_MS ? SLEEP_MAX_MS : (int)wait;
    }
    if (nheld) {
        double first = held[0].at;

        for (uint32_t i = 1; i < nheld; i++)
            first = held[i].at < first ? held[i].at : first;
        if ((first - now) * 1000 + 1 < ms)
            ms = first <= now ? 0 : (int)((first - now) * 1000 + 1);
    }
    st(&E->state, RNIC_ENGINE_SLEEP);
    if (!ld(&E->pause_req))
        n = epoll_wait(epfd, evs, 64, ms);
    else
        n = 0;
    E->wakeups++;
    for (int i = 0; i < n; i++)
        if ((evs[i].data.u64 & 0xff) == TAG_CMD)
            commands();
        else if ((evs[i].data.u64 & 0xff) == TAG_DOORBELL)
            /* Edge-triggered, and never read: every engine sees each write. (Reading would
             * lose wake-ups: epoll reports an edge only if the count is still non-zero when
             * it collects it, and another engine may have read it first. A 64-bit count of
             * writes does not fill up.) */
            doorbell_rung = 1;
    if (!__atomic_compare_exchange_n(&E->state, &want, RNIC_ENGINE_RUN, 0, __ATOMIC_SEQ_CST,
                                     __ATOMIC_SEQ_CST))
        hold();                         /* core/ held us while we slept */
    set_polling(1);
}

static void engine_loop(void)
{
    double now = mono(), idle_since = now, next_timer = 0, timers_at = 0, busy_from = now;
    double nospin_until = 0, nospin = NOSPIN_MIN;

    set_polling(1);
    for (;;) {
        int work = 0;

        D->poller_here = 0;             /* set by CQEs written outside rx: no yield */
        if (ld(&E->pause_req))
            hold();
        if (ld(&E->stop))
            _exit(0);
        E->loops++;
        E->heartbeat++;
        now = mono();
        D->now = now;
        work |= rx(now) > 0 || rx_backlog();
        if (yield_to_poller) {
            /* The poller's answer (a WQE, seen below) then leaves in the same sendmmsg as
             * the ACKs, ahead of them (2 daemons, 2 apps, 2 CPUs, each app on its own
             * engine's CPU: ib_send_lat 64 B 24.4 -> 17.8 us; docs/engines.md). */
            E->poller_yields++;
            sched_yield();
            D->now = now = mono();
        }
        work |= scan_qps(now, doorbell_rung);
        doorbell_rung = 0;
        if (yield_to_poller) {
            yield_to_poller = 0;
            queue_acks(now);
        }
        if (nreading)
            work |= continue_reads(now);
        if (nheld)
            work |= release_held(now);
        if (now >= timers_at) {
            next_timer = timers(now);
            timers_at = now + TIMER_EVERY;
        }
        if ((E->loops & 63) == 0)
            commands();                 /* else when epoll says so, or while held */
        flush_all(now);
        if (work) {
            idle_since = now;
        } else if (now - idle_since >= E->spin_s || now < nospin_until) {
            E->busy_ns += (uint64_t)((now - busy_from) * 1e9);
            next_timer = timers(now);
            sleep_until(now, next_timer);   /* it flushes after its last look */
            busy_from = idle_since = mono();
        } else {
            /* Idle and flushed: a safe point, as asleep. Say so while we yield, so that
             * core/ holds us at once instead of waiting until this CPU comes back to us
             * from the program spinning on it (a UD packet or a verb waits for every
             * engine's hold). */
            uint32_t want = RNIC_ENGINE_SLEEP;
            double back;

            st(&E->state, RNIC_ENGINE_SLEEP);
            sched_yield();              /* spinning, but a runnable app here goes first */
            back = mono();
            if (!__atomic_compare_exchange_n(&E->state, &want, RNIC_ENGINE_RUN, 0,
                                             __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
                hold();
                back = now;             /* core/'s time held, not the CPU taken */
            }
            if (back - now < YIELD_TAKEN) {
                nospin = NOSPIN_MIN;
            } else {                    /* the CPU is taken: sleep instead (above) */
                nospin_until = now + nospin;
                nospin = nospin * 2 > NOSPIN_MAX ? NOSPIN_MAX : nospin * 2;
                E->spin_yielded++;
            }
        }
    }
}

static void close_other_fds(void)
{
    int keep[4] = {E->sock_fd, E->cmd_fd, E->resume_fd, E->wake_fd};
    int from = 3;

    for (int i = 0; i < 4; i++)         /* sort the four */
        for (int j = i + 1; j < 4; j++)
            if (keep[j] < keep[i]) {
                int t = keep[i];
                keep[i] = keep[j];
                keep[j] = t;
            }
    for (int i = 0; i < 4; i++) {
        if (keep[i] > from)
            close_range((unsigned)from, (unsigned)keep[i] - 1, 0);
        if (keep[i] + 1 > from)
            from = keep[i] + 1;
    }
    close_range((unsigned)from, ~0u, 0);
}

static void engine_main(struct rnic_engine *e, pid_t parent)
{
    char name[16] = "rnicd-engine-";
    sigset_t all;
    struct epoll_event ev;

    E = e;
    D = e->dev;
    prctl(PR_SET_PDEATHSIG, SIGKILL);   /* never outlive the daemon */
    if (getppid() != parent)
        _exit(0);
    sigemptyset(&all);
    sigprocmask(SIG_SETMASK, &all, NULL);
    for (int s = 1; s < 32; s++)
        if (s != SIGKILL && s != SIGSTOP && s != SIGPIPE)
            signal(s, SIG_DFL);
    signal(SIGPIPE, SIG_IGN);
    /* A ^C, SIGTERM or hang-up sent to the whole process group is the daemon's to act on:
     * it stops its engines itself (or they die with it), and must not see one die of the
     * signal first and fork it a substitute while stopping. SIGKILL still kills one. */
    signal(SIGINT, SIG_IGN);
    signal(SIGTERM, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    close_other_fds();
    name[13] = (char)('0' + e->id % 10);
    prctl(PR_SET_NAME, name);
    if (e->cpu >= 0) {
        cpu_set_t set;

        CPU_ZERO(&set);
        CPU_SET(e->cpu, &set);
        sched_setaffinity(0, sizeof(set), &set);
    }
    for (int i = 0; i < RNIC_MAX_BATCH; i++)
        txports[i] = e->peer_port;
    if (e->udp_gso) {                   /* GRO: a GSO send arrives as the one buffer it was */
        int one = 1;

        if (setsockopt(e->sock_fd, IPPROTO_UDP, UDP_GRO, &one, sizeof(one)) < 0)
            e->udp_gso = 0;
    }
    D->fdmap = fdmap;
    D->fdmap_len = FDMAP_LEN;
    D->lock_id = (uint32_t)getpid();
    D->cpu_tag = e->cpu >= 0 ? (uint32_t)e->cpu + 1 : 0;
    /* A substitute for an engine that died starts from the hard state in the arena: what
     * the dead one had queued (datagrams, ACKs owed, lists) is soft and gone; it looks at
     * every ring again and goes on with the READ responses left to produce. */
    D->ntx = D->nacks = D->npumps = D->nnotify = D->poller_here = 0;
    for (uint32_t i = 0; i < e->nqps; i++) {
        struct rnic_dp_qp *qp = own_qp(e->qpns[i]);

        if (!qp)
            continue;
        qp->eng_seen_sq = qp->eng_seen_rq = 0;
        qp->ack_pending = 0;    /* else no later packet would list it for an ACK again */
        if (qp->rd_npkts)
            note_reading(qp);
    }
    epfd = epoll_create1(EPOLL_CLOEXEC);
    ev = (struct epoll_event){.events = EPOLLIN, .data.u64 = TAG_SOCK};
    epoll_ctl(epfd, EPOLL_CTL_ADD, e->sock_fd, &ev);
    ev = (struct epoll_event){.events = EPOLLIN, .data.u64 = TAG_CMD};
    epoll_ctl(epfd, EPOLL_CTL_ADD, e->cmd_fd, &ev);
    e->started = mono();
    st((uint32_t *)&e->pid, (uint32_t)getpid());
    engine_loop();
}

int rnic_engine_spawn(struct rnic_engine *e)
{
    pid_t parent = getpid(), pid;

    e->state = RNIC_ENGINE_RUN;
    e->stop = 0;
    pid = fork();
    if (pid < 0)
        return -errno;
    if (pid == 0) {
        engine_main(e, parent);
        _exit(0);
    }
    return pid;
}
