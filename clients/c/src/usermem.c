/*
 * usermem.c — registering ordinary process memory (docs/memory-registration.md).
 *
 * rnicd reaches only memory it can map, so the pages of a registration are moved into memfds
 * in place: for each run of pages no live registration covers yet, a memfd gets a copy of
 * their contents and is mapped MAP_SHARED over them with one mremap (same address, each
 * mapping's protection restored). A per-process registry of such spans lets two MRs on one
 * page share it; when the last registration of a span goes, its pages become private
 * anonymous memory again. A fork child gets private copies of every span (pthread_atfork),
 * i.e. IBV_FORK_UNNEEDED semantics. The Python client (clients/python/rnic/_usermem.py)
 * follows the same rules.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "priv.h"

#define PAGE 4096ul
#define MAX_SEGMENTS 15          /* fds in one reg_mr message (16 at most) */
#define MEMFD_NAME "rnic-mr"

struct vma {
    uintptr_t start, end;
    char perms[5];
    uint64_t offset;
    uint64_t inode;
    const char *path;
};

/* Its memory comes from mmap, not malloc: a fork child reads the maps while its registered
 * pages (heap pages among them) are still shared with the parent, where a malloc would
 * write the parent's heap. */
struct maps {
    char *text;
    struct vma *v;
    size_t n, text_cap, v_cap;
};

struct span {
    struct span *next;
    uintptr_t start, end;
    int fd;
    uint64_t inode;
    int refs;
};

struct rpin {
    int n;
    struct { struct span *s; uint64_t off, bytes; } seg[MAX_SEGMENTS + 1];
    uint32_t start;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct span *spans;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void maps_free(struct maps *m)
{
    if (m->text)
        munmap(m->text, m->text_cap);
    if (m->v)
        munmap(m->v, m->v_cap);
    m->text = NULL;
    m->v = NULL;
}

static void *pages(size_t size)
{
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

static int maps_read(struct maps *m)
{
    memset(m, 0, sizeof(*m));
    int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    size_t cap = 1 << 16, len = 0;
    char *buf = pages(cap);
    for (;;) {
        if (!buf) {
            close(fd);
            return -ENOMEM;
        }
        if (cap - len < 4096) {
            char *nb = mremap(buf, cap, cap * 2, MREMAP_MAYMOVE);
            if (nb == MAP_FAILED) {
                munmap(buf, cap);
                nb = NULL;
            }
            buf = nb;
            cap *= 2;
            continue;
        }
        ssize_t k = read(fd, buf + len, cap - len - 1);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            break;
        len += (size_t)k;
    }
    close(fd);
    buf[len] = 0;
    size_t lines = 0;
    for (size_t i = 0; i < len; i++)
        lines += buf[i] == '\n';
    m->text = buf;
    m->text_cap = cap;
    m->v_cap = (lines + 1) * sizeof(*m->v);
    m->v = pages(m->v_cap);
    if (!m->v) {
        maps_free(m);
        return -ENOMEM;
    }
    char *line = buf;
    while (*line) {
        char *nl = strchr(line, '\n');
        if (nl)
            *nl = 0;
        struct vma *v = &m->v[m->n];
        unsigned long s, e, off, ino;
        char perms[5] = "";
        int pos = 0;
        if (sscanf(line, "%lx-%lx %4s %lx %*s %lu %n", &s, &e, perms, &off, &ino, &pos) >= 5) {
            v->start = s;
            v->end = e;
            memcpy(v->perms, perms, 5);
            v->offset = off;
            v->inode = ino;
            v->path = pos ? line + pos : "";
            m->n++;
        }
        if (!nl)
            break;
        line = nl + 1;
    }
    return 0;
}

static int vprot(const struct vma *v)
{
    return (v->perms[0] == 'r' ? PROT_READ : 0) | (v->perms[1] == 'w' ? PROT_WRITE : 0) |
           (v->perms[2] == 'x' ? PROT_EXEC : 0);
}

/* Index of the first vma of [lo, hi) when they cover it without a hole, else -1. */
static long covering(const struct maps *m, uintptr_t lo, uintptr_t hi, size_t *count)
{
    uintptr_t cur = lo;
    long first = -1;
    size_t k = 0;
    for (size_t i = 0; i < m->n; i++) {
        const struct vma *v = &m->v[i];
        if (v->end <= cur)
            continue;
        if (v->start > cur)
            return -1;
        if (first < 0)
            first = (long)i;
        k++;
        cur = v->end;
        if (cur >= hi) {
            *count = k;
            return first;
        }
    }
    return -1;
}

static const char *unsupported_reason(const struct vma *v)
{
    const char *p = v->path;
    if (strstr(p, "anon_hugepage") || strstr(p, "/hugepages"))
        return "hugetlb memory is not supported yet";
    if (v->perms[3] == 's' && strncmp(p, "/memfd:" MEMFD_NAME, 7 + strlen(MEMFD_NAME)) != 0)
        return "memory of a shared mapping cannot be registered (rnicd moves private memory "
               "into a memfd it shares)";
    if (p[0] == '[' && strcmp(p, "[heap]") && strcmp(p, "[stack]") && strncmp(p, "[anon:", 6))
        return "a special mapping cannot be registered";
    if (!strncmp(p, "/dev/", 5) && strncmp(p, "/dev/zero", 9))
        return "device memory cannot be registered";
    return NULL;
}

/* Are all the span's pages still mapped from its memfd, in place? */
static int intact(const struct span *s, const struct maps *m)
{
    size_t k;
    long i = covering(m, s->start, s->end, &k);
    if (i < 0)
        return 0;
    for (size_t j = 0; j < k; j++) {
        const struct vma *v = &m->v[i + (long)j];
        if (v->inode != s->inode || v->offset != v->start - s->start)
            return 0;
    }
    return 1;
}

static int new_memfd(size_t size)
{
    int fd = memfd_create(MEMFD_NAME, MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0)
        return -errno;
    if (ftruncate(fd, (off_t)size) < 0 || fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}

/* Restore each original mapping's protection over [lo, hi) (mremap left it read-write). */
static void restore_prot(const struct maps *m, long first, size_t k, uintptr_t lo, uintptr_t hi)
{
    for (size_t j = 0; j < k; j++) {
        const struct vma *v = &m->v[first + (long)j];
        uintptr_t a = v->start > lo ? v->start : lo, b = v->end < hi ? v->end : hi;
        if (a < b && vprot(v) != (PROT_READ | PROT_WRITE))
            mprotect((void *)a, b - a, vprot(v));
    }
}

/* Copy pages [lo, hi) into a new memfd and map it over them. */
static int move_into_memfd(uintptr_t lo, uintptr_t hi, const struct maps *m, struct span **out)
{
    size_t size = hi - lo, k = 0;
    long first = covering(m, lo, hi, &k);
    int fd = new_memfd(size);
    if (fd < 0)
        return fd;
    void *tmp = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (tmp == MAP_FAILED) {
        int e = errno;
        close(fd);
        return -e;
    }
    memcpy(tmp, (void *)lo, size);
    if (mremap(tmp, size, size, MREMAP_MAYMOVE | MREMAP_FIXED, (void *)lo) == MAP_FAILED) {
        int e = errno;
        munmap(tmp, size);
        close(fd);
        return -e;
    }
    restore_prot(m, first, k, lo, hi);
    struct stat st;
    fstat(fd, &st);
    struct span *s = calloc(1, sizeof(*s));
    if (!s) {   /* the pages stay memfd-backed, still valid memory */
        close(fd);
        return -ENOMEM;
    }
    s->start = lo;
    s->end = hi;
    s->fd = fd;
    s->inode = st.st_ino;
    *out = s;
    return 0;
}

/* Make a span's pages private anonymous memory again (same contents and protection),
 * unless the program unmapped or replaced them. */
static void move_back(struct span *s, const struct maps *m)
{
    size_t k;
    long first = covering(m, s->start, s->end, &k);
    if (first < 0 || !intact(s, m))
        return;
    for (size_t j = 0; j < k; j++)
        if (m->v[first + (long)j].perms[0] != 'r')
            return;
    size_t size = s->end - s->start;
    void *tmp = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (tmp == MAP_FAILED)
        return;           /* no memory for the copy: the pages stay memfd-backed */
    memcpy(tmp, (void *)s->start, size);
    if (mremap(tmp, size, size, MREMAP_MAYMOVE | MREMAP_FIXED, (void *)s->start) == MAP_FAILED) {
        munmap(tmp, size);
        return;
    }
    restore_prot(m, first, k, s->start, s->end);
}

static void span_unlink(struct span *s)
{
    for (struct span **p = &spans; *p; p = &(*p)->next)
        if (*p == s) {
            *p = s->next;
            return;
        }
}

static void drop_stale(const struct maps *m)
{
    struct span **p = &spans;
    while (*p) {
        struct span *s = *p;
        if (!intact(s, m)) {
            *p = s->next;
            s->next = NULL;
            if (s->refs == 0) {
                close(s->fd);
                free(s);
            } else {
                s->inode = 0;       /* detached: released by its last pin */
            }
            continue;
        }
        p = &s->next;
    }
}

static void unref(struct span *s, const struct maps *m)
{
    if (--s->refs > 0)
        return;
    int listed = 0;
    for (struct span *t = spans; t; t = t->next)
        listed |= t == s;
    if (listed) {
        span_unlink(s);
        move_back(s, m);
    }
    close(s->fd);
    free(s);
}

static void after_fork_child(void)
{
    pthread_mutex_init(&lock, NULL);
    struct maps m;
    if (maps_read(&m) < 0)
        m.n = 0;
    for (struct span *s = spans; s && m.v; s = s->next)
        move_back(s, &m);
    maps_free(&m);
    while (spans) {           /* free() only now: the heap's pages are the child's own */
        struct span *s = spans;
        spans = s->next;
        close(s->fd);
        free(s);
    }
}

static void init_once(void) { pthread_atfork(NULL, NULL, after_fork_child); }

int rpin_get(void *addr_, size_t length, int writable, struct rpin **out)
{
    uintptr_t addr = (uintptr_t)addr_;
    if (length == 0)
        return -EINVAL;
    if (addr + length < addr || addr + length > (1ull << 47))
        return -EFAULT;
    pthread_once(&once, init_once);
    uintptr_t lo = addr & ~(PAGE - 1), hi = (addr + length + PAGE - 1) & ~(PAGE - 1);
    struct rpin *p = calloc(1, sizeof(*p));
    if (!p)
        return -ENOMEM;
    p->start = (uint32_t)(addr - lo);
    pthread_mutex_lock(&lock);
    struct maps m;
    int rc = maps_read(&m);
    if (rc < 0)
        goto out;
    size_t k;
    long first = covering(&m, lo, hi, &k);
    if (first < 0) {
        rnic_log("reg_mr: [%#lx, %#lx) is not all mapped memory of this process",
                 (unsigned long)addr, (unsigned long)(addr + length));
        rc = -EFAULT;
        goto out;
    }
    for (size_t j = 0; j < k; j++) {
        const struct vma *v = &m.v[first + (long)j];
        if (v->perms[0] != 'r' || (writable && v->perms[1] != 'w')) {
            rnic_log("reg_mr: pages [%#lx, %#lx) are %.3s; the access flags need %s",
                     (unsigned long)v->start, (unsigned long)v->end, v->perms,
                     writable ? "read and write" : "read");
            rc = -EFAULT;
            goto out;
        }
    }
    drop_stale(&m);
    uintptr_t cur = lo;
    while (cur < hi) {
        struct span *s = NULL;
        for (struct span *t = spans; t; t = t->next)
            if (t->start <= cur && cur < t->end) {
                s = t;
                break;
            }
        if (!s) {
            uintptr_t gap_end = hi;
            for (struct span *t = spans; t; t = t->next)
                if (t->start > cur && t->start < gap_end)
                    gap_end = t->start;
            size_t kk = 0;
            long f2 = covering(&m, cur, gap_end, &kk);
            for (size_t j = 0; j < kk; j++) {
                const char *why = unsupported_reason(&m.v[f2 + (long)j]);
                if (why) {
                    rnic_log("reg_mr: %s", why);
                    rc = -EOPNOTSUPP;
                    goto undo;
                }
            }
            rc = move_into_memfd(cur, gap_end, &m, &s);
            if (rc < 0)
                goto undo;
            s->next = spans;
            spans = s;
        }
        if (p->n >= MAX_SEGMENTS) {
            rnic_log("reg_mr: the range spans more than %d separately registered pieces; "
                     "register it before the overlapping smaller regions", MAX_SEGMENTS);
            rc = -E2BIG;
            goto undo;
        }
        uintptr_t end = s->end < hi ? s->end : hi;
        p->seg[p->n].s = s;
        p->seg[p->n].off = cur - s->start;
        p->seg[p->n].bytes = end - cur;
        p->n++;
        s->refs++;
        cur = end;
    }
    maps_free(&m);
    pthread_mutex_unlock(&lock);
    *out = p;
    return 0;
undo:
    for (int i = 0; i < p->n; i++)
        unref(p->seg[i].s, &m);
out:
    maps_free(&m);
    pthread_mutex_unlock(&lock);
    free(p);
    return rc;
}

void rpin_put(struct rpin *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&lock);
    struct maps m;
    if (maps_read(&m) == 0) {
        for (int i = 0; i < p->n; i++)
            unref(p->seg[i].s, &m);
    }
    maps_free(&m);
    pthread_mutex_unlock(&lock);
    free(p);
}

void rpin_args(struct rpin *p, struct rargs *a, int *fds, int *nfds)
{
    ra_key(a, "segments");
    msgpack_pack_array(&a->pk, (size_t)p->n);
    for (int i = 0; i < p->n; i++) {
        fds[i] = p->seg[i].s->fd;
        msgpack_pack_array(&a->pk, 3);
        msgpack_pack_int(&a->pk, i);
        msgpack_pack_uint64(&a->pk, p->seg[i].off);
        msgpack_pack_uint64(&a->pk, p->seg[i].bytes);
    }
    *nfds = p->n;
    ra_uint(a, "start", p->start);
}
