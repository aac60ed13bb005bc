/* cma_addr.c — addresses for rnicd's librdmacm: rdma_bind_addr, rdma_resolve_addr/route,
 * rdma_getaddrinfo. rnicd speaks RoCEv2 over IPv4 from one address (the device's GID 0);
 * the kernel's routing table says whether a destination is reached through the device's
 * netdev (docs/connection-management.md "Address resolution", as the Python client). */
#define _GNU_SOURCE
#include "cma.h"

#include <arpa/inet.h>
#include <errno.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <netdb.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

void cma_set_sin(struct sockaddr *sa, uint32_t ip, uint16_t port_be)
{
    struct sockaddr_in *s = (struct sockaddr_in *)sa;
    memset(s, 0, sizeof(*s));
    s->sin_family = AF_INET;
    s->sin_addr.s_addr = ip;
    s->sin_port = port_be;
}

/* An IPv4 address (or an IPv4-mapped IPv6 one): 0, or -EAFNOSUPPORT. */
int cma_sockaddr_ipv4(const struct sockaddr *sa, uint32_t *ip, uint16_t *port)
{
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *s = (const struct sockaddr_in *)sa;
        *ip = s->sin_addr.s_addr;
        *port = s->sin_port;
        return 0;
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)sa;
        if (IN6_IS_ADDR_V4MAPPED(&s->sin6_addr)) {
            memcpy(ip, s->sin6_addr.s6_addr + 12, 4);
            *port = s->sin6_port;
            return 0;
        }
    }
    rnic_log("librdmacm: address family %d is not offered (rnicd speaks RoCEv2 over IPv4)",
             sa->sa_family);
    return -EAFNOSUPPORT;
}

static void mapped_gid(union ibv_gid *g, uint32_t ip)
{
    memset(g, 0, sizeof(*g));
    g->raw[10] = g->raw[11] = 0xff;
    memcpy(g->raw + 12, &ip, 4);
}

/* The route's path (struct ibv_sa_path_rec, as rdma_cm fills it on RoCE). */
void cma_fill_route(struct cma_id *id)
{
    struct rdma_route *r = &id->id.route;
    struct ibv_sa_path_rec *p = &id->path;
    memset(p, 0, sizeof(*p));
    mapped_gid(&p->sgid, r->addr.src_sin.sin_addr.s_addr);
    mapped_gid(&p->dgid, r->addr.dst_sin.sin_addr.s_addr);
    p->pkey = htobe16(0xffff);
    p->hop_limit = 64;
    p->reversible = 1;
    p->numb_path = 1;
    p->mtu_selector = 2;                 /* exactly */
    p->mtu = (uint8_t)cma_dev.port.active_mtu;
    p->rate_selector = 2;
    p->rate = 3;                         /* IBV_RATE_10_GBPS */
    p->packet_life_time_selector = 2;
    p->packet_life_time = 14;
    r->addr.addr.ibaddr.sgid = p->sgid;
    r->addr.addr.ibaddr.dgid = p->dgid;
    r->addr.addr.ibaddr.pkey = p->pkey;
    r->path_rec = p;
    r->num_paths = 1;
}

/* The kernel's route to dst (RTM_GETROUTE): it must leave through the device's netdev,
 * or be local. 0 or -errno. */
int cma_route_check(uint32_t dst)
{
    int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
    if (fd < 0)
        return -errno;
    struct {
        struct nlmsghdr nh;
        struct rtmsg rt;
        char attrs[64];
    } req = {0};
    req.nh.nlmsg_len = NLMSG_LENGTH(sizeof(struct rtmsg));
    req.nh.nlmsg_type = RTM_GETROUTE;
    req.nh.nlmsg_flags = NLM_F_REQUEST;
    req.nh.nlmsg_seq = 1;
    req.rt.rtm_family = AF_INET;
    req.rt.rtm_dst_len = 32;
    struct rtattr *ra = (struct rtattr *)((char *)&req + NLMSG_ALIGN(req.nh.nlmsg_len));
    ra->rta_type = RTA_DST;
    ra->rta_len = RTA_LENGTH(4);
    memcpy(RTA_DATA(ra), &dst, 4);
    req.nh.nlmsg_len = NLMSG_ALIGN(req.nh.nlmsg_len) + RTA_ALIGN(ra->rta_len);
    char buf[4096];
    int rc = -ENETUNREACH;
    if (send(fd, &req, req.nh.nlmsg_len, 0) < 0) {
        rc = -errno;
        goto out;
    }
    ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n < 0) {
        rc = -errno;
        goto out;
    }
    for (struct nlmsghdr *nh = (struct nlmsghdr *)buf; NLMSG_OK(nh, (size_t)n);
         nh = NLMSG_NEXT(nh, n)) {
        if (nh->nlmsg_type == NLMSG_ERROR) {
            struct nlmsgerr *e = NLMSG_DATA(nh);
            rc = e->error ? e->error : -ENETUNREACH;
            rnic_log("librdmacm: no route to the destination: %s", strerror(-rc));
            break;
        }
        if (nh->nlmsg_type != RTM_NEWROUTE)
            continue;
        struct rtmsg *rt = NLMSG_DATA(nh);
        int oif = 0, len = (int)RTM_PAYLOAD(nh);
        for (struct rtattr *a = RTM_RTA(rt); RTA_OK(a, len); a = RTA_NEXT(a, len))
            if (a->rta_type == RTA_OIF)
                memcpy(&oif, RTA_DATA(a), sizeof(oif));
        if (rt->rtm_type == RTN_LOCAL || !cma_dev.ifindex || oif == cma_dev.ifindex) {
            rc = 0;
        } else {
            rnic_log("librdmacm: the route leaves through interface %d, but the device is "
                     "bound to interface %d (ENETUNREACH)", oif, cma_dev.ifindex);
            rc = -ENETUNREACH;
        }
        break;
    }
out:
    close(fd);
    return rc;
}

/* A source address must be the device's (or the wildcard). */
static int check_source(uint32_t ip)
{
    if (ip == 0 || ip == cma_dev.ip)
        return 0;
    char s[INET_ADDRSTRLEN], d[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &ip, s, sizeof(s));
    inet_ntop(AF_INET, &cma_dev.ip, d, sizeof(d));
    rnic_log("librdmacm: %s is not the device's address (%s); rnicd sends from its bound "
             "address (EADDRNOTAVAIL)", s, d);
    return cma_err(EADDRNOTAVAIL);
}

static void attach_device(struct cma_id *c)
{
    c->id.verbs = cma_dev.verbs;
    if (!c->id.pd)
        c->id.pd = cma_dev.pd;
    c->id.port_num = 1;
}

CMA_EXPORT int rdma_bind_addr(struct rdma_cm_id *id, struct sockaddr *addr)
{
    if (!id || !addr)
        return cma_err(EINVAL);
    uint32_t ip;
    uint16_t port;
    int rc = cma_sockaddr_ipv4(addr, &ip, &port);
    if (rc < 0)
        return cma_err(-rc);
    if (check_source(ip))
        return -1;
    struct cma_id *c = cid(id);
    cma_set_sin(&id->route.addr.src_addr, ip, port);
    c->bound = 1;
    if (ip)                      /* a wildcard bind names no device (id->verbs stays NULL) */
        attach_device(c);
    return 0;
}

CMA_EXPORT int rdma_resolve_addr(struct rdma_cm_id *id, struct sockaddr *src_addr,
                                 struct sockaddr *dst_addr, int timeout_ms)
{
    (void)timeout_ms;
    if (!id || !dst_addr)
        return cma_err(EINVAL);
    struct cma_id *c = cid(id);
    uint32_t dip, sip = 0;
    uint16_t dport, sport = c->bound ? id->route.addr.src_sin.sin_port : 0;
    int rc = cma_sockaddr_ipv4(dst_addr, &dip, &dport);
    if (rc == 0 && src_addr)
        rc = cma_sockaddr_ipv4(src_addr, &sip, &sport);
    if (rc < 0)
        return cma_err(-rc);
    if (check_source(sip))
        return -1;
    rc = dip == 0 ? -EADDRNOTAVAIL : cma_route_check(dip);
    if (rc < 0) {
        if (c->sync)
            return cma_err(-rc);
        return cma_push_local(c, RDMA_CM_EVENT_ADDR_ERROR, rc);
    }
    cma_set_sin(&id->route.addr.src_addr, cma_dev.ip, sport);
    cma_set_sin(&id->route.addr.dst_addr, dip, dport);
    attach_device(c);
    c->addr_resolved = 1;
    return c->sync ? 0 : cma_push_local(c, RDMA_CM_EVENT_ADDR_RESOLVED, 0);
}

/* On RoCE the IP route is the path: resolved at once. */
CMA_EXPORT int rdma_resolve_route(struct rdma_cm_id *id, int timeout_ms)
{
    (void)timeout_ms;
    if (!id)
        return cma_err(EINVAL);
    struct cma_id *c = cid(id);
    if (!c->addr_resolved)
        return cma_err(EINVAL);
    cma_fill_route(c);
    c->route_resolved = 1;
    return c->sync ? 0 : cma_push_local(c, RDMA_CM_EVENT_ROUTE_RESOLVED, 0);
}

/* ---- rdma_getaddrinfo(3) ----------------------------------------------------------------- */
static struct sockaddr *dup_sa(const struct sockaddr *sa, socklen_t len)
{
    struct sockaddr *s = malloc(len);
    if (s)
        memcpy(s, sa, len);
    return s;
}

CMA_EXPORT void rdma_freeaddrinfo(struct rdma_addrinfo *res)
{
    while (res) {
        struct rdma_addrinfo *n = res->ai_next;
        free(res->ai_src_addr);
        free(res->ai_dst_addr);
        free(res->ai_src_canonname);
        free(res->ai_dst_canonname);
        free(res->ai_route);
        free(res->ai_connect);
        free(res);
        res = n;
    }
}

CMA_EXPORT int rdma_getaddrinfo(const char *node, const char *service,
                                const struct rdma_addrinfo *hints, struct rdma_addrinfo **res)
{
    if (!res || (!node && !service))
        return cma_err(EINVAL);
    struct rdma_addrinfo h = {0};
    if (hints)
        h = *hints;
    if (h.ai_family && h.ai_family != AF_INET) {
        rnic_log("librdmacm: rdma_getaddrinfo: family %d is not offered (IPv4 only)",
                 h.ai_family);
        return EAI_FAMILY;
    }
    struct addrinfo gh = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM};
    if (h.ai_flags & RAI_PASSIVE)
        gh.ai_flags |= AI_PASSIVE;
    if (h.ai_flags & RAI_NUMERICHOST)
        gh.ai_flags |= AI_NUMERICHOST;
    struct addrinfo *ai = NULL;
    int rc = getaddrinfo(node, service, &gh, &ai);
    if (rc)
        return rc;
    struct rdma_addrinfo *r = calloc(1, sizeof(*r));
    if (!r) {
        freeaddrinfo(ai);
        return cma_err(ENOMEM);
    }
    r->ai_flags = h.ai_flags;
    r->ai_family = AF_INET;
    r->ai_port_space = h.ai_port_space ? h.ai_port_space
                       : h.ai_qp_type == IBV_QPT_UD ? RDMA_PS_UDP : RDMA_PS_TCP;
    r->ai_qp_type = h.ai_qp_type ? h.ai_qp_type
                    : r->ai_port_space == RDMA_PS_UDP || r->ai_port_space == RDMA_PS_IPOIB
                        ? IBV_QPT_UD : IBV_QPT_RC;
    int bad = 0;
    if (h.ai_flags & RAI_PASSIVE) {
        r->ai_src_len = ai->ai_addrlen;
        bad = !(r->ai_src_addr = dup_sa(ai->ai_addr, ai->ai_addrlen));
    } else {
        r->ai_dst_len = ai->ai_addrlen;
        bad = !(r->ai_dst_addr = dup_sa(ai->ai_addr, ai->ai_addrlen));
        if (!bad && h.ai_src_addr && h.ai_src_len) {
            r->ai_src_len = h.ai_src_len;
            bad = !(r->ai_src_addr = dup_sa(h.ai_src_addr, h.ai_src_len));
        }
    }
    freeaddrinfo(ai);
    if (bad) {
        rdma_freeaddrinfo(r);
        return cma_err(ENOMEM);
    }
    *res = r;
    return 0;
}
