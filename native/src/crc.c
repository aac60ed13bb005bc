/*
 * crc.c — CRC-32 (IEEE, for the RoCEv2 ICRC, IBTA Annex A17.3.3) and CRC-32C (Castagnoli,
 * for the MPA CRC, RFC 5044 section 8) over byte buffers.
 *
 * Both are reflected CRCs with pre/post inversion and zlib's calling convention
 * (crc = 0 starts, passing a previous result continues). Three engines:
 *   - slicing-by-8 tables (portable; tables built once when the module is loaded),
 *   - CRC-32: carry-less multiplication folding with PCLMULQDQ (the method of Intel's
 *     white paper "Fast CRC Computation for Generic Polynomials Using PCLMULQDQ"), with
 *     512-bit VPCLMULQDQ (AVX-512) for 256 bytes and more where the CPU has it,
 *   - CRC-32C: the SSE4.2 crc32 instruction, which implements exactly this polynomial.
 * The accelerated engines are compiled with function-level target attributes and chosen
 * at load time with __builtin_cpu_supports, so the module loads on any x86-64 CPU.
 *
 * Internally every engine works on the "state" (the inverted CRC register); the public
 * functions invert on entry and exit.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "rnic_dp.h"

#define CRC32_POLY_REFLECTED 0xEDB88320u  /* x^32 + x^26 + ... + 1, bit-reversed */
#define CRC32C_POLY_REFLECTED 0x82F63B78u /* Castagnoli, bit-reversed */

static uint32_t crc32_tab[8][256];
static uint32_t crc32c_tab[8][256];

static void crc_build_tables(uint32_t tab[8][256], uint32_t poly)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? (c >> 1) ^ poly : c >> 1;
        tab[0][i] = c;
    }
    /* tab[k][i]: the state contribution of byte i followed by k zero bytes. */
    for (int k = 1; k < 8; k++)
        for (uint32_t i = 0; i < 256; i++)
            tab[k][i] = (tab[k - 1][i] >> 8) ^ tab[0][tab[k - 1][i] & 0xff];
}

/* Slicing-by-8 over the state. */
static uint32_t crc_tab_update(uint32_t tab[8][256], uint32_t s, const uint8_t *p,
                               size_t len)
{
    while (len && ((uintptr_t)p & 7)) {
        s = tab[0][(s ^ *p++) & 0xff] ^ (s >> 8);
        len--;
    }
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    while (len >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        w ^= s;
        s = tab[7][w & 0xff] ^ tab[6][(w >> 8) & 0xff] ^ tab[5][(w >> 16) & 0xff] ^
            tab[4][(w >> 24) & 0xff] ^ tab[3][(w >> 32) & 0xff] ^ tab[2][(w >> 40) & 0xff] ^
            tab[1][(w >> 48) & 0xff] ^ tab[0][w >> 56];
        p += 8;
        len -= 8;
    }
#endif
    while (len--)
        s = tab[0][(s ^ *p++) & 0xff] ^ (s >> 8);
    return s;
}

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#define RNIC_X86 1

/*
 * PCLMULQDQ folding for the reflected CRC-32 polynomial P. Folding a 128-bit lane forward
 * by D bits multiplies its two halves by x^(D+32) mod P and x^(D-32) mod P, each stored
 * bit-reflected and shifted left by one (33 bits):
 *   k_fold4 = x^544, x^480 (D = 512, four lanes); k_fold1 = x^160, x^96 (D = 128);
 *   k_fold64 = x^64 (64 -> 32 bits); k_barrett = P and floor(x^64 / P) (reflected);
 *   for the 512-bit path k_fold16 = x^2080, x^2016 (D = 2048, sixteen lanes), and
 *   k_fold3 = x^416, x^352 and k_fold2 = x^288, x^224 (D = 384, 256: four lanes to one).
 */
static const uint64_t k_fold16[2] = {0x011542778aull, 0x01322d1430ull};
static const uint64_t k_fold4[2] = {0x0154442bd4ull, 0x01c6e41596ull};
static const uint64_t k_fold3[2] = {0x003db1ecdcull, 0x0174359406ull};
static const uint64_t k_fold2[2] = {0x00f1da05aaull, 0x015a546366ull};
static const uint64_t k_fold1[2] = {0x01751997d0ull, 0x00ccaa009eull};
static const uint64_t k_fold64 = 0x0163cd6124ull;
static const uint64_t k_barrett[2] = {0x01db710641ull, 0x01f7011641ull};

__attribute__((target("sse4.2,pclmul")))
static inline __m128i fold128(__m128i acc, __m128i k, __m128i next)
{
    __m128i lo = _mm_clmulepi64_si128(acc, k, 0x00);
    __m128i hi = _mm_clmulepi64_si128(acc, k, 0x11);
    return _mm_xor_si128(_mm_xor_si128(lo, hi), next);
}

/* The last 16-byte blocks folded into the one lane x0 (len a multiple of 16), then 128 bits
 * reduced to the 32-bit state. */
__attribute__((target("sse4.2,pclmul")))
static inline uint32_t crc32_pclmul_finish(__m128i x0, const __m128i *v, size_t len)
{
    __m128i k = _mm_loadu_si128((const __m128i *)k_fold1);

    while (len >= 16) {
        x0 = fold128(x0, k, _mm_loadu_si128(v++));
        len -= 16;
    }
    /* 128 -> 64 bits: fold the low half onto the high half (times x^96). */
    const __m128i mask32 = _mm_set_epi32(0, -1, 0, -1);
    __m128i t = _mm_clmulepi64_si128(x0, k, 0x10);
    x0 = _mm_xor_si128(_mm_srli_si128(x0, 8), t);
    /* 64 -> 32 bits (plus the 32-bit tail), then Barrett reduction to the 32-bit state. */
    k = _mm_set_epi64x(0, (long long)k_fold64);
    t = _mm_srli_si128(x0, 4);
    x0 = _mm_clmulepi64_si128(_mm_and_si128(x0, mask32), k, 0x00);
    x0 = _mm_xor_si128(x0, t);
    k = _mm_loadu_si128((const __m128i *)k_barrett);
    t = _mm_clmulepi64_si128(_mm_and_si128(x0, mask32), k, 0x10);
    t = _mm_clmulepi64_si128(_mm_and_si128(t, mask32), k, 0x00);
    x0 = _mm_xor_si128(x0, t);
    return (uint32_t)_mm_extract_epi32(x0, 1);
}

/* State update over p[0..len), len >= 64 and a multiple of 16. */
__attribute__((target("sse4.2,pclmul")))
static uint32_t crc32_pclmul_blocks(uint32_t s, const uint8_t *p, size_t len)
{
    const __m128i *v = (const __m128i *)p;
    __m128i x0 = _mm_loadu_si128(v + 0), x1 = _mm_loadu_si128(v + 1);
    __m128i x2 = _mm_loadu_si128(v + 2), x3 = _mm_loadu_si128(v + 3);
    __m128i k = _mm_loadu_si128((const __m128i *)k_fold4);

    x0 = _mm_xor_si128(x0, _mm_cvtsi32_si128((int)s));
    v += 4;
    len -= 64;
    while (len >= 64) {
        x0 = fold128(x0, k, _mm_loadu_si128(v + 0));
        x1 = fold128(x1, k, _mm_loadu_si128(v + 1));
        x2 = fold128(x2, k, _mm_loadu_si128(v + 2));
        x3 = fold128(x3, k, _mm_loadu_si128(v + 3));
        v += 4;
        len -= 64;
    }
    k = _mm_loadu_si128((const __m128i *)k_fold1);
    x0 = fold128(x0, k, x1);
    x0 = fold128(x0, k, x2);
    x0 = fold128(x0, k, x3);
    return crc32_pclmul_finish(x0, v, len);
}

__attribute__((target("sse4.2,pclmul")))
static uint32_t crc32_hw(uint32_t s, const uint8_t *p, size_t len)
{
    if (len >= 64) {
        size_t blocks = len & ~(size_t)15;
        s = crc32_pclmul_blocks(s, p, blocks);
        p += blocks;
        len -= blocks;
    }
    return crc_tab_update(crc32_tab, s, p, len);
}

#define VPCLMUL_TARGET "avx512f,avx512vl,vpclmulqdq,sse4.2,pclmul"

__attribute__((target(VPCLMUL_TARGET)))
static inline __m512i fold512(__m512i acc, __m512i k, __m512i next)
{
    __m512i lo = _mm512_clmulepi64_epi128(acc, k, 0x00);
    __m512i hi = _mm512_clmulepi64_epi128(acc, k, 0x11);
    return _mm512_ternarylogic_epi64(lo, hi, next, 0x96);     /* lo ^ hi ^ next */
}

/* The same folding 512 bits at a time: sixteen 128-bit lanes in four accumulators, folded
 * 2048 bits forward per turn, then four accumulators to one and its four lanes to one, and
 * the rest as the 128-bit path. len >= 256 and a multiple of 16. */
__attribute__((target(VPCLMUL_TARGET)))
static uint32_t crc32_vpclmul_blocks(uint32_t s, const uint8_t *p, size_t len)
{
    __m512i x0 = _mm512_loadu_si512(p), x1 = _mm512_loadu_si512(p + 64);
    __m512i x2 = _mm512_loadu_si512(p + 128), x3 = _mm512_loadu_si512(p + 192);
    __m512i k = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)k_fold16));

    x0 = _mm512_xor_si512(x0, _mm512_zextsi128_si512(_mm_cvtsi32_si128((int)s)));
    p += 256;
    len -= 256;
    while (len >= 256) {
        x0 = fold512(x0, k, _mm512_loadu_si512(p));
        x1 = fold512(x1, k, _mm512_loadu_si512(p + 64));
        x2 = fold512(x2, k, _mm512_loadu_si512(p + 128));
        x3 = fold512(x3, k, _mm512_loadu_si512(p + 192));
        p += 256;
        len -= 256;
    }
    k = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)k_fold4));
    x0 = fold512(x0, k, x1);
    x0 = fold512(x0, k, x2);
    x0 = fold512(x0, k, x3);
    /* lanes 0, 1, 2 folded 384, 256, 128 bits forward onto lane 3 */
    __m128i l = _mm512_extracti32x4_epi32(x0, 3);
    l = fold128(_mm512_extracti32x4_epi32(x0, 0), _mm_loadu_si128((const __m128i *)k_fold3), l);
    l = fold128(_mm512_extracti32x4_epi32(x0, 1), _mm_loadu_si128((const __m128i *)k_fold2), l);
    l = fold128(_mm512_extracti32x4_epi32(x0, 2), _mm_loadu_si128((const __m128i *)k_fold1), l);
    return crc32_pclmul_finish(l, (const __m128i *)p, len);
}

__attribute__((target(VPCLMUL_TARGET)))
static uint32_t crc32_hw512(uint32_t s, const uint8_t *p, size_t len)
{
    size_t blocks = len & ~(size_t)15;

    if (blocks < 256)
        return crc32_hw(s, p, len);
    s = crc32_vpclmul_blocks(s, p, blocks);
    return crc_tab_update(crc32_tab, s, p + blocks, len - blocks);
}

__attribute__((target("sse4.2")))
static uint32_t crc32c_hw(uint32_t s, const uint8_t *p, size_t len)
{
    while (len && ((uintptr_t)p & 7)) {
        s = _mm_crc32_u8(s, *p++);
        len--;
    }
#if defined(__x86_64__)
    uint64_t s64 = s;
    while (len >= 32) {
        uint64_t w0, w1, w2, w3;
        memcpy(&w0, p, 8);
        memcpy(&w1, p + 8, 8);
        memcpy(&w2, p + 16, 8);
        memcpy(&w3, p + 24, 8);
        s64 = _mm_crc32_u64(s64, w0);
        s64 = _mm_crc32_u64(s64, w1);
        s64 = _mm_crc32_u64(s64, w2);
        s64 = _mm_crc32_u64(s64, w3);
        p += 32;
        len -= 32;
    }
    while (len >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        s64 = _mm_crc32_u64(s64, w);
        p += 8;
        len -= 8;
    }
    s = (uint32_t)s64;
#endif
    while (len--)
        s = _mm_crc32_u8(s, *p++);
    return s;
}
#endif /* x86 */

static uint32_t crc32_sw_state(uint32_t s, const uint8_t *p, size_t len)
{
    return crc_tab_update(crc32_tab, s, p, len);
}

static uint32_t crc32c_sw_state(uint32_t s, const uint8_t *p, size_t len)
{
    return crc_tab_update(crc32c_tab, s, p, len);
}

typedef uint32_t (*crc_fn)(uint32_t, const uint8_t *, size_t);
static crc_fn crc32_impl = crc32_sw_state;
static crc_fn crc32c_impl = crc32c_sw_state;
static uint32_t cpu_features;

/* Runs when the shared object is loaded (before any caller can reach the functions). */
__attribute__((constructor))
static void crc_init(void)
{
    crc_build_tables(crc32_tab, CRC32_POLY_REFLECTED);
    crc_build_tables(crc32c_tab, CRC32C_POLY_REFLECTED);
#ifdef RNIC_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.2")) {
        crc32_impl = crc32_hw;
        cpu_features |= RNIC_CPU_PCLMUL;
        if (__builtin_cpu_supports("vpclmulqdq") && __builtin_cpu_supports("avx512f") &&
            __builtin_cpu_supports("avx512vl")) {
            crc32_impl = crc32_hw512;
            cpu_features |= RNIC_CPU_VPCLMUL;
        }
    }
    if (__builtin_cpu_supports("sse4.2")) {
        crc32c_impl = crc32c_hw;
        cpu_features |= RNIC_CPU_SSE42;
    }
#endif
}

uint32_t rnic_cpu_features(void)
{
    return cpu_features;
}

uint32_t rnic_crc32(uint32_t crc, const uint8_t *buf, size_t len)
{
    return len ? ~crc32_impl(~crc, buf, len) : crc;
}

uint32_t rnic_crc32c(uint32_t crc, const uint8_t *buf, size_t len)
{
    return len ? ~crc32c_impl(~crc, buf, len) : crc;
}

uint32_t rnic_crc32_sw(uint32_t crc, const uint8_t *buf, size_t len)
{
    return len ? ~crc32_sw_state(~crc, buf, len) : crc;
}

uint32_t rnic_crc32c_sw(uint32_t crc, const uint8_t *buf, size_t len)
{
    return len ? ~crc32c_sw_state(~crc, buf, len) : crc;
}
