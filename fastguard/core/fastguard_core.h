/* fastguard's compiled core: the C helpers under the Cython code (fastguard/_core.pxd declares them).
 * Locks and atomics, SipHash-1-3, the 64-bit mixer, and 128-bit division for the rate-limit arithmetic.
 * Everything here is static inline: the compiler inlines it into the decision loops. */
#ifndef FASTGUARD_CORE_H
#define FASTGUARD_CORE_H

#define FG_NEVER ((int64_t)-1)
#define FG_MAX_COST ((int64_t)1 << 62)

#include <sched.h>
#include <string.h>
#include <stdint.h>
typedef __int128 fg_i128;

/* Spin lock: a shard's critical section is a few dozen nanoseconds (one decision) or one batch group,
   and the holder never blocks, so spinning (then yielding) beats a futex round trip. */
static inline void fg_spin_lock(int *l) {
    unsigned spins = 0;
    while (__atomic_exchange_n(l, 1, __ATOMIC_ACQUIRE)) {
        while (__atomic_load_n(l, __ATOMIC_RELAXED)) {
            if (++spins >= 128) { sched_yield(); spins = 0; }
        }
    }
}
static inline int fg_spin_trylock(int *l) {
    return !__atomic_load_n(l, __ATOMIC_RELAXED) && !__atomic_exchange_n(l, 1, __ATOMIC_ACQUIRE);
}
static inline void fg_spin_unlock(int *l) { __atomic_store_n(l, 0, __ATOMIC_RELEASE); }
static inline int64_t fg_atomic_add(int64_t *p, int64_t v) { return __atomic_add_fetch(p, v, __ATOMIC_RELAXED); }
static inline int64_t fg_atomic_load(int64_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline void fg_atomic_store(int64_t *p, int64_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }

/* SipHash-1-3 (Aumasson & Bernstein), 64-bit output, written from the paper's description:
   a keyed PRF, so callers who choose keys cannot choose their table positions. */
#define FG_ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define FG_SIPROUND do { \
    v0 += v1; v1 = FG_ROTL(v1, 13); v1 ^= v0; v0 = FG_ROTL(v0, 32); \
    v2 += v3; v3 = FG_ROTL(v3, 16); v3 ^= v2; \
    v0 += v3; v3 = FG_ROTL(v3, 21); v3 ^= v0; \
    v2 += v1; v1 = FG_ROTL(v1, 17); v1 ^= v2; v2 = FG_ROTL(v2, 32); } while (0)
static inline uint64_t fg_load_le64(const unsigned char *p) {
    uint64_t m; memcpy(&m, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    m = __builtin_bswap64(m);
#endif
    return m;
}
static inline uint64_t fg_siphash13(const unsigned char *p, size_t n, uint64_t k0, uint64_t k1) {
    uint64_t v0 = k0 ^ 0x736f6d6570736575ULL, v1 = k1 ^ 0x646f72616e646f6dULL;
    uint64_t v2 = k0 ^ 0x6c7967656e657261ULL, v3 = k1 ^ 0x7465646279746573ULL;
    uint64_t b = ((uint64_t)n) << 56, m;
    size_t whole = n & ~(size_t)7, i;
    for (i = 0; i < whole; i += 8) { m = fg_load_le64(p + i); v3 ^= m; FG_SIPROUND; v0 ^= m; }
    for (i = 0; i < (n & 7); i++) b |= ((uint64_t)p[whole + i]) << (8 * i);
    v3 ^= b; FG_SIPROUND; v0 ^= b;
    v2 ^= 0xff; FG_SIPROUND; FG_SIPROUND; FG_SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}
/* Quotient (and remainder) of a >= 0 by b > 0 whose quotient fits in int64 (every caller's does).
   Divisions dominate a decision's cost, and __int128 division is a slow library call, so: one 64-bit
   divide when a fits in 63 bits, else x86-64's 128-by-64 divq (safe: hi < b keeps the quotient in 64 bits). */
static inline int64_t fg_divmod(fg_i128 a, int64_t b, int64_t *rem) {
    if (((unsigned __int128)a >> 63) == 0) {
        uint64_t q = (uint64_t)a / (uint64_t)b;
        if (rem) *rem = (int64_t)((uint64_t)a - q * (uint64_t)b);
        return (int64_t)q;
    }
#if defined(__x86_64__)
    uint64_t hi = (uint64_t)((unsigned __int128)a >> 64), lo = (uint64_t)a, q, r;
    if (hi < (uint64_t)b) {
        __asm__("divq %4" : "=a"(q), "=d"(r) : "a"(lo), "d"(hi), "rm"((uint64_t)b));
        if (rem) *rem = (int64_t)r;
        return (int64_t)q;
    }
#endif
    if (rem) *rem = (int64_t)(a % b);
    return (int64_t)(a / b);
}
static inline int64_t fg_div(fg_i128 a, int64_t b) { return fg_divmod(a, b, NULL); }

/* floor(a / b) for a >= 0, b > 0 and a quotient of at most about 2**53 (a remaining count): a floating
   estimate from the precomputed 1/b, made exact by comparing the remainder in integers. No divide at all. */
static inline int64_t fg_div_small(fg_i128 a, int64_t b, double inv_b) {
    double ad = (double)(uint64_t)((unsigned __int128)a >> 64) * 18446744073709551616.0 + (double)(uint64_t)a;
    int64_t q = (int64_t)(ad * inv_b);
    fg_i128 r = a - (fg_i128)q * b;
    if (r < -4 * (fg_i128)b || r >= 4 * (fg_i128)b) return fg_div(a, b);   /* estimate too far: divide */
    while (r < 0) { q--; r += b; }
    while (r >= b) { q++; r -= b; }
    return q;
}
/* floor(a / b) for 0 <= a < 2**63, b > 0, from the precomputed 1/b: exact (checked by the remainder), and a
   real divide only when the floating estimate is off by more than one (huge quotients). */
static inline int64_t fg_div64(int64_t a, int64_t b, double inv_b) {
    int64_t q = (int64_t)((double)a * inv_b), r = a - q * b;
    if (r >= 0 && r < b) return q;
    if (r < 0 && r >= -b) return q - 1;
    if (r >= b && r - b < b) return q + 1;
    return a / b;
}
#define fg_prefetch(p) __builtin_prefetch((const void *)(p), 1, 3)

/* Lemire's multiply-shift: h (uniform in 2**64) -> [0, n) without a divide, so tables can grow by less than 2x. */
static inline uint64_t fg_fastrange(uint64_t h, uint64_t n) { return (uint64_t)(((unsigned __int128)h * n) >> 64); }

/* A bijective 64-bit mixer (the murmur3 finalizer): spreads ids, keyed by xor-ing a secret first. */
static inline uint64_t fg_mix(uint64_t x) {
    x ^= x >> 33; x *= 0xff51afd7ed558ccdULL; x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ULL; x ^= x >> 33;
    return x;
}

#endif /* FASTGUARD_CORE_H */
