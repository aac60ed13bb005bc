/*
 * icrc.c — the RoCEv2 Invariant CRC (IBTA vol 1 Annex A17.3.3, "ICRC for RoCEv2").
 *
 * The ICRC is CRC-32 (the Ethernet polynomial, zlib's conventions) over
 *   8 bytes of 0xFF (a pseudo-LRH standing for the absent IB local route header),
 *   the IP header with its variant fields masked to ones (IPv4: TOS, TTL, header checksum),
 *   the UDP header with its checksum masked to ones,
 *   the BTH with its variant byte 4 (FECN, BECN, resv6) masked to ones,
 *   and everything after the BTH up to, not including, the ICRC itself.
 * The headers are rebuilt on the stack from the addresses and ports the packet travels
 * with, so the caller passes only BTH..pad and nothing is allocated.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "rnic_dp.h"

#define PSEUDO_LRH_LEN 8
#define IPV4_HDR_LEN 20
#define UDP_HDR_LEN 8
#define BTH_LEN 12
#define BTH_VARIANT_BYTE 4 /* FECN, BECN, resv6 */
#define ICRC_LEN 4
#define IPV4_DF 0x4000
#define IPPROTO_UDP_NUM 17

static void put_be16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

/* pkt shorter than a BTH is not a RoCE packet; it is still covered (masking byte 4 only if
 * present) so the result is defined. Lengths are taken modulo 2^16 as the IP and UDP length
 * fields hold them; callers keep packets within an IP datagram. */
uint32_t rnic_roce_icrc_v4(const uint8_t *pkt, size_t len, uint32_t src_ip_be,
                           uint32_t dst_ip_be, uint16_t sport, uint16_t dport)
{
    uint8_t h[PSEUDO_LRH_LEN + IPV4_HDR_LEN + UDP_HDR_LEN + BTH_LEN];
    uint8_t *ip = h + PSEUDO_LRH_LEN;
    uint8_t *udp = ip + IPV4_HDR_LEN;
    uint8_t *bth = udp + UDP_HDR_LEN;
    size_t udp_len = UDP_HDR_LEN + len + ICRC_LEN;
    size_t bth_part = len < BTH_LEN ? len : BTH_LEN;

    memset(h, 0xff, PSEUDO_LRH_LEN);
    ip[0] = 0x45;                                       /* version 4, IHL 5 */
    ip[1] = 0xff;                                       /* TOS: masked */
    put_be16(ip + 2, (uint16_t)(IPV4_HDR_LEN + udp_len)); /* total length */
    put_be16(ip + 4, 0);                                /* identification */
    put_be16(ip + 6, IPV4_DF);                          /* flags DF, fragment offset 0 */
    ip[8] = 0xff;                                       /* TTL: masked */
    ip[9] = IPPROTO_UDP_NUM;
    put_be16(ip + 10, 0xffff);                          /* header checksum: masked */
    memcpy(ip + 12, &src_ip_be, 4);
    memcpy(ip + 16, &dst_ip_be, 4);
    put_be16(udp + 0, sport);
    put_be16(udp + 2, dport);
    put_be16(udp + 4, (uint16_t)udp_len);
    put_be16(udp + 6, 0xffff);                          /* UDP checksum: masked */
    if (bth_part)
        memcpy(bth, pkt, bth_part);
    if (bth_part > BTH_VARIANT_BYTE)
        bth[BTH_VARIANT_BYTE] = 0xff;

    uint32_t crc = rnic_crc32(0, h, (size_t)(bth - h) + bth_part);
    return rnic_crc32(crc, pkt + bth_part, len - bth_part);
}

/* ---- the IPv4 Identification of UDP GSO segments --------------------------------------
 * The ICRC covers the IPv4 Identification, and the kernel numbers the segments of a UDP GSO
 * send k = 0, 1, ... from the ID it gives the send (0 for an unconnected socket with DF,
 * what every datagram of ours carries). CRC-32 is linear: for two messages of one length,
 * crc(A) ^ crc(B) is the raw CRC (register from 0, no final inversion) of A ^ B, here two ID
 * bytes followed by everything after them, which is the raw CRC of the two bytes multiplied
 * by x^(8q) modulo the polynomial, q the bytes after them. */

/* a * b modulo the CRC-32 polynomial, both in the reflected form (bit 31 is x^0) */
static uint32_t crc_mulmod(uint32_t a, uint32_t b)
{
    uint32_t p = 0;

    for (int i = 0; i < 32; i++) {
        if (a & (0x80000000u >> i))
            p ^= b;
        b = (b & 1) ? (b >> 1) ^ 0xEDB88320u : b >> 1;     /* b * x */
    }
    return p;
}

/* x^(8n) modulo the polynomial: what n zero bytes do to the register */
static uint32_t crc_zeros(uint64_t n)
{
    uint32_t r = 0x80000000u, base = 0x00800000u;        /* 1 and x^8 */

    for (; n; n >>= 1) {
        if (n & 1)
            r = crc_mulmod(r, base);
        base = crc_mulmod(base, base);
    }
    return r;
}

uint32_t rnic_roce_icrc_id_xor(size_t len, uint16_t ip_id)
{
    static size_t cached_len = (size_t)-1;
    static uint32_t cached_zeros;
    uint8_t id[2], zero[2] = {0, 0};

    if (ip_id == 0)
        return 0;
    if (len != cached_len) {        /* a run of segments shares its length */
        /* after the ID: the rest of the IPv4 header, UDP, pkt (BTH..pad) */
        cached_zeros = crc_zeros(IPV4_HDR_LEN - 6 + UDP_HDR_LEN + (uint64_t)len);
        cached_len = len;
    }
    put_be16(id, ip_id);
    return crc_mulmod(rnic_crc32(0, id, 2) ^ rnic_crc32(0, zero, 2), cached_zeros);
}

int rnic_roce_icrc_check_v4(const uint8_t *pkt, size_t len, uint32_t src_ip_be,
                            uint32_t dst_ip_be, uint16_t sport, uint16_t dport, uint16_t id_hint)
{
    uint32_t got, crc;

    if (len < ICRC_LEN)
        return 0;
    len -= ICRC_LEN;
    got = (uint32_t)pkt[len] | (uint32_t)pkt[len + 1] << 8 | (uint32_t)pkt[len + 2] << 16
          | (uint32_t)pkt[len + 3] << 24;
    crc = rnic_roce_icrc_v4(pkt, len, src_ip_be, dst_ip_be, sport, dport);
    if (got == crc || (id_hint && got == (crc ^ rnic_roce_icrc_id_xor(len, id_hint))))
        return 1;
    for (uint16_t id = 1; id < RNIC_GSO_MAX_SEGS; id++)
        if (id != id_hint && got == (crc ^ rnic_roce_icrc_id_xor(len, id)))
            return 1;
    return 0;
}

/* The ICRC goes on the wire least significant byte first, as scapy.contrib.roce's
 * BTH.pack_icrc does (struct.pack("!I", icrc)[::-1]); tests check it against scapy. */
void rnic_roce_icrc_put(uint8_t *dst, uint32_t icrc)
{
    dst[0] = (uint8_t)icrc;
    dst[1] = (uint8_t)(icrc >> 8);
    dst[2] = (uint8_t)(icrc >> 16);
    dst[3] = (uint8_t)(icrc >> 24);
}
