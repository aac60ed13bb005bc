/*
 * conn.h — the control connection to rnicd (docs/control-protocol.md) for the C libraries.
 *
 * One Unix stream socket per verbs context. A message is a 4-byte big-endian length and a
 * msgpack map (msgpack-c); file descriptors travel by SCM_RIGHTS and each message takes its
 * "nfds" of them in arrival order. Requests are numbered; a reply answers its id. Events
 * ({"ev": {...}}) read while a call waits are queued (raw bytes) for ibv_get_async_event
 * (and, later, librdmacm). Everything read from the socket is untrusted until checked here.
 */
#ifndef RNIC_CONN_H
#define RNIC_CONN_H

#include <infiniband/verbs.h>
#include <msgpack.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#define RCONN_MAX_FDS 16

/* Arguments of a request: a msgpack map built entry by entry (the count is known at the end). */
struct rargs {
    msgpack_sbuffer sb;
    msgpack_packer pk;
    uint32_t n;
};

void rargs_init(struct rargs *a);
void rargs_free(struct rargs *a);
void ra_int(struct rargs *a, const char *k, int64_t v);
void ra_uint(struct rargs *a, const char *k, uint64_t v);
void ra_nil(struct rargs *a, const char *k);
void ra_str(struct rargs *a, const char *k, const char *v);
void ra_bin(struct rargs *a, const char *k, const void *v, size_t len);
/* A nested map (child) under key k; the child is freed. */
void ra_map(struct rargs *a, const char *k, struct rargs *child);
/* key k whose value the caller packs itself into a->pk (exactly one object). */
void ra_key(struct rargs *a, const char *k);

/* A reply: the decoded message, its result map and the descriptors it carried. */
struct rreply {
    msgpack_unpacked up;
    char *body;                /* the message's bytes: `up` points into them */
    const msgpack_object *r;   /* the "r" map (never NULL after success: may be an empty map) */
    int fds[RCONN_MAX_FDS];
    int nfds;
};

struct rev {                   /* a queued event: the raw msgpack of its "ev" value */
    struct rev *next;
    size_t len;
    char data[];
};

struct rconn {
    int fd;
    pthread_mutex_t lock;
    uint32_t next_id;
    char *buf;  size_t blen, bcap;   /* bytes received, not yet a whole message */
    int fdq[4 * RCONN_MAX_FDS]; int nfdq;
    struct rev *evq, **evtail;       /* async events (verbs) */
    struct rev *cmq, **cmtail;       /* connection-manager events */
    int wake[2];                     /* a byte per queued event: makes async_fd readable */
    int dead;                        /* errno once the connection is unusable */
    char errmsg[256];
};

/* Where rnicd listens: $RNIC_SOCKET, else $XDG_RUNTIME_DIR/rnicd/rnicd.sock, else
 * /run/rnicd/rnicd.sock (clients/python/rnic/_conn.py socket_path). */
const char *rconn_socket_path(char *buf, size_t len);
int rconn_open(struct rconn *c, const char *path);   /* 0 or -errno */
void rconn_close(struct rconn *c);
/* The daemon has closed the connection: it failed already, or the socket reads end of file
 * (peeked: nothing is consumed). As the Python client's Connection.gone. */
int rconn_gone(struct rconn *c);
/* One request; 0 and *rep filled (free with rreply_free), or -errno (message in c->errmsg;
 * an error reply gives its code). */
int rconn_call(struct rconn *c, const char *method, struct rargs *args, const int *fds, int nfds,
               struct rreply *rep);
void rreply_free(struct rreply *rep);
/* Take the next queued event (malloc'ed; free it), reading the socket without blocking when
 * the queue is empty. kind 0: verbs async events, 1: connection-manager events.
 * NULL: none (errno EAGAIN) or the connection failed (errno set). */
struct rev *rconn_next_event(struct rconn *c, int kind);
/* Queue an event this library produces itself (raw msgpack of the "ev" map): librdmacm's
 * address and route resolution. 0 or -ENOMEM. */
int rconn_push_event(struct rconn *c, int kind, const void *data, size_t len);
/* Move the queued events of kind that match (raw msgpack, arg) from one connection to
 * another, in order (rdma_migrate_id moves an id's pending events). Returns how many. */
int rconn_move_events(struct rconn *from, struct rconn *to, int kind,
                      int (*match)(const char *data, size_t len, void *arg), void *arg);

/* Reading reply maps (NULL/0 when absent or of another type). */
const msgpack_object *mo_get(const msgpack_object *map, const char *key);
int mo_int(const msgpack_object *map, const char *key, int64_t *out);   /* 0 or -1 */
uint64_t mo_u64(const msgpack_object *map, const char *key, uint64_t dflt);
/* bytes/str value of key: pointer and length, or NULL */
const char *mo_bin(const msgpack_object *map, const char *key, uint32_t *len);
/* An address vector as rnicd sends it (the fields of struct ibv_ah_attr, its GRH a map of
 * its own): both libraries read one this way (query_qp; the CM's UD and QP attributes). */
void mo_ah_attr(const msgpack_object *m, struct ibv_ah_attr *ah);

void rnic_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
