/* conn.c — the control connection to rnicd (see conn.h and docs/control-protocol.md). */
#define _GNU_SOURCE
#include "conn.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define PROTOCOL_VERSION 1
#define MAX_MSG (64u << 20)        /* a larger length prefix is a protocol error */

void rnic_log(const char *fmt, ...)
{
    static int on = -1;
    if (on < 0)
        on = getenv("RNIC_DEBUG") != NULL;
    if (!on)
        return;
    va_list ap;
    va_start(ap, fmt);
    fputs("librnic: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* ---- building arguments ------------------------------------------------------------- */
void rargs_init(struct rargs *a)
{
    msgpack_sbuffer_init(&a->sb);
    msgpack_packer_init(&a->pk, &a->sb, msgpack_sbuffer_write);
    a->n = 0;
}

void rargs_free(struct rargs *a) { msgpack_sbuffer_destroy(&a->sb); }

void ra_key(struct rargs *a, const char *k)
{
    size_t n = strlen(k);
    msgpack_pack_str(&a->pk, n);
    msgpack_pack_str_body(&a->pk, k, n);
    a->n++;
}

void ra_int(struct rargs *a, const char *k, int64_t v) { ra_key(a, k); msgpack_pack_int64(&a->pk, v); }
void ra_uint(struct rargs *a, const char *k, uint64_t v) { ra_key(a, k); msgpack_pack_uint64(&a->pk, v); }
void ra_nil(struct rargs *a, const char *k) { ra_key(a, k); msgpack_pack_nil(&a->pk); }

void ra_str(struct rargs *a, const char *k, const char *v)
{
    ra_key(a, k);
    size_t n = strlen(v);
    msgpack_pack_str(&a->pk, n);
    msgpack_pack_str_body(&a->pk, v, n);
}

void ra_bin(struct rargs *a, const char *k, const void *v, size_t len)
{
    ra_key(a, k);
    msgpack_pack_bin(&a->pk, len);
    msgpack_pack_bin_body(&a->pk, v, len);
}

void ra_map(struct rargs *a, const char *k, struct rargs *child)
{
    ra_key(a, k);
    msgpack_pack_map(&a->pk, child->n);
    msgpack_sbuffer_write(&a->sb, child->sb.data, child->sb.size);
    rargs_free(child);
}

/* ---- reading replies ---------------------------------------------------------------- */
const msgpack_object *mo_get(const msgpack_object *map, const char *key)
{
    if (!map || map->type != MSGPACK_OBJECT_MAP)
        return NULL;
    size_t kl = strlen(key);
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object_kv *kv = &map->via.map.ptr[i];
        if (kv->key.type == MSGPACK_OBJECT_STR && kv->key.via.str.size == kl &&
            memcmp(kv->key.via.str.ptr, key, kl) == 0)
            return &kv->val;
    }
    return NULL;
}

int mo_int(const msgpack_object *map, const char *key, int64_t *out)
{
    const msgpack_object *o = mo_get(map, key);
    if (!o)
        return -1;
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
        *out = (int64_t)o->via.u64;
        return 0;
    }
    if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
        *out = o->via.i64;
        return 0;
    }
    if (o->type == MSGPACK_OBJECT_BOOLEAN) {
        *out = o->via.boolean;
        return 0;
    }
    return -1;
}

uint64_t mo_u64(const msgpack_object *map, const char *key, uint64_t dflt)
{
    int64_t v;
    return mo_int(map, key, &v) == 0 ? (uint64_t)v : dflt;
}

const char *mo_bin(const msgpack_object *map, const char *key, uint32_t *len)
{
    const msgpack_object *o = mo_get(map, key);
    if (o && o->type == MSGPACK_OBJECT_BIN) {
        *len = o->via.bin.size;
        return o->via.bin.ptr;
    }
    if (o && o->type == MSGPACK_OBJECT_STR) {
        *len = o->via.str.size;
        return o->via.str.ptr;
    }
    return NULL;
}

void mo_ah_attr(const msgpack_object *m, struct ibv_ah_attr *ah)
{
    memset(ah, 0, sizeof(*ah));
    if (!m || m->type != MSGPACK_OBJECT_MAP)
        return;
    ah->is_global = (uint8_t)mo_u64(m, "is_global", 0);
    ah->port_num = (uint8_t)mo_u64(m, "port_num", 1);
    ah->sl = (uint8_t)mo_u64(m, "sl", 0);
    ah->dlid = (uint16_t)mo_u64(m, "dlid", 0);
    ah->src_path_bits = (uint8_t)mo_u64(m, "src_path_bits", 0);
    ah->static_rate = (uint8_t)mo_u64(m, "static_rate", 0);
    const msgpack_object *g = mo_get(m, "grh");
    if (g && g->type == MSGPACK_OBJECT_MAP) {
        uint32_t l = 0;
        const char *dgid = mo_bin(g, "dgid", &l);
        if (dgid && l == 16)
            memcpy(ah->grh.dgid.raw, dgid, 16);
        ah->grh.flow_label = (uint32_t)mo_u64(g, "flow_label", 0);
        ah->grh.sgid_index = (uint8_t)mo_u64(g, "sgid_index", 0);
        ah->grh.hop_limit = (uint8_t)mo_u64(g, "hop_limit", 0);  /* rnicd always sends it */
        ah->grh.traffic_class = (uint8_t)mo_u64(g, "traffic_class", 0);
    }
}

/* ---- the connection ----------------------------------------------------------------- */
const char *rconn_socket_path(char *buf, size_t len)
{
    const char *s = getenv("RNIC_SOCKET");
    if (s && *s) {
        snprintf(buf, len, "%s", s);
        return buf;
    }
    s = getenv("XDG_RUNTIME_DIR");
    if (s && *s) {
        snprintf(buf, len, "%s/rnicd/rnicd.sock", s);
        return buf;
    }
    snprintf(buf, len, "/run/rnicd/rnicd.sock");
    return buf;
}

static int fail(struct rconn *c, int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->errmsg, sizeof(c->errmsg), fmt, ap);
    va_end(ap);
    if (!c->dead)
        c->dead = err;
    rnic_log("%s", c->errmsg);
    return -err;
}

int rconn_open(struct rconn *c, const char *path)
{
    memset(c, 0, sizeof(*c));
    c->fd = -1;
    c->wake[0] = c->wake[1] = -1;
    c->next_id = 1;
    c->evtail = &c->evq;
    c->cmtail = &c->cmq;
    pthread_mutex_init(&c->lock, NULL);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(sa.sun_path))
        return -ENAMETOOLONG;
    strcpy(sa.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        int e = errno;
        rnic_log("cannot reach rnicd at %s: %s (is the daemon running?)", path, strerror(e));
        close(fd);
        return -e;
    }
    if (pipe2(c->wake, O_CLOEXEC | O_NONBLOCK) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    c->fd = fd;
    return 0;
}

int rconn_gone(struct rconn *c)
{
    char b;

    return c->dead || recv(c->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
}

static void free_evq(struct rev *e)
{
    while (e) {
        struct rev *n = e->next;
        free(e);
        e = n;
    }
}

void rconn_close(struct rconn *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    for (int i = 0; i < c->nfdq; i++)
        close(c->fdq[i]);
    c->nfdq = 0;
    for (int i = 0; i < 2; i++)
        if (c->wake[i] >= 0)
            close(c->wake[i]);
    c->wake[0] = c->wake[1] = -1;
    free(c->buf);
    c->buf = NULL;
    free_evq(c->evq);
    free_evq(c->cmq);
    c->evq = c->cmq = NULL;
    pthread_mutex_destroy(&c->lock);
}

/* Read what the socket has (blocking or not): 1 read something, 0 nothing, -errno. */
static int pump(struct rconn *c, int block)
{
    if (c->bcap - c->blen < 65536) {
        size_t cap = c->bcap ? c->bcap * 2 : 131072;
        char *nb = realloc(c->buf, cap);
        if (!nb)
            return fail(c, ENOMEM, "out of memory reading from rnicd");
        c->buf = nb;
        c->bcap = cap;
    }
    union {
        char b[CMSG_SPACE(sizeof(int) * RCONN_MAX_FDS * 2)];
        struct cmsghdr align;
    } cb;
    struct iovec iov = {c->buf + c->blen, c->bcap - c->blen};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cb.b,
                        .msg_controllen = sizeof(cb.b)};
    ssize_t n;
    do {
        n = recvmsg(c->fd, &mh, MSG_CMSG_CLOEXEC | (block ? 0 : MSG_DONTWAIT));
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            if (!block)
                return 0;
            struct pollfd p = {c->fd, POLLIN, 0};
            poll(&p, 1, -1);   /* the fd was made non-blocking by someone: wait */
            return 1;
        }
        return fail(c, ECONNRESET, "reading from rnicd failed: %s", strerror(errno));
    }
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
        if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
            continue;
        int k = (int)((cm->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        int *p = (int *)CMSG_DATA(cm);
        for (int i = 0; i < k; i++) {
            if (c->nfdq < (int)(sizeof(c->fdq) / sizeof(c->fdq[0])))
                c->fdq[c->nfdq++] = p[i];
            else
                close(p[i]);
        }
    }
    if (mh.msg_flags & MSG_CTRUNC)
        return fail(c, EPROTO, "rnicd sent more file descriptors than a message may carry");
    if (n == 0)
        return fail(c, ECONNRESET, "rnicd closed the connection");
    c->blen += (size_t)n;
    return 1;
}

static void enqueue(struct rconn *c, int cm, struct rev *e)
{
    e->next = NULL;
    if (cm) {
        *c->cmtail = e;
        c->cmtail = &e->next;
    } else {
        *c->evtail = e;
        c->evtail = &e->next;
    }
    if (write(c->wake[1], "!", 1) < 0) {
        /* pipe full: async_fd is readable anyway */
    }
}

int rconn_push_event(struct rconn *c, int kind, const void *data, size_t len)
{
    struct rev *e = malloc(sizeof(*e) + len);
    if (!e)
        return -ENOMEM;
    e->len = len;
    memcpy(e->data, data, len);
    pthread_mutex_lock(&c->lock);
    enqueue(c, kind, e);
    pthread_mutex_unlock(&c->lock);
    return 0;
}

static int next_message(struct rconn *c, int block, msgpack_unpacked *up, char **body, int *fds,
                        int *nfds);

/* Queue the events the socket and the buffer hold now, without blocking; stop early once
 * queue q has one. Called with the lock held. A reply here has no caller: dropped. */
static void absorb_events(struct rconn *c, struct rev **q)
{
    while (!(q && *q) && !c->dead) {
        msgpack_unpacked up;
        char *body = NULL;
        int fds[RCONN_MAX_FDS], n = 0;
        if (next_message(c, 0, &up, &body, fds, &n) <= 0)
            break;
        int64_t rid = -1;
        mo_int(&up.data, "id", &rid);
        rnic_log("dropped a reply nobody waits for (request %lld)", (long long)rid);
        for (int i = 0; i < n; i++)
            close(fds[i]);
        msgpack_unpacked_destroy(&up);
        free(body);
    }
}

int rconn_move_events(struct rconn *from, struct rconn *to, int kind,
                      int (*match)(const char *data, size_t len, void *arg), void *arg)
{
    struct rev *moved = NULL, **mt = &moved;
    int n = 0;
    pthread_mutex_lock(&from->lock);
    /* rnicd sent the old connection's events before its reply to the migration: they are
     * in that socket or our buffer by now, and must move too */
    absorb_events(from, NULL);
    struct rev **q = kind ? &from->cmq : &from->evq;
    for (struct rev **p = q; *p;) {
        struct rev *e = *p;
        if (!match(e->data, e->len, arg)) {
            p = &e->next;
            continue;
        }
        *p = e->next;
        e->next = NULL;
        *mt = e;
        mt = &e->next;
        n++;
        char b;
        if (read(from->wake[0], &b, 1) < 0) {
            /* nothing to drain */
        }
    }
    struct rev **tail = q;        /* the queue's tail after the removals */
    while (*tail)
        tail = &(*tail)->next;
    if (kind)
        from->cmtail = tail;
    else
        from->evtail = tail;
    pthread_mutex_unlock(&from->lock);
    pthread_mutex_lock(&to->lock);
    while (moved) {
        struct rev *e = moved;
        moved = e->next;
        enqueue(to, kind, e);
    }
    pthread_mutex_unlock(&to->lock);
    return n;
}

static int queue_event(struct rconn *c, const msgpack_object *ev)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_object(&pk, *ev);
    struct rev *e = malloc(sizeof(*e) + sb.size);
    if (!e) {
        msgpack_sbuffer_destroy(&sb);
        return -ENOMEM;
    }
    e->len = sb.size;
    memcpy(e->data, sb.data, sb.size);
    msgpack_sbuffer_destroy(&sb);
    enqueue(c, mo_get(ev, "cm_event") != NULL, e);
    return 0;
}

/* The next whole message (1), none yet (0, when not blocking) or -errno. Events are queued
 * and not returned. */
static int next_message(struct rconn *c, int block, msgpack_unpacked *up, char **body, int *fds,
                        int *nfds)
{
    for (;;) {
        if (c->dead)
            return -c->dead;
        if (c->blen >= 4) {
            uint32_t len = ((uint32_t)(uint8_t)c->buf[0] << 24) | ((uint32_t)(uint8_t)c->buf[1] << 16) |
                           ((uint32_t)(uint8_t)c->buf[2] << 8) | (uint8_t)c->buf[3];
            if (len > MAX_MSG)
                return fail(c, EPROTO, "bad message from rnicd: length %u", len);
            if (c->blen >= 4 + (size_t)len) {
                /* msgpack_unpack_next does not copy str/bin bodies: the objects point into
                 * the buffer, so each message gets its own, freed with the message */
                char *b = malloc(len ? len : 1);
                if (!b)
                    return fail(c, ENOMEM, "out of memory reading from rnicd");
                memcpy(b, c->buf + 4, len);
                memmove(c->buf, c->buf + 4 + len, c->blen - 4 - len);
                c->blen -= 4 + len;
                size_t off = 0;
                msgpack_unpacked_init(up);
                msgpack_unpack_return rc = msgpack_unpack_next(up, b, len, &off);
                if (rc != MSGPACK_UNPACK_SUCCESS || up->data.type != MSGPACK_OBJECT_MAP) {
                    msgpack_unpacked_destroy(up);
                    free(b);
                    return fail(c, EPROTO, "bad message from rnicd: not a msgpack map");
                }
                *body = b;
                int64_t n = 0;
                mo_int(&up->data, "nfds", &n);
                if (n < 0 || n > RCONN_MAX_FDS || n > c->nfdq) {
                    msgpack_unpacked_destroy(up);
                    free(b);
                    return fail(c, EPROTO, "bad message from rnicd: nfds=%lld with %d received",
                                (long long)n, c->nfdq);
                }
                for (int i = 0; i < n; i++)
                    fds[i] = c->fdq[i];
                memmove(c->fdq, c->fdq + n, (size_t)(c->nfdq - n) * sizeof(int));
                c->nfdq -= (int)n;
                *nfds = (int)n;
                const msgpack_object *ev = mo_get(&up->data, "ev");
                if (ev) {
                    for (int i = 0; i < n; i++)
                        close(fds[i]);
                    queue_event(c, ev);
                    msgpack_unpacked_destroy(up);
                    free(b);
                    continue;
                }
                return 1;
            }
        }
        int r = pump(c, block);
        if (r <= 0)
            return r;
    }
}

int rconn_call(struct rconn *c, const char *method, struct rargs *args, const int *fds, int nfds,
               struct rreply *rep)
{
    memset(rep, 0, sizeof(*rep));
    msgpack_unpacked_init(&rep->up);
    pthread_mutex_lock(&c->lock);
    if (c->dead) {
        pthread_mutex_unlock(&c->lock);
        return -c->dead;
    }
    uint32_t id = c->next_id++;
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_sbuffer_write(&sb, "\0\0\0\0", 4);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 5);
    msgpack_pack_str_with_body(&pk, "v", 1);
    msgpack_pack_int(&pk, PROTOCOL_VERSION);
    msgpack_pack_str_with_body(&pk, "id", 2);
    msgpack_pack_uint32(&pk, id);
    msgpack_pack_str_with_body(&pk, "m", 1);
    msgpack_pack_str_with_body(&pk, method, strlen(method));
    msgpack_pack_str_with_body(&pk, "a", 1);
    if (args) {
        msgpack_pack_map(&pk, args->n);
        msgpack_sbuffer_write(&sb, args->sb.data, args->sb.size);
    } else {
        msgpack_pack_map(&pk, 0);
    }
    msgpack_pack_str_with_body(&pk, "nfds", 4);
    msgpack_pack_int(&pk, nfds);
    uint32_t blen = (uint32_t)sb.size - 4;
    sb.data[0] = (char)(blen >> 24);
    sb.data[1] = (char)(blen >> 16);
    sb.data[2] = (char)(blen >> 8);
    sb.data[3] = (char)blen;
    size_t sent = 0;
    int rc = 0;
    while (sent < sb.size) {
        struct iovec iov = {sb.data + sent, sb.size - sent};
        union {
            char b[CMSG_SPACE(sizeof(int) * RCONN_MAX_FDS)];
            struct cmsghdr align;
        } cb;
        struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
        if (sent == 0 && nfds > 0) {       /* the descriptors ride on the first byte */
            mh.msg_control = cb.b;
            mh.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
            struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
            cm->cmsg_level = SOL_SOCKET;
            cm->cmsg_type = SCM_RIGHTS;
            cm->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
            memcpy(CMSG_DATA(cm), fds, sizeof(int) * (size_t)nfds);
        }
        ssize_t n = sendmsg(c->fd, &mh, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            struct pollfd p = {c->fd, POLLOUT, 0};
            poll(&p, 1, -1);
            continue;
        }
        if (n < 0) {
            rc = fail(c, errno == EPIPE ? ECONNRESET : errno, "%s: sending to rnicd failed: %s "
                      "(is the daemon still running?)", method, strerror(errno));
            break;
        }
        sent += (size_t)n;
    }
    msgpack_sbuffer_destroy(&sb);
    while (rc == 0) {
        msgpack_unpacked up;
        char *body = NULL;
        int rfds[RCONN_MAX_FDS], nr = 0;
        int r = next_message(c, 1, &up, &body, rfds, &nr);
        if (r < 0) {
            rc = r;
            break;
        }
        int64_t mid = -1;
        if (mo_int(&up.data, "id", &mid) != 0 || mid != id) {
            for (int i = 0; i < nr; i++)
                close(rfds[i]);
            msgpack_unpacked_destroy(&up);
            free(body);
            rc = fail(c, EPROTO, "%s: reply for request %lld, expected %u", method,
                      (long long)mid, id);
            break;
        }
        const msgpack_object *e = mo_get(&up.data, "e");
        if (e) {
            int64_t code = EPROTO;
            if (mo_int(e, "code", &code) != 0 || code <= 0 || code > 4095)
                code = EPROTO;
            uint32_t ml = 0;
            const char *m = mo_bin(e, "msg", &ml);
            snprintf(c->errmsg, sizeof(c->errmsg), "%s: %.*s", method, m ? (int)ml : 6,
                     m ? m : "failed");
            rnic_log("%s", c->errmsg);
            for (int i = 0; i < nr; i++)
                close(rfds[i]);
            msgpack_unpacked_destroy(&up);
            free(body);
            rc = -(int)code;
            break;
        }
        msgpack_unpacked_destroy(&rep->up);
        rep->up = up;
        rep->body = body;
        rep->r = mo_get(&rep->up.data, "r");
        static const msgpack_object empty = {.type = MSGPACK_OBJECT_MAP};
        if (!rep->r || rep->r->type != MSGPACK_OBJECT_MAP)
            rep->r = &empty;
        memcpy(rep->fds, rfds, sizeof(int) * (size_t)nr);
        rep->nfds = nr;
        break;
    }
    /* Events that came in the same read as the reply sit in our buffer, where the socket's
     * readiness no longer shows them: queue them now, so the wake pipe tells a thread that
     * polls the channel (rping's CM thread waited forever for ESTABLISHED otherwise). */
    if (rc == 0)
        absorb_events(c, NULL);
    pthread_mutex_unlock(&c->lock);
    if (rc < 0) {
        msgpack_unpacked_destroy(&rep->up);
        msgpack_unpacked_init(&rep->up);
        rep->r = NULL;
    }
    return rc;
}

void rreply_free(struct rreply *rep)
{
    for (int i = 0; i < rep->nfds; i++)
        if (rep->fds[i] >= 0)
            close(rep->fds[i]);
    rep->nfds = 0;
    msgpack_unpacked_destroy(&rep->up);
    free(rep->body);
    rep->body = NULL;
    rep->r = NULL;
}

struct rev *rconn_next_event(struct rconn *c, int kind)
{
    pthread_mutex_lock(&c->lock);
    struct rev **q = kind ? &c->cmq : &c->evq;
    absorb_events(c, q);
    struct rev *e = *q;
    if (e) {
        *q = e->next;
        if (!*q) {
            if (kind)
                c->cmtail = &c->cmq;
            else
                c->evtail = &c->evq;
        }
        char b;
        if (read(c->wake[0], &b, 1) < 0) {
            /* nothing to drain */
        }
    }
    int dead = c->dead;
    pthread_mutex_unlock(&c->lock);
    if (!e)
        errno = dead ? dead : EAGAIN;
    return e;
}
