# cython: language_level=3
# Declarations of the compiled core: C structs and the inline helpers that hold the math.
#   fg_window_*  fixed and sliding windows        fg_bucket_*  token bucket and GCRA
#   fg_table_*   the sharded open-addressing key table
# The rules are defined (and documented) by fastguard/_pure.py; every helper here mirrors one method there.
# All helpers run without the GIL and never touch Python objects.

from cpython.ref cimport PyObject
from libc.stdint cimport int64_t, uint64_t, uint32_t

cdef extern from *:
    """
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
    """
    ctypedef long long fg_i128   # really __int128; only C arithmetic ever touches it
    void fg_spin_lock(int *l) noexcept nogil
    bint fg_spin_trylock(int *l) noexcept nogil
    void fg_spin_unlock(int *l) noexcept nogil
    int64_t fg_atomic_add(int64_t *p, int64_t v) noexcept nogil
    int64_t fg_atomic_load(int64_t *p) noexcept nogil
    void fg_atomic_store(int64_t *p, int64_t v) noexcept nogil
    uint64_t fg_siphash13(const unsigned char *p, size_t n, uint64_t k0, uint64_t k1) noexcept nogil
    uint64_t fg_mix(uint64_t x) noexcept nogil
    uint64_t fg_fastrange(uint64_t h, uint64_t n) noexcept nogil
    void fg_prefetch(const void *p) noexcept nogil
    int64_t fg_div(fg_i128 a, int64_t b) noexcept nogil
    int64_t fg_divmod(fg_i128 a, int64_t b, int64_t *rem) noexcept nogil
    int64_t fg_div_small(fg_i128 a, int64_t b, double inv_b) noexcept nogil
    int64_t fg_div64(int64_t a, int64_t b, double inv_b) noexcept nogil

cdef enum:
    FG_MAX_LIMITS = 8
    FG_MAX_WORDS = 3              # words of state per limit (sliding window)
    FG_HEADER_WORDS = 2           # entry header: key id, touched (latest time seen, ns)
    FG_BAN_WORDS = 3              # with bans, after the limits: denials, start of their window, banned until
    FG_EVICTION_SAMPLE = 8
    FG_EVICTION_SCAN = 72         # while only bans are seen, the scan goes on up to this many entries
    FG_EMPTY = -1                 # `touched` of an empty slot (real times are >= 0)
    FG_MIN_SLOTS = 8
    FG_BATCH_CHUNK = 16384        # hit_many groups this many keys at a time (work array and outputs stay in L2)
    FG_PREFETCH = 8               # hit_many prefetches the slot of the key this far ahead

cdef enum fg_algorithm:
    FG_FIXED_WINDOW = 0
    FG_SLIDING_WINDOW = 1
    FG_TOKEN_BUCKET = 2
    FG_GCRA = 3

cdef extern from *:
    """
    #define FG_NEVER ((int64_t)-1)
    #define FG_MAX_COST ((int64_t)1 << 62)
    """
    int64_t FG_NEVER            # a retry time meaning "never admissible" (cost above the count)
    int64_t FG_MAX_COST

ctypedef struct fg_limit:
    int64_t count               # C
    int64_t period              # P, ns
    int64_t interval            # GCRA emission interval T = ceil(P / C), ns
    double inv_period           # 1 / P, 1 / T and 1 / C, for fg_div64 / fg_div_small
    double inv_interval
    double inv_count
    bint narrow                 # C * P < 2**62: sliding window and bucket math fits in int64
    int64_t cp                  # C * P when narrow
    int64_t window_hint         # the window index last computed (read and written racily: always re-checked)

ctypedef struct fg_params:
    int algorithm
    int nlimits
    int words                   # state words per limit
    int stride                  # words per entry: FG_HEADER_WORDS + nlimits * words (+ FG_BAN_WORDS with bans)
    int64_t ban_after           # denials within ban_window that start a ban (0: no bans)
    int64_t ban_for             # ns a ban lasts
    int64_t ban_window          # ns: the period of the limit with the shortest period
    int ban_limit               # that limit's index (a ban's Decision describes it)
    uint64_t seed               # secret xor-ed into ids before mixing
    int64_t max_keys
    int64_t total               # keys held in all shards (atomic)
    fg_limit lim[FG_MAX_LIMITS]

ctypedef struct fg_shard:
    int lock
    int64_t n                   # occupied slots
    int64_t cap                 # slots (at most 3/4 occupied)
    int64_t hand                # eviction clock hand: a slot position
    int64_t *slots              # cap entries of `stride` words, in place (open addressing, linear probing)
    int64_t hits
    int64_t denials
    int64_t evictions
    int64_t bans                # bans started (ban_after reached, or ban())
    char pad[56]                # keeps the next shard's lock off this shard's cache lines (128 bytes in all)

ctypedef struct fg_job:          # one key of a hit_many batch, in shard order
    uint64_t id
    uint64_t h
    int64_t ix                  # its position in the caller's arrays
    int64_t cost

ctypedef struct fg_jslot:        # one key of the hit journal (local-first cluster mode)
    uint64_t kid
    PyObject *key               # a strong reference while the slot is used; NULL when free
    int64_t cost

ctypedef struct fg_verdict:
    bint allowed
    bint banned                 # refused because the key is banned (or this denial started its ban)
    int best                    # the limit the decision describes
    int64_t reset_ns            # of the best limit
    int64_t retry_ns            # 0 when allowed, FG_NEVER when never
    int64_t remaining[FG_MAX_LIMITS]


# ----------------------------------------------------------------------------------------------------------
# Fixed window. Words: [window index, count]. See _pure.FixedWindow.
# ----------------------------------------------------------------------------------------------------------
cdef inline int64_t fg_window_index(fg_limit *l, int64_t now) noexcept nogil:
    """now // P, without a divide when `now` is in the window computed last time (the usual case)."""
    cdef int64_t win = fg_atomic_load(&l.window_hint)
    cdef int64_t start = win * l.period
    if start <= now and now - start < l.period:
        return win
    win = now // l.period
    fg_atomic_store(&l.window_hint, win)
    return win

cdef inline void fg_window_fixed_roll(int64_t *w, int64_t win) noexcept nogil:
    if win != w[0]:
        w[0] = win
        w[1] = 0

cdef inline bint fg_window_fixed_admits(const int64_t *w, int64_t C, int64_t k) noexcept nogil:
    return w[1] + k <= C

cdef inline int64_t fg_window_fixed_reset(const int64_t *w, int64_t now, int64_t P) noexcept nogil:
    # (win + 1) * P - now, written so that it cannot overflow
    return P - (now - w[0] * P) if w[1] > 0 else 0

cdef inline int64_t fg_window_fixed_retry(const int64_t *w, int64_t now, int64_t C, int64_t P,
                                          int64_t k) noexcept nogil:
    return FG_NEVER if k > C else P - (now - w[0] * P)


# ----------------------------------------------------------------------------------------------------------
# Sliding window (two-window counter). Words: [window index, cur, prev]. See _pure.SlidingWindow.
# ----------------------------------------------------------------------------------------------------------
cdef inline void fg_window_sliding_roll(int64_t *w, int64_t win) noexcept nogil:
    if win == w[0]:
        return
    if win == w[0] + 1:
        w[2] = w[1]
    else:
        w[2] = 0
    w[0] = win
    w[1] = 0

cdef inline fg_i128 fg_window_sliding_weighted_prev(const int64_t *w, int64_t now, int64_t P) noexcept nogil:
    return <fg_i128>w[2] * (P - (now - w[0] * P))

cdef inline bint fg_window_sliding_admits(const int64_t *w, int64_t now, int64_t C, int64_t P,
                                          int64_t k) noexcept nogil:
    return (fg_window_sliding_weighted_prev(w, now, P) + <fg_i128>(w[1] + k) * P) <= <fg_i128>C * P

cdef inline int64_t fg_window_sliding_remaining(const int64_t *w, int64_t now, const fg_limit *l) noexcept nogil:
    cdef int64_t C = l.count, P = l.period
    cdef fg_i128 room = <fg_i128>C * P - fg_window_sliding_weighted_prev(w, now, P) - <fg_i128>w[1] * P
    return fg_div_small(room, P, l.inv_period) if room > 0 else 0

cdef inline int64_t fg_window_sliding_reset(const int64_t *w, int64_t now, int64_t P) noexcept nogil:
    cdef int64_t left = P - (now - w[0] * P)
    if w[1] > 0:
        return left + P
    if w[2] > 0:
        return left
    return 0

cdef inline int64_t fg_window_sliding_retry(const int64_t *w, int64_t now, int64_t C, int64_t P,
                                            int64_t k) noexcept nogil:
    cdef int64_t cur = w[1], prev = w[2]
    cdef int64_t left = P - (now - w[0] * P)
    cdef int64_t later
    if k > C:
        return FG_NEVER
    if cur + k <= C:
        return left - fg_div(<fg_i128>(C - cur - k) * P, prev)
    later = P - fg_div(<fg_i128>(C - k) * P, cur)
    return left + (later if later > 0 else 0)


# ----------------------------------------------------------------------------------------------------------
# Token bucket, exact. Words: [full_at, frac]: full at full_at + frac / C ns. See _pure.TokenBucket.
# GCRA. Words: [tat]. See _pure.GCRA.
# ----------------------------------------------------------------------------------------------------------
cdef inline fg_i128 fg_bucket_deficit(const int64_t *w, int64_t now, int64_t C) noexcept nogil:
    cdef fg_i128 d = <fg_i128>(w[0] - now) * C + w[1]
    return d if d > 0 else 0

cdef inline bint fg_bucket_admits(fg_i128 d, int64_t C, int64_t P, int64_t k) noexcept nogil:
    return d + <fg_i128>k * P <= <fg_i128>C * P

cdef inline void fg_bucket_consume(int64_t *w, fg_i128 d, int64_t now, int64_t C, int64_t P,
                                   int64_t k) noexcept nogil:
    d += <fg_i128>k * P
    w[0] = now + fg_divmod(d, C, &w[1])

cdef inline int64_t fg_bucket_retry(fg_i128 d, int64_t C, int64_t P, int64_t k) noexcept nogil:
    if k > C:
        return FG_NEVER
    return fg_div(d + <fg_i128>(k - C) * P + C - 1, C)

cdef inline int64_t fg_bucket_gcra_delay(const int64_t *w, int64_t now) noexcept nogil:
    return w[0] - now if w[0] > now else 0

cdef inline int64_t fg_bucket_gcra_retry(int64_t d, int64_t C, int64_t T, int64_t k) noexcept nogil:
    if k > C:
        return FG_NEVER
    return <int64_t>(<fg_i128>d + <fg_i128>k * T - <fg_i128>C * T)


# ----------------------------------------------------------------------------------------------------------
# The table: shards, each an open-addressing array of entries stored in place (linear probing, backward-shift
# deletion). An entry is [key id, touched, limit words...]; an empty slot has touched == FG_EMPTY. Keeping the
# entry in the slot makes a lookup one dependent cache miss. See _pure.Shard, which mirrors every step.
# ----------------------------------------------------------------------------------------------------------
cdef inline uint64_t fg_table_hash(const fg_params *p, uint64_t kid) noexcept nogil:
    return fg_mix(kid ^ p.seed)

cdef inline int64_t *fg_table_slot(const fg_params *p, const fg_shard *s, int64_t pos) noexcept nogil:
    return s.slots + pos * p.stride

cdef inline int64_t fg_table_home(const fg_shard *s, uint64_t h) noexcept nogil:
    return <int64_t>fg_fastrange(h, <uint64_t>s.cap)

cdef inline bint fg_table_find(const fg_params *p, const fg_shard *s, uint64_t kid, uint64_t h,
                               int64_t *pos_out) noexcept nogil:
    """True when `kid` is in shard `s`; `pos_out` gets its slot, or the empty slot where it would go."""
    cdef int64_t pos = fg_table_home(s, h)
    cdef int64_t *e
    while True:
        e = fg_table_slot(p, s, pos)
        if e[1] == FG_EMPTY:
            pos_out[0] = pos
            return False
        if <uint64_t>e[0] == kid:
            pos_out[0] = pos
            return True
        pos += 1
        if pos == s.cap:
            pos = 0

cdef inline void fg_table_prefetch(const fg_params *p, const fg_shard *s, uint64_t h) noexcept nogil:
    """Prefetch a key's home slot and what follows it: a successful lookup probes 2.5 slots on average at 3/4 load,
    so the three cache lines from the home slot on hold the entry most of the time."""
    cdef int64_t *e = fg_table_slot(p, s, fg_table_home(s, h))
    fg_prefetch(e)
    fg_prefetch(e + 8)
    fg_prefetch(e + 16)

cdef inline void fg_table_unslot(const fg_params *p, fg_shard *s, int64_t hole) noexcept nogil:
    """Empty slot `hole` by backward-shift deletion: later entries of the probe run move back, so no tombstones."""
    cdef int64_t j = hole, home
    cdef int64_t *e
    cdef bint stays
    cdef int w
    while True:
        j += 1
        if j == s.cap:
            j = 0
        e = fg_table_slot(p, s, j)
        if e[1] == FG_EMPTY:
            break
        home = fg_table_home(s, fg_table_hash(p, <uint64_t>e[0]))
        # The entry at j stays unless the hole lies on its probe path, i.e. its home is not in (hole, j].
        if hole <= j:
            stays = hole < home <= j
        else:
            stays = home > hole or home <= j
        if stays:
            continue
        for w in range(p.stride):
            fg_table_slot(p, s, hole)[w] = e[w]
        hole = j
    fg_table_slot(p, s, hole)[1] = FG_EMPTY
