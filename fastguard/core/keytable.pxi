# fastguard/core/keytable.pxi: included by fastguard/_core.pyx (one extension; names are shared across includes).
# The sharded key table: growth, eviction, insertion, removal (twin: fastguard/_pure/keytable.py).

# ---------------------------------------------------------------------------------------------------------------
# Table maintenance (no GIL; caller holds the shard lock). Mirrors _pure.Shard step by step.
# ---------------------------------------------------------------------------------------------------------------
cdef int _grow(const fg_params *p, fg_shard *s) noexcept nogil:
    """Make room for one more entry: when it would leave the shard over 3/4 full, rehash into 1.1875x the slots
    (in old slot order). Load stays in [0.63, 3/4]: short probes, and under 64 bytes per key for a 40-byte entry.
    -1 when out of memory (the caller then evicts instead)."""
    cdef int64_t cap, pos, i
    cdef int64_t *slots
    cdef int64_t *old = s.slots
    cdef int64_t old_cap = s.cap
    cdef int64_t *e
    if (s.n + 1) * 4 <= s.cap * 3:
        return 0
    cap = s.cap + s.cap * 3 // 16
    if cap < FG_MIN_SLOTS:
        cap = FG_MIN_SLOTS
    while (s.n + 1) * 4 > cap * 3:
        cap += 1
    slots = <int64_t *>PyMem_RawMalloc(<size_t>cap * p.stride * sizeof(int64_t))
    if slots == NULL:
        return -1
    for i in range(cap):
        slots[i * p.stride + 1] = FG_EMPTY
    s.slots = slots
    s.cap = cap
    s.hand = 0
    for i in range(old_cap):
        e = old + i * p.stride
        if e[1] != FG_EMPTY:
            fg_table_find(p, s, <uint64_t>e[0], fg_table_hash(p, <uint64_t>e[0]), &pos)
            memcpy(fg_table_slot(p, s, pos), e, p.stride * sizeof(int64_t))
    PyMem_RawFree(old)
    return 0


cdef bint _exhausted(fg_params *p, const int64_t *entry, int64_t now) noexcept nogil:
    """True when a hit of cost 1 would be refused now (the key has no capacity left)."""
    cdef int64_t w[FG_MAX_LIMITS * FG_MAX_WORDS]
    cdef fg_verdict v
    if entry[1] > now:
        now = entry[1]
    memcpy(w, entry + FG_HEADER_WORDS, p.nlimits * p.words * sizeof(int64_t))
    _decide(p, w, now, 1, False, &v)
    return not v.allowed


cdef int64_t _victim(fg_params *p, fg_shard *s, int64_t now) noexcept nogil:
    """The slot to evict; mirrors _pure.Table._victim. Among the next EVICTION_SAMPLE occupied slots from the clock
    hand: the first fresh entry (evicting it loses nothing); else the lowest by (actively banned, exhausted, least
    recently touched): a ban outlives every key without one, and a key with capacity left loses less when
    forgotten than an exhausted one. While every entry looked at is banned, the scan goes on, up to EVICTION_SCAN
    entries, for one that is not; when all of those are banned, the ban that ends first goes (a longer scan would
    make each new key cost the whole shard once most of it is banned)."""
    cdef int64_t sample = FG_EVICTION_SAMPLE if s.n > FG_EVICTION_SAMPLE else s.n
    cdef int64_t scan = FG_EVICTION_SCAN if s.n > FG_EVICTION_SCAN else s.n
    cdef int64_t pos = s.hand, here, seen = 0, best = -1
    cdef int64_t *e
    cdef bint bans = p.stride > FG_HEADER_WORDS + p.nlimits * p.words
    cdef bint banned, exhausted, best_banned = False, best_exhausted = False
    cdef int64_t key2, best_key2 = 0
    while seen < sample or (best_banned and seen < scan):
        e = fg_table_slot(p, s, pos)
        here = pos
        pos += 1
        if pos == s.cap:
            pos = 0
        if e[1] == FG_EMPTY:
            continue
        seen += 1
        banned = bans and e[p.stride - 1] > now
        if not banned and _fresh(p, e, now):    # (a banned entry is never fresh)
            best = here
            break
        if banned:
            exhausted = False
            key2 = e[p.stride - 1]      # among bans: the one that ends first
        else:
            exhausted = _exhausted(p, e, now)
            key2 = e[1]                 # among the others: the least recently touched
        if best < 0 or (banned < best_banned) or (banned == best_banned and (
                exhausted < best_exhausted or (exhausted == best_exhausted and key2 < best_key2))):
            best, best_banned, best_exhausted, best_key2 = here, banned, exhausted, key2
    s.hand = pos
    return best


cdef int _insert(fg_params *p, fg_shard *s, uint64_t kid, uint64_t h, int64_t now,
                 const int64_t *words) noexcept nogil:
    """Store a new key (not present). A full table (max_keys, or no memory to grow) evicts first.
    -1 only when nothing can be stored at all."""
    cdef int64_t pos
    cdef int64_t *e
    cdef bint full = False
    if fg_atomic_add(&p.total, 1) > p.max_keys and s.n > 0:
        fg_atomic_add(&p.total, -1)
        full = True
    elif _grow(p, s) < 0:
        fg_atomic_add(&p.total, -1)
        if s.n == 0:
            return -1
        full = True
    if full:
        fg_table_unslot(p, s, _victim(p, s, now))
        s.n -= 1
        s.evictions += 1
    fg_table_find(p, s, kid, h, &pos)
    e = fg_table_slot(p, s, pos)
    e[0] = <int64_t>kid
    e[1] = now
    memcpy(e + FG_HEADER_WORDS, words, p.nlimits * p.words * sizeof(int64_t))
    if p.stride > FG_HEADER_WORDS + p.nlimits * p.words:
        e[p.stride - 3] = 0
        e[p.stride - 2] = 0
        e[p.stride - 1] = 0
    s.n += 1
    return 0


cdef void _remove(fg_params *p, fg_shard *s, uint64_t kid, uint64_t h) noexcept nogil:
    """Forget `kid`."""
    cdef int64_t pos
    if s.n == 0 or not fg_table_find(p, s, kid, h, &pos):
        return
    fg_table_unslot(p, s, pos)
    s.n -= 1
    fg_atomic_add(&p.total, -1)
