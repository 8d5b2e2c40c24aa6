# cython: language_level=3
# Declarations of the compiled core: C structs and the inline helpers that hold the math.
#   fg_window_*  fixed and sliding windows        fg_bucket_*  token bucket and GCRA
#   fg_table_*   the sharded open-addressing key table
# The rules are defined (and documented) by fastguard/_pure/; every helper here mirrors one method there.
# All helpers run without the GIL and never touch Python objects.

from cpython.ref cimport PyObject
from libc.stdint cimport int64_t, uint64_t, uint32_t

cdef extern from "core/fastguard_core.h":
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

cdef extern from "core/fastguard_core.h":
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
