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

/* The ICRC goes on the wire least significant byte first, as scapy.contrib.roce's
 * BTH.pack_icrc does (struct.pack("!I", icrc)[::-1]); tests check it against scapy. */
void rnic_roce_icrc_put(uint8_t *dst, uint32_t icrc)
{
    dst[0] = (uint8_t)icrc;
    dst[1] = (uint8_t)(icrc >> 8);
    dst[2] = (uint8_t)(icrc >> 16);
    dst[3] = (uint8_t)(icrc >> 24);
}
