# cython: language_level=3
"""Compiled core of fastguard: the sharded key table and the four rate-limit algorithms.

The rules are those of fastguard/_pure.py (its docstrings are the definition); this module implements them in
int64/int128 C arithmetic over a bounded table. Directives live in setup.py (cdivision is on: every division
here has non-negative operands, and the divisors are positive counts or periods).

Threads: each shard has a spin lock; a single `hit` keeps the GIL (releasing it would cost more than the whole
decision) and holds its shard's lock for one decision; `hit_many` releases the GIL once for its whole loop and
takes each shard's lock once per batch. A lock holder never blocks or calls Python, so GIL holders and
GIL-free batch loops cannot deadlock.
"""

cimport cython
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.ref cimport Py_DECREF, Py_INCREF, Py_XDECREF, PyObject
from cpython.float cimport PyFloat_AS_DOUBLE
from cpython.long cimport PyLong_AsLongLongAndOverflow
from cpython.mem cimport PyMem_RawCalloc, PyMem_RawFree, PyMem_RawMalloc, PyMem_RawRealloc
from libc.math cimport ceil, floor, isfinite
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memchr, memcmp, memcpy
from posix.time cimport CLOCK_REALTIME, clock_gettime, timespec

import numpy as np

from fastguard import errors as _errors
from fastguard._secret import MIX_SEED, SIP_K0, SIP_K1

from fastguard.arguments import ALGORITHMS as _ALGORITHMS
from fastguard.arguments import NO_BANS, as_integer, ban_seconds, ban_settings, check_algorithm, check_max_keys
from fastguard.decision import decision_headers

cdef extern from "Python.h":
    const char *PyUnicode_AsUTF8AndSize(object s, Py_ssize_t *size) except NULL
    bint PyUnicode_IS_COMPACT_ASCII(object s)
    void *PyUnicode_DATA(object s)
    Py_ssize_t PyUnicode_GET_LENGTH(object s)

ALGORITHMS = _ALGORITHMS   # fastguard.arguments, the one list (the core's codes are its indices)
EVICTION_SAMPLE = FG_EVICTION_SAMPLE
EVICTION_SCAN = FG_EVICTION_SCAN

# Per-process secrets (fastguard._secret, shared with _pure): key bytes -> SipHash-1-3 id; id -> position.
cdef uint64_t _sip_k0 = SIP_K0
cdef uint64_t _sip_k1 = SIP_K1

cdef double _INF = float("inf")
cdef int64_t _MAX_NOW_NS = (<int64_t>1) << 62
cdef int64_t _SMALL_TABLE = 4096        # below this many keys a single shard
cdef int _SHARDS = 64


# ---------------------------------------------------------------------------------------------------------------
# Argument conversion (GIL held). Same rules and messages as _pure.
# ---------------------------------------------------------------------------------------------------------------
cdef inline uint64_t _key_id(object key) except? 0:
    """SipHash-1-3 of the key's bytes (a str's UTF-8)."""
    cdef const char *buf
    cdef Py_ssize_t n
    if type(key) is str and PyUnicode_IS_COMPACT_ASCII(key):
        buf = <const char *>PyUnicode_DATA(key)   # ASCII is its own UTF-8: no conversion, no call
        n = PyUnicode_GET_LENGTH(key)
    elif type(key) is bytes:
        buf = PyBytes_AS_STRING(key)
        n = PyBytes_GET_SIZE(key)
    elif isinstance(key, str):
        buf = _utf8(key, &n)
    elif isinstance(key, bytes):
        buf = PyBytes_AS_STRING(key)
        n = PyBytes_GET_SIZE(key)
    else:
        raise TypeError(f"rate-limit key must be str or bytes, not {type(key).__name__}")
    return fg_siphash13(<const unsigned char *>buf, <size_t>n, _sip_k0, _sip_k1)


cdef const char *_utf8(object key, Py_ssize_t *n) except NULL:
    """A str key's UTF-8; ValueError (as _pure's) when it holds a lone surrogate."""
    try:
        return PyUnicode_AsUTF8AndSize(key, n)
    except UnicodeEncodeError:
        raise ValueError(f"rate-limit key {key!r} holds a lone surrogate: pass the key as bytes") from None


cdef inline int64_t _cost(object cost) except -1:
    cdef int overflow = 0
    cdef long long v
    if type(cost) is not int and (isinstance(cost, bool) or not isinstance(cost, int)):
        cost = as_integer(cost)   # numpy integers and the like; TypeError for the rest
    v = PyLong_AsLongLongAndOverflow(cost, &overflow)
    if overflow < 0 or (overflow == 0 and v < 0):
        raise ValueError(f"cost must not be negative, got {cost}")
    if overflow > 0 or v > FG_MAX_COST:
        return FG_MAX_COST   # above every count: the answer is the same
    return v


cdef inline int64_t _now_ns(object now) except -1:
    cdef timespec ts
    cdef double ns
    if now is None:
        clock_gettime(CLOCK_REALTIME, &ts)
        return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec
    if type(now) is float:
        ns = PyFloat_AS_DOUBLE(now) * 1e9
    elif isinstance(now, bool) or not isinstance(now, (int, float)):
        raise TypeError(f"now must be epoch seconds as a float, not {type(now).__name__}")
    else:
        try:
            ns = float(now) * 1e9
        except OverflowError:
            ns = _INF
    if not isfinite(ns) or ns < 0 or ns >= <double>_MAX_NOW_NS:
        raise ValueError(f"now must be epoch seconds between 0 and 2**62 ns, got {now!r}")
    return <int64_t>floor(ns)


cdef inline double _seconds(int64_t ns) noexcept nogil:
    return _INF if ns == FG_NEVER else <double>ns / 1e9


# ---------------------------------------------------------------------------------------------------------------
# The decision (no GIL; caller holds the shard lock). Mirrors _pure.Table._decide.
# ---------------------------------------------------------------------------------------------------------------
cdef inline void _fresh_words(const fg_params *p, int64_t *w) noexcept nogil:
    cdef int i
    for i in range(p.nlimits):
        if p.algorithm == FG_FIXED_WINDOW:
            w[0] = -1
            w[1] = 0
        elif p.algorithm == FG_SLIDING_WINDOW:
            w[0] = -2
            w[1] = 0
            w[2] = 0
        elif p.algorithm == FG_TOKEN_BUCKET:
            w[0] = 0
            w[1] = 0
        else:
            w[0] = 0
        w += p.words


cdef void _decide(fg_params *p, int64_t *w, int64_t now, int64_t k, bint commit,
                  fg_verdict *v) noexcept nogil:
    """Decide a hit of cost `k` at `now` on state `w` (rolled and, when admitted and `commit`, consumed in place).

    Rolling to `now` changes how a state is written, not what it means for times >= `now`; so it may be stored by a
    hit, which also moves the key's `touched` to `now` (earlier clocks are then clamped to it), never by a peek.
    The algorithm (and a count of 1 limit, the common case) is passed as a constant to the inlined body, so the
    compiler builds one branch-free copy of each."""
    cdef int n = p.nlimits
    if p.algorithm == FG_FIXED_WINDOW:
        if n == 1:
            _decide_as(p, FG_FIXED_WINDOW, 1, w, now, k, commit, v)
        else:
            _decide_as(p, FG_FIXED_WINDOW, n, w, now, k, commit, v)
    elif p.algorithm == FG_SLIDING_WINDOW:
        if n == 1:
            _decide_as(p, FG_SLIDING_WINDOW, 1, w, now, k, commit, v)
        else:
            _decide_as(p, FG_SLIDING_WINDOW, n, w, now, k, commit, v)
    elif p.algorithm == FG_TOKEN_BUCKET:
        if n == 1:
            _decide_as(p, FG_TOKEN_BUCKET, 1, w, now, k, commit, v)
        else:
            _decide_as(p, FG_TOKEN_BUCKET, n, w, now, k, commit, v)
    elif n == 1:
        _decide_as(p, FG_GCRA, 1, w, now, k, commit, v)
    else:
        _decide_as(p, FG_GCRA, n, w, now, k, commit, v)


cdef inline void _decide_as(fg_params *p, const int algorithm, const int nlimits, int64_t *w, int64_t now, int64_t k,
                            bint commit,
                            fg_verdict *v) noexcept nogil:
    cdef int i, best = 0
    cdef int64_t C, P, T, r, d, retry = 0
    cdef int64_t *x
    cdef fg_limit *l
    cdef fg_i128 dbig
    cdef int64_t pre[FG_MAX_LIMITS]     # per limit: the sliding window's weighted prev, or the bucket's deficit
    cdef bint ok, allowed = True
    # Pass 1: roll every limit to `now`, test admission, and collect the retry time of those that refuse.
    # Limits with C * P < 2**62 ("narrow", nearly all) take int64 paths; the others the exact int128 ones.
    for i in range(nlimits):
        x = w + i * p.words
        l = &p.lim[i]
        C = l.count
        P = l.period
        if algorithm == FG_FIXED_WINDOW:
            fg_window_fixed_roll(x, fg_window_index(l, now))
            ok = fg_window_fixed_admits(x, C, k)
            r = 0 if ok else fg_window_fixed_retry(x, now, C, P, k)
        elif algorithm == FG_SLIDING_WINDOW:
            fg_window_sliding_roll(x, fg_window_index(l, now))
            if l.narrow:
                pre[i] = x[2] * (P - (now - x[0] * P))
                ok = x[1] + k <= C and pre[i] + (x[1] + k) * P <= l.cp
            else:
                ok = fg_window_sliding_admits(x, now, C, P, k)
            r = 0 if ok else fg_window_sliding_retry(x, now, C, P, k)
        elif algorithm == FG_TOKEN_BUCKET:
            if l.narrow:
                d = (x[0] - now) * C + x[1] if x[0] >= now else 0
                pre[i] = d if d > 0 else 0
                ok = k <= C and pre[i] + k * P <= l.cp
                r = 0 if ok else fg_bucket_retry(pre[i], C, P, k)
            else:
                dbig = fg_bucket_deficit(x, now, C)
                ok = fg_bucket_admits(dbig, C, P, k)
                r = 0 if ok else fg_bucket_retry(dbig, C, P, k)
        else:
            d = fg_bucket_gcra_delay(x, now)
            ok = k <= C and d + k * l.interval <= C * l.interval
            r = 0 if ok else fg_bucket_gcra_retry(d, C, l.interval, k)
        if not ok:
            allowed = False
            if r == FG_NEVER or retry == FG_NEVER:
                retry = FG_NEVER
            elif r > retry:
                retry = r
    # Pass 2: count the hit in every limit (only when all admitted), then read what remains.
    for i in range(nlimits):
        x = w + i * p.words
        l = &p.lim[i]
        C = l.count
        P = l.period
        if algorithm == FG_FIXED_WINDOW:
            if allowed and commit:
                x[1] += k
            v.remaining[i] = C - x[1]
        elif algorithm == FG_SLIDING_WINDOW:
            if allowed and commit:
                x[1] += k
            if l.narrow:
                d = l.cp - pre[i] - x[1] * P
                v.remaining[i] = fg_div64(d, P, l.inv_period) if d > 0 else 0
            else:
                v.remaining[i] = fg_window_sliding_remaining(x, now, l)
        elif algorithm == FG_TOKEN_BUCKET:
            if l.narrow:
                d = pre[i]
                if allowed and commit:
                    d += k * P
                    x[0] = now + fg_div64(d, C, l.inv_count)
                    x[1] = d - (x[0] - now) * C
                    pre[i] = d
                v.remaining[i] = fg_div64(l.cp - d, P, l.inv_period)
            else:
                if allowed and commit:
                    fg_bucket_consume(x, fg_bucket_deficit(x, now, C), now, C, P, k)
                v.remaining[i] = fg_div_small(<fg_i128>C * P - fg_bucket_deficit(x, now, C), P, l.inv_period)
        else:
            T = l.interval
            d = fg_bucket_gcra_delay(x, now)
            if allowed and commit:
                d += k * T
                x[0] = now + d
            v.remaining[i] = fg_div64(C * T - d, T, l.inv_interval)
        if i > 0 and (v.remaining[i] < v.remaining[best] or
                      (v.remaining[i] == v.remaining[best] and P > p.lim[best].period)):
            best = i
    x = w + best * p.words
    l = &p.lim[best]
    C = l.count
    P = l.period
    if algorithm == FG_FIXED_WINDOW:
        v.reset_ns = fg_window_fixed_reset(x, now, P)
    elif algorithm == FG_SLIDING_WINDOW:
        v.reset_ns = fg_window_sliding_reset(x, now, P)
    elif algorithm == FG_TOKEN_BUCKET:
        if l.narrow:
            v.reset_ns = fg_div64(pre[best] + C - 1, C, l.inv_count)
        else:
            v.reset_ns = fg_div(fg_bucket_deficit(x, now, C) + C - 1, C)
    else:
        v.reset_ns = fg_bucket_gcra_delay(x, now)
    v.allowed = allowed
    v.best = best
    v.retry_ns = retry


cdef bint _fresh(fg_params *p, const int64_t *entry, int64_t now) noexcept nogil:
    """True when the entry would decide exactly like a new key at `now` (its state has fully expired)."""
    cdef int64_t w[FG_MAX_LIMITS * FG_MAX_WORDS]
    cdef int i
    cdef int64_t *x
    if entry[1] > now:
        now = entry[1]
    memcpy(w, entry + FG_HEADER_WORDS, p.nlimits * p.words * sizeof(int64_t))
    for i in range(p.nlimits):
        x = w + i * p.words
        if p.algorithm == FG_FIXED_WINDOW:
            fg_window_fixed_roll(x, fg_window_index(&p.lim[i], now))
            if x[1] != 0:
                return False
        elif p.algorithm == FG_SLIDING_WINDOW:
            fg_window_sliding_roll(x, fg_window_index(&p.lim[i], now))
            if x[1] != 0 or x[2] != 0:
                return False
        elif p.algorithm == FG_TOKEN_BUCKET:
            if fg_bucket_deficit(x, now, p.lim[i].count) != 0:
                return False
        elif fg_bucket_gcra_delay(x, now) != 0:
            return False
    if p.stride > FG_HEADER_WORDS + p.nlimits * p.words:
        x = <int64_t *>entry + FG_HEADER_WORDS + p.nlimits * p.words
        if x[2] > now or (x[0] != 0 and now - x[1] < p.ban_window):
            return False  # banned, or denials still counting towards a ban
    return True


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


cdef inline void _banned_verdict(const fg_params *p, int64_t left, fg_verdict *v) noexcept nogil:
    """A refusal for a banned key: nothing remains, retry when the ban ends. Describes the ban's limit."""
    cdef int i
    v.allowed = False
    v.banned = True
    v.best = p.ban_limit
    v.retry_ns = left
    v.reset_ns = left
    for i in range(p.nlimits):
        v.remaining[i] = 0


cdef inline void _count_denial(const fg_params *p, fg_shard *s, int64_t *ban, int64_t now,
                               fg_verdict *v) noexcept nogil:
    """Count a denial towards a ban: ban_after of them within ban_window (from the first) start a ban of
    ban_for ns; the denial that starts it says so (banned, retry after the whole ban)."""
    if ban[0] == 0 or now - ban[1] >= p.ban_window:
        ban[0] = 0
        ban[1] = now
    ban[0] += 1
    if ban[0] >= p.ban_after:
        ban[0] = 0
        ban[2] = now + p.ban_for
        s.bans += 1
        v.banned = True
        v.retry_ns = p.ban_for
        if v.reset_ns < p.ban_for:
            v.reset_ns = p.ban_for


cdef int _hit_locked(fg_params *p, fg_shard *s, uint64_t kid, uint64_t h, int64_t k, int64_t now, bint commit,
                     fg_verdict *v) noexcept nogil:
    """One decision with the shard lock held. -1 only when a new key cannot be stored at all (no memory)."""
    cdef int64_t fresh[FG_MAX_LIMITS * FG_MAX_WORDS]
    cdef int64_t pos
    cdef int64_t *entry
    cdef int64_t *ban
    cdef bint bans = p.stride > FG_HEADER_WORDS + p.nlimits * p.words
    v.banned = False
    if s.n > 0 and fg_table_find(p, s, kid, h, &pos):
        entry = fg_table_slot(p, s, pos)
        if entry[1] > now:
            now = entry[1]      # time went backwards for this key: decide as if no time had passed
        if bans:
            ban = entry + p.stride - FG_BAN_WORDS
            if ban[2] > now:    # banned: answered without looking at the limits
                _banned_verdict(p, ban[2] - now, v)
                if commit:
                    entry[1] = now
                    s.hits += 1
                    s.denials += 1
                return 0
        if not commit:
            # A peek decides on a copy: rolling the stored state to a time the key has not been hit at would let a
            # later hit with an earlier clock (but not before `touched`) see the windows reset.
            memcpy(fresh, entry + FG_HEADER_WORDS, p.nlimits * p.words * sizeof(int64_t))
            _decide(p, fresh, now, k, False, v)
            return 0
        # A hit rolls and counts in place: `touched` moves to `now` with it, so the rolled state stays valid.
        _decide(p, entry + FG_HEADER_WORDS, now, k, True, v)
        entry[1] = now
        s.hits += 1
        s.denials += not v.allowed
        if bans and not v.allowed and p.ban_after > 0:
            _count_denial(p, s, entry + p.stride - FG_BAN_WORDS, now, v)
        return 0
    _fresh_words(p, fresh)
    _decide(p, fresh, now, k, commit, v)
    if not commit:
        return 0
    s.hits += 1
    if not v.allowed:
        s.denials += 1
        return 0
    return _insert(p, s, kid, h, now, fresh)


cdef int _charge_locked(fg_params *p, fg_shard *s, uint64_t kid, uint64_t h, int64_t k,
                        int64_t now) noexcept nogil:
    """Count up to `k` in every limit of the key, each limit as far as it admits, without deciding (what other
    nodes admitted, in local-first cluster mode). Mirrors _pure.Table.charge. -1 only when out of memory."""
    cdef int64_t fresh[FG_MAX_LIMITS * FG_MAX_WORDS]
    cdef int64_t copy[FG_MAX_WORDS]
    cdef int64_t pos, c
    cdef int64_t *entry = NULL
    cdef int64_t *w
    cdef fg_params one
    cdef fg_verdict v
    cdef int i
    cdef bint counted = False
    if s.n > 0 and fg_table_find(p, s, kid, h, &pos):
        entry = fg_table_slot(p, s, pos)
        if entry[1] > now:
            now = entry[1]
        w = entry + FG_HEADER_WORDS
    else:
        _fresh_words(p, fresh)
        w = fresh
    # Each limit on its own: a one-limit copy of the parameters decides what it alone admits.
    one = p[0]
    one.nlimits = 1
    for i in range(p.nlimits):
        one.lim[0] = p.lim[i]
        memcpy(copy, w + i * p.words, p.words * sizeof(int64_t))
        _decide(&one, copy, now, 1, False, &v)       # its remaining: the largest cost it admits now
        c = k if k < v.remaining[0] else v.remaining[0]
        if c > 0:
            _decide(&one, w + i * p.words, now, c, True, &v)
            counted = True
    if entry != NULL:
        entry[1] = now
        return 0
    if not counted:
        return 0
    return _insert(p, s, kid, h, now, fresh)


@cython.freelist(256)
@cython.no_gc
cdef class Decision:
    """One rate-limit decision. Times in float seconds; `retry_after` is 0.0 when allowed, inf when never."""

    cdef readonly bint allowed
    cdef readonly bint banned
    cdef readonly int64_t limit
    cdef readonly int64_t remaining
    cdef readonly double reset_after
    cdef readonly double retry_after
    cdef readonly double period
    cdef readonly tuple limits
    cdef int64_t _remaining[FG_MAX_LIMITS]

    @property
    def remainings(self):
        """Remaining of every limit, in the limiter's order."""
        return tuple([self._remaining[i] for i in range(len(self.limits))])

    def headers(self, style="ietf"):
        """Response headers: "ietf" (RateLimit-*) or "kong" (X-RateLimit-*-<Window> plus RateLimit-*)."""
        return decision_headers(self, style)

    @staticmethod
    def of(bint allowed, int64_t limit, int64_t remaining, double reset_after, double retry_after, double period,
           tuple limits, remainings, bint banned=False):
        """A Decision made elsewhere (a cluster store, a fallback): limits is the tuple of Limits, remainings one
        int per limit. Raises ValueError when they differ in length or exceed the core's limit count."""
        cdef Py_ssize_t i, n = len(limits)
        if n > FG_MAX_LIMITS or len(remainings) != n:
            raise ValueError(f"a Decision holds 1 to {FG_MAX_LIMITS} limits with one remaining each")
        cdef Decision d = Decision.__new__(Decision)
        d.allowed = allowed
        d.banned = banned
        d.limit = limit
        d.remaining = remaining
        d.reset_after = reset_after
        d.retry_after = retry_after
        d.period = period
        d.limits = limits
        for i in range(n):
            d._remaining[i] = remainings[i]
        return d

    def __bool__(self):
        return self.allowed

    def __repr__(self):
        return (f"Decision(allowed={self.allowed}, limit={self.limit}, remaining={self.remaining}, "
                f"reset_after={self.reset_after:.3f}, retry_after={self.retry_after:.3f}"
                f"{', banned=True' if self.banned else ''})")


cdef class Table:
    """The key table and the decision rules. Same methods and results as fastguard._pure.Table."""

    cdef fg_params p
    cdef fg_shard *shards
    cdef int nshards
    cdef uint64_t rotor
    cdef readonly str algorithm
    cdef readonly tuple limits
    cdef readonly int64_t max_keys
    # The journal of hits, kept only while recording (local-first cluster mode): per key id, the key object and
    # the summed admitted cost (0 for a key only denied), in a small open-addressing map (a drain costs per key,
    # not per hit), holding at most max_keys keys (more distinct keys between drains are not journaled).
    cdef bint recording
    cdef fg_jslot *jmap
    cdef Py_ssize_t jlen, jcap
    cdef readonly int64_t jdropped

    def __cinit__(self, str algorithm, limits, max_keys, ban_after=0, ban_for=0.0):
        cdef int i
        self.shards = NULL
        self.jmap = NULL
        check_algorithm(algorithm)
        check_max_keys(max_keys)
        if max_keys > 2**40:
            raise ValueError(f"max_keys {max_keys} is above the table's maximum 2**40")
        limits = tuple(limits)
        if not 1 <= len(limits) <= FG_MAX_LIMITS:
            raise ValueError(f"a table decides 1 to {FG_MAX_LIMITS} limits, got {len(limits)}")
        self.algorithm = algorithm
        self.limits = limits
        self.max_keys = max_keys
        self.p.algorithm = ALGORITHMS.index(algorithm)
        self.p.nlimits = len(limits)
        self.p.words = (2, 3, 2, 1)[self.p.algorithm]
        self.p.stride = FG_HEADER_WORDS + self.p.nlimits * self.p.words
        ban_after, ban_for_ns = ban_settings(ban_after, ban_for)
        self.p.ban_after = ban_after
        self.p.ban_for = ban_for_ns
        self.p.ban_limit = min(range(len(limits)), key=lambda j: limits[j].period_ns)
        self.p.ban_window = limits[self.p.ban_limit].period_ns
        if ban_after > 0 or ban_for_ns > 0:
            self.p.stride += FG_BAN_WORDS
        self.p.seed = MIX_SEED
        self.p.max_keys = max_keys
        self.p.total = 0
        for i, lim in enumerate(limits):
            self.p.lim[i].count = lim.count
            self.p.lim[i].period = lim.period_ns
            self.p.lim[i].interval = (lim.period_ns + lim.count - 1) // lim.count
            self.p.lim[i].inv_period = 1.0 / lim.period_ns
            self.p.lim[i].inv_interval = 1.0 / self.p.lim[i].interval
            self.p.lim[i].inv_count = 1.0 / lim.count
            self.p.lim[i].narrow = lim.count * lim.period_ns < 2**62
            self.p.lim[i].cp = lim.count * lim.period_ns if self.p.lim[i].narrow else 0
            self.p.lim[i].window_hint = 0
        self.nshards = 1 if max_keys < _SMALL_TABLE else _SHARDS
        self.shards = <fg_shard *>PyMem_RawCalloc(self.nshards, sizeof(fg_shard))   # empty shards: no slots yet
        if self.shards == NULL:
            raise MemoryError()

    def __dealloc__(self):
        cdef int i
        cdef Py_ssize_t j
        if self.shards != NULL:
            for i in range(self.nshards):
                PyMem_RawFree(self.shards[i].slots)
            PyMem_RawFree(self.shards)
        for j in range(self.jcap):
            Py_XDECREF(self.jmap[j].key)
        PyMem_RawFree(self.jmap)

    cdef int _record(self, object key, uint64_t kid, int64_t k) except -1:
        cdef Py_ssize_t i, mask
        cdef fg_jslot *slot
        if (self.jlen + 1) * 4 > self.jcap * 3:
            self._grow_journal()
        mask = self.jcap - 1
        i = <Py_ssize_t>(fg_mix(kid) & <uint64_t>mask)
        while self.jmap[i].key != NULL and self.jmap[i].kid != kid:
            i = (i + 1) & mask
        slot = &self.jmap[i]
        if slot.key == NULL:
            if self.jlen >= self.max_keys:
                self.jdropped += 1
                return 0
            Py_INCREF(key)
            slot.key = <PyObject *>key
            slot.kid = kid
            slot.cost = 0
            self.jlen += 1
        slot.cost = slot.cost + k if slot.cost < FG_MAX_COST - k else FG_MAX_COST
        return 0

    cdef int _grow_journal(self) except -1:
        cdef Py_ssize_t cap = self.jcap * 2 if self.jcap else 1024, j, i
        cdef fg_jslot *old = self.jmap
        cdef fg_jslot *new = <fg_jslot *>PyMem_RawCalloc(cap, sizeof(fg_jslot))
        if new == NULL:
            raise MemoryError()
        for j in range(self.jcap):
            if old[j].key != NULL:
                i = <Py_ssize_t>(fg_mix(old[j].kid) & <uint64_t>(cap - 1))
                while new[i].key != NULL:
                    i = (i + 1) & (cap - 1)
                new[i] = old[j]
        PyMem_RawFree(old)
        self.jmap = new
        self.jcap = cap
        return 0

    def record_hits(self, bint on):
        """Start (True) or stop (False) keeping a journal of hits for drain_hits()."""
        self.recording = on

    def drain_hits(self):
        """The keys `hit()` saw since the last drain with their summed admitted cost (0 for a key only denied): a
        list of (key, cost) in no particular order (one entry per key id, at most max_keys; `jdropped` counts the
        hits of keys past that), and an empty journal. `hit_many` is not journaled: its callers see its decisions
        in its result arrays."""
        cdef Py_ssize_t j
        cdef list out = []
        cdef object key
        for j in range(self.jcap):
            if self.jmap[j].key != NULL:
                key = <object>self.jmap[j].key
                Py_DECREF(key)
                out.append((key, self.jmap[j].cost))
                self.jmap[j].key = NULL
        self.jlen = 0
        return out

    def charge(self, key, cost, now=None):
        """Count `cost` against every limit of `key` without deciding, each limit taking as much as it can admit
        (so none goes past exhausted): what other nodes admitted, in local-first cluster mode. Not journaled."""
        cdef uint64_t kid = _key_id(key)
        cdef uint64_t h = fg_table_hash(&self.p, kid)
        cdef int64_t k = _cost(cost)
        cdef int64_t t = _now_ns(now)
        cdef fg_shard *s = self._shard(h)
        cdef int rc
        fg_spin_lock(&s.lock)
        rc = _charge_locked(&self.p, s, kid, h, k, t)
        fg_spin_unlock(&s.lock)
        if rc < 0:
            raise MemoryError("rate-limit table: out of memory for a new key")

    cdef inline fg_shard *_shard(self, uint64_t h) noexcept nogil:
        return &self.shards[h & <uint64_t>(self.nshards - 1)]

    cdef Decision _decision(self, const fg_verdict *v):
        cdef Decision d = Decision.__new__(Decision)
        d.allowed = v.allowed
        d.banned = v.banned
        d.limit = self.p.lim[v.best].count
        d.remaining = v.remaining[v.best]
        d.reset_after = <double>v.reset_ns / 1e9
        d.retry_after = _seconds(v.retry_ns)
        d.period = <double>self.p.lim[v.best].period / 1e9
        d.limits = self.limits
        memcpy(d._remaining, v.remaining, self.p.nlimits * sizeof(int64_t))
        return d

    cdef Decision _one(self, uint64_t kid, uint64_t h, int64_t k, int64_t now, bint commit):
        cdef fg_verdict v
        cdef fg_shard *s = self._shard(h)
        cdef int rc
        fg_spin_lock(&s.lock)
        rc = _hit_locked(&self.p, s, kid, h, k, now, commit, &v)
        fg_spin_unlock(&s.lock)
        if rc < 0:
            raise MemoryError("rate-limit table: out of memory for a new key")
        return self._decision(&v)

    cdef inline uint64_t _locate(self, uint64_t kid) noexcept nogil:
        """The key's position hash; also starts loading its home slot, so the cache miss overlaps with the argument
        checks and the clock read that follow. (The shard's fields are read without its lock: a stale value only
        makes a useless prefetch, which cannot fault.)"""
        cdef uint64_t h = fg_table_hash(&self.p, kid)
        cdef fg_shard *s = self._shard(h)
        if s.cap > 0:
            fg_table_prefetch(&self.p, s, h)
        return h

    def hit(self, key, cost=1, now=None):
        """Count a hit of `cost` against `key` if every limit admits it -> Decision.

        key: str or bytes (TypeError otherwise); cost: int >= 0 (ValueError if negative);
        now: float epoch seconds, or None for the wall clock.
        """
        cdef uint64_t kid = _key_id(key)
        cdef uint64_t h = self._locate(kid)
        cdef int64_t k = _cost(cost)
        cdef Decision d = self._one(kid, h, k, _now_ns(now), True)
        if self.recording:
            self._record(key, kid, k if d.allowed else 0)
        return d

    def peek(self, key, now=None):
        """The decision a hit of cost 1 would get now, recording nothing."""
        cdef uint64_t kid = _key_id(key)
        cdef uint64_t h = self._locate(kid)
        return self._one(kid, h, 1, _now_ns(now), False)

    def reset(self, key):
        """Forget `key` (its next hit starts fresh)."""
        cdef uint64_t kid = _key_id(key)
        cdef uint64_t h = fg_table_hash(&self.p, kid)
        cdef fg_shard *s = self._shard(h)
        fg_spin_lock(&s.lock)
        _remove(&self.p, s, kid, h)
        fg_spin_unlock(&s.lock)

    cdef int64_t *_ban_words(self, fg_shard *s, uint64_t kid, uint64_t h, int64_t now, bint create) noexcept nogil:
        """The ban words of `kid` (its entry made, fresh, when `create`); NULL when absent or out of memory."""
        cdef int64_t fresh[FG_MAX_LIMITS * FG_MAX_WORDS]
        cdef int64_t pos
        if s.n > 0 and fg_table_find(&self.p, s, kid, h, &pos):
            return fg_table_slot(&self.p, s, pos) + self.p.stride - FG_BAN_WORDS
        if not create:
            return NULL
        _fresh_words(&self.p, fresh)
        if _insert(&self.p, s, kid, h, now, fresh) < 0:
            return NULL
        fg_table_find(&self.p, s, kid, h, &pos)
        return fg_table_slot(&self.p, s, pos) + self.p.stride - FG_BAN_WORDS

    cdef int _check_bans(self) except -1:
        if self.p.stride == FG_HEADER_WORDS + self.p.nlimits * self.p.words:
            raise ValueError("this table has no bans: make it with ban_after (and ban_for), or ban_for alone")
        return 0

    def ban(self, key, seconds, now=None):
        """Ban `key` for `seconds` from `now` (it is refused without looking at its limits until then)."""
        cdef uint64_t kid = _key_id(key)
        cdef uint64_t h = fg_table_hash(&self.p, kid)
        cdef int64_t t = _now_ns(now)
        cdef fg_shard *s = self._shard(h)
        cdef int64_t *ban
        self._check_bans()
        seconds = ban_seconds(seconds)
        cdef int64_t length = round(seconds * 1_000_000_000)
        fg_spin_lock(&s.lock)
        ban = self._ban_words(s, kid, h, t, True)
        if ban != NULL:
            ban[2] = t + length
            ban[0] = 0
            s.bans += 1
        fg_spin_unlock(&s.lock)
        if ban == NULL:
            raise MemoryError("rate-limit table: out of memory for a new key")

    def unban(self, key):
        """Lift `key`'s ban and forget the denials counting towards one."""
        cdef uint64_t kid = _key_id(key)
        cdef uint64_t h = fg_table_hash(&self.p, kid)
        cdef fg_shard *s = self._shard(h)
        cdef int64_t *ban
        self._check_bans()
        fg_spin_lock(&s.lock)
        ban = self._ban_words(s, kid, h, 0, False)
        if ban != NULL:
            ban[0] = 0
            ban[2] = 0
        fg_spin_unlock(&s.lock)

    def banned(self, key, now=None):
        """Seconds left of `key`'s ban at `now` (0.0 when not banned)."""
        cdef uint64_t kid = _key_id(key)
        cdef uint64_t h = fg_table_hash(&self.p, kid)
        cdef int64_t t = _now_ns(now)
        cdef fg_shard *s = self._shard(h)
        cdef int64_t *ban
        cdef int64_t left = 0
        self._check_bans()
        fg_spin_lock(&s.lock)
        ban = self._ban_words(s, kid, h, 0, False)
        if ban != NULL and ban[2] > t:
            left = ban[2] - t
        fg_spin_unlock(&s.lock)
        return <double>left / 1e9

    @cython.boundscheck(False)
    @cython.wraparound(False)
    def hit_many(self, keys, costs, now):
        """Decide keys in order: a numpy uint64 array of ids (used as they are) or a list of str/bytes (hashed).

        costs: contiguous int64 array of the same length (>= 0, checked by the caller) or None.
        Returns numpy arrays (allowed bool, remaining int64, retry_after float64 s, reset_after float64 s).
        The GIL is released for the whole decision loop; each shard is locked once per call.
        """
        cdef int64_t t = _now_ns(now)
        cdef Py_ssize_t n = len(keys), i
        cdef const uint64_t[::1] ids
        cdef uint64_t[::1] hashed
        cdef const int64_t[::1] cost_view
        cdef bint has_costs = costs is not None
        if isinstance(keys, np.ndarray):
            ids = keys
        else:
            hashed = np.empty(n, dtype=np.uint64)
            for i in range(n):
                hashed[i] = _key_id(keys[i])
            ids = hashed
        if has_costs:
            cost_view = costs
            if cost_view.shape[0] != n:
                raise ValueError(f"costs has {cost_view.shape[0]} entries for {n} keys")
        allowed = np.empty(n, dtype=np.bool_)
        remaining = np.empty(n, dtype=np.int64)
        retry = np.empty(n, dtype=np.float64)
        reset = np.empty(n, dtype=np.float64)
        cdef uint8_t[::1] out_allowed = allowed.view(np.uint8)
        cdef int64_t[::1] out_remaining = remaining
        cdef double[::1] out_retry = retry
        cdef double[::1] out_reset = reset
        cdef int rc = 0
        cdef uint64_t start = self.rotor
        self.rotor += 1
        if n == 0:
            return allowed, remaining, retry, reset
        with nogil:
            rc = self._batch(&ids[0], &cost_view[0] if has_costs else NULL, n, t, start,
                             &out_allowed[0], &out_remaining[0], &out_retry[0], &out_reset[0])
        if rc == -2:
            raise MemoryError("hit_many: out of memory for its work arrays")
        if rc < 0:
            raise MemoryError("rate-limit table: out of memory for a new key")
        return allowed, remaining, retry, reset

    cdef int _batch(self, const uint64_t *ids, const int64_t *costs, Py_ssize_t n, int64_t now, uint64_t start,
                    uint8_t *out_allowed, int64_t *out_remaining, double *out_retry,
                    double *out_reset) noexcept nogil:
        """Decide the batch in chunks of FG_BATCH_CHUNK keys. -2: no memory for the work array; -1: no memory for
        a new key."""
        cdef fg_job *jobs = <fg_job *>PyMem_RawMalloc(FG_BATCH_CHUNK * sizeof(fg_job))
        cdef Py_ssize_t at, size
        cdef int rc = 0
        if jobs == NULL:
            return -2
        at = 0
        while at < n and rc == 0:
            size = n - at if n - at < FG_BATCH_CHUNK else FG_BATCH_CHUNK
            rc = self._chunk(jobs, ids + at, NULL if costs == NULL else costs + at, size, now, start,
                             out_allowed + at, out_remaining + at, out_retry + at, out_reset + at)
            at += size
        PyMem_RawFree(jobs)
        return rc

    cdef int _chunk(self, fg_job *jobs, const uint64_t *ids, const int64_t *costs, Py_ssize_t n, int64_t now,
                    uint64_t start, uint8_t *out_allowed, int64_t *out_remaining, double *out_retry,
                    double *out_reset) noexcept nogil:
        """Group one chunk's keys by shard (a stable counting sort: each shard's keys keep their order, so the
        result equals deciding them one by one) and decide each group under one lock. Shards busy in another
        thread are skipped and done after the others. Within a group the index slot and the entry of keys a few
        places ahead are prefetched, so the cache misses of a large table overlap; the chunk keeps the work array
        and the outputs it scatters to in cache."""
        cdef int64_t first[65]
        cdef int64_t fill[64]
        cdef bint pending[64]
        cdef Py_ssize_t i, j, ix
        cdef int sh, step, left = 0, rc = 0
        cdef uint64_t h, shard_mask = <uint64_t>(self.nshards - 1)
        cdef fg_shard *s
        cdef fg_job *job
        cdef fg_verdict v
        for sh in range(65):
            first[sh] = 0
        # The outputs double as scratch: out_remaining holds each key's hash until the decisions overwrite it.
        for i in range(n):
            h = fg_table_hash(&self.p, ids[i])
            out_remaining[i] = <int64_t>h
            first[(h & shard_mask) + 1] += 1
        for sh in range(self.nshards):
            first[sh + 1] += first[sh]
            fill[sh] = first[sh]
            pending[sh] = first[sh + 1] > first[sh]
            left += pending[sh]
        for i in range(n):
            h = <uint64_t>out_remaining[i]
            job = &jobs[fill[h & shard_mask]]
            fill[h & shard_mask] += 1
            job.id = ids[i]
            job.h = h
            job.ix = i
            job.cost = 1 if costs == NULL else (costs[i] if costs[i] < FG_MAX_COST else FG_MAX_COST)
        step = 0
        while left > 0 and rc == 0:
            for j in range(self.nshards):
                sh = <int>((start + <uint64_t>j) % <uint64_t>self.nshards)
                if not pending[sh]:
                    continue
                s = &self.shards[sh]
                # First pass: only free shards; later passes wait for the busy ones.
                if step == 0:
                    if not fg_spin_trylock(&s.lock):
                        continue
                else:
                    fg_spin_lock(&s.lock)
                for i in range(first[sh], first[sh + 1]):
                    if i + FG_PREFETCH < first[sh + 1] and s.cap > 0:
                        fg_table_prefetch(&self.p, s, jobs[i + FG_PREFETCH].h)
                    job = &jobs[i]
                    if _hit_locked(&self.p, s, job.id, job.h, job.cost, now, True, &v) < 0:
                        rc = -1
                        break
                    ix = job.ix
                    out_allowed[ix] = v.allowed
                    out_remaining[ix] = v.remaining[v.best]
                    out_retry[ix] = _seconds(v.retry_ns)
                    out_reset[ix] = <double>v.reset_ns / 1e9
                fg_spin_unlock(&s.lock)
                pending[sh] = False
                left -= 1
                if rc != 0:
                    break
            step += 1
        return rc

    def stats(self):
        """Counters and sizes: keys, capacity, evictions, hits (decisions), denials, bans (started), shards, slots,
        bytes (the slot arrays plus shard headers), entry_bytes, algorithm, compiled."""
        cdef int64_t keys = 0, hits = 0, denials = 0, evictions = 0, slots = 0, bans = 0
        cdef int64_t nbytes = self.nshards * sizeof(fg_shard)
        cdef int i
        cdef fg_shard *s
        for i in range(self.nshards):
            s = &self.shards[i]
            fg_spin_lock(&s.lock)
            keys += s.n
            hits += s.hits
            denials += s.denials
            evictions += s.evictions
            bans += s.bans
            slots += s.cap
            nbytes += s.cap * self.p.stride * sizeof(int64_t)
            fg_spin_unlock(&s.lock)
        return {
            "keys": keys, "capacity": self.max_keys, "evictions": evictions, "hits": hits, "denials": denials,
            "bans": bans, "shards": self.nshards, "slots": slots, "bytes": nbytes, "entry_bytes": self.p.stride * 8,
            "algorithm": self.algorithm, "compiled": True,
        }


cdef class BanGate:
    """The hit() of a shared (cluster-mode) limiter whose bans a local table knows: a banned key is answered here,
    in C, with no round trip; any other key goes to `slow(key, cost, now)`. Twin of _pure.BanGate."""

    cdef Table table
    cdef object slow
    cdef readonly int64_t answered    # banned keys answered here (each one a decision: a denial)

    def __init__(self, Table table, slow):
        table._check_bans()
        self.table = table
        self.slow = slow

    def __call__(self, key, cost=1, now=None):
        cdef uint64_t kid = _key_id(key)
        cdef uint64_t h = fg_table_hash(&self.table.p, kid)
        cdef fg_shard *s = self.table._shard(h)
        cdef int64_t t = _now_ns(now)
        cdef int64_t left = 0
        cdef int64_t *ban
        cdef fg_verdict v
        _cost(cost)  # the same errors as an unbanned key's
        fg_spin_lock(&s.lock)
        ban = self.table._ban_words(s, kid, h, 0, False)
        if ban != NULL and ban[2] > t:
            left = ban[2] - t
        fg_spin_unlock(&s.lock)
        if left > 0:
            self.answered += 1
            _banned_verdict(&self.table.p, left, &v)
            return self.table._decision(&v)
        return self.slow(key, cost, now)


# ---------------------------------------------------------------------------------------------------------------
# JWS helpers and the verified-token cache. Twins: _pure.b64url_decode, _pure.split_token, _pure.TokenCache.
# ---------------------------------------------------------------------------------------------------------------
cdef signed char _B64URL[256]
for _i in range(256):
    _B64URL[_i] = -1
for _i, _c in enumerate(list(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")):
    _B64URL[_c] = _i


cdef inline const unsigned char *_buffer(object data, Py_ssize_t *n) except NULL:
    """Pointer and length of bytes or bytearray, without a buffer object (a memoryview costs more than a decode)."""
    if type(data) is bytes:
        n[0] = PyBytes_GET_SIZE(data)
        return <const unsigned char *>PyBytes_AS_STRING(data)
    if isinstance(data, bytearray):
        n[0] = PyByteArray_GET_SIZE(data)
        return <const unsigned char *>PyByteArray_AS_STRING(data)
    if isinstance(data, bytes):
        n[0] = PyBytes_GET_SIZE(data)
        return <const unsigned char *>PyBytes_AS_STRING(data)
    raise TypeError(f"expected bytes, not {type(data).__name__}")


cdef bytes _b64url_range(const unsigned char *src, Py_ssize_t start, Py_ssize_t end):
    """Strict base64url decoding of src[start:end] (see b64url_decode for the rules), in one pass."""
    cdef Py_ssize_t n = end - start, i, o = 0
    cdef uint32_t acc = 0
    cdef int bits = 0
    cdef signed char v, last = 0
    cdef unsigned char *dst
    if n % 4 == 1:
        for i in range(start, end):    # the alphabet error first, as _pure reports it
            if _B64URL[src[i]] < 0:
                raise ValueError("character outside the base64url alphabet")
        raise ValueError("impossible base64url length")
    out = PyBytes_FromStringAndSize(NULL, (n * 3) // 4)
    dst = <unsigned char *>PyBytes_AS_STRING(out)
    for i in range(start, end):
        v = _B64URL[src[i]]
        if v < 0:
            raise ValueError("character outside the base64url alphabet")
        acc = (acc << 6) | <uint32_t>v
        bits += 6
        if bits >= 8:
            bits -= 8
            dst[o] = <unsigned char>((acc >> bits) & 0xFF)
            o += 1
        last = v
    if (n % 4 == 2 and last & 0x0F) or (n % 4 == 3 and last & 0x03):
        raise ValueError("non-zero unused bits (non-canonical base64url)")
    return out


def b64url_decode(data):
    """Strict base64url (RFC 7515 §2): the alphabet only, no padding, no length of 4k+1, unused bits zero.
    Raises ValueError otherwise, so every byte string has exactly one accepted encoding."""
    cdef Py_ssize_t n
    cdef const unsigned char *src = _buffer(data, &n)
    return _b64url_range(src, 0, n)


cdef int _dots(const unsigned char *src, Py_ssize_t n, Py_ssize_t *first, Py_ssize_t *second) except -1:
    cdef const unsigned char *p = <const unsigned char *>memchr(src, 46, n)
    cdef const unsigned char *q
    if p == NULL:
        raise ValueError("a compact JWS has exactly two dots")
    q = <const unsigned char *>memchr(p + 1, 46, n - (p + 1 - src))
    if q == NULL or memchr(q + 1, 46, n - (q + 1 - src)) != NULL:
        raise ValueError("a compact JWS has exactly two dots")
    first[0] = p - src
    second[0] = q - src
    return 0


def parse_compact(token):
    """(header segment, signing input, payload bytes, signature bytes) of a compact JWS (bytes, or an ASCII str read
    in place), in one call; ValueError unless it has exactly two dots and canonical base64url payload and
    signature (the header is the caller's)."""
    cdef Py_ssize_t n, first, second
    cdef const unsigned char *src
    if type(token) is str:
        if not PyUnicode_IS_COMPACT_ASCII(token):
            raise ValueError("characters outside base64url")
        src = <const unsigned char *>PyUnicode_DATA(token)
        n = PyUnicode_GET_LENGTH(token)
    else:
        src = _buffer(token, &n)
    _dots(src, n, &first, &second)
    return (PyBytes_FromStringAndSize(<const char *>src, first), PyBytes_FromStringAndSize(<const char *>src, second),
            _b64url_range(src, first + 1, second), _b64url_range(src, second + 1, n))


def split_token(token):
    """Positions of the two dots of a compact JWS; ValueError unless there are exactly two."""
    cdef Py_ssize_t n, first, second
    cdef const unsigned char *src = _buffer(token, &n)
    _dots(src, n, &first, &second)
    return first, second


cdef inline bint _token_bytes(object token, const char **buf, Py_ssize_t *n):
    """The bytes of a token (an ASCII str's own buffer, no copy); False for anything else."""
    if type(token) is str:
        if not PyUnicode_IS_COMPACT_ASCII(token):
            return False
        buf[0] = <const char *>PyUnicode_DATA(token)
        n[0] = PyUnicode_GET_LENGTH(token)
        return True
    if type(token) is bytes:
        buf[0] = PyBytes_AS_STRING(token)
        n[0] = PyBytes_GET_SIZE(token)
        return True
    return False


ctypedef struct fg_tok:
    uint64_t h                  # SipHash-1-3 of the token bytes under the process secret
    PyObject *token             # the token, as bytes (owned); NULL: empty slot
    PyObject *value             # owned
    int64_t valid_from          # ns: the entry answers for now in [valid_from, valid_until)
    int64_t valid_until
    int referenced              # CLOCK's second-chance bit


cdef class TokenCache:
    """Verdicts by exact token, each usable for `now` in [valid_from, valid_until) (ns); at most `capacity`.

    get(token, now=None) -> the stored value, or None (a miss; an entry outside its time window is dropped).
    put(token, value, valid_from_ns, valid_until_ns). Keys are the exact token bytes, found through a keyed hash
    (so nobody can aim tokens at one slot) and compared in full. A full cache evicts with a CLOCK (second chance)
    hand, O(1) amortized. All work happens with the GIL held and no Python code runs in between, so it is
    thread-safe; references dropped by an operation are released only after the table is consistent again.
    """

    cdef fg_tok *slots
    cdef Py_ssize_t mask, n, hand
    cdef readonly Py_ssize_t capacity
    cdef readonly Py_ssize_t max_token_bytes
    cdef readonly int64_t hits, misses, evictions

    def __cinit__(self, capacity, max_token_bytes=4096):
        cdef Py_ssize_t size = 8
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 0:
            raise ValueError(f"cache capacity must be an int >= 0, got {capacity!r}")
        if capacity > 2**30:
            raise ValueError("cache capacity is above 2**30")
        if isinstance(max_token_bytes, bool) or not isinstance(max_token_bytes, int) or max_token_bytes < 0:
            raise ValueError(f"max_token_bytes must be an int >= 0, got {max_token_bytes!r}")
        self.capacity = capacity
        self.max_token_bytes = max_token_bytes
        while size * 3 < capacity * 4 + 4:
            size *= 2
        self.slots = <fg_tok *>PyMem_RawCalloc(size, sizeof(fg_tok))
        if self.slots == NULL:
            raise MemoryError()
        self.mask = size - 1

    def __dealloc__(self):
        cdef Py_ssize_t i
        if self.slots != NULL:
            for i in range(self.mask + 1):
                Py_XDECREF(self.slots[i].token)
                Py_XDECREF(self.slots[i].value)
            PyMem_RawFree(self.slots)

    cdef Py_ssize_t _find(self, uint64_t h, const char *buf, Py_ssize_t n) noexcept:
        """The slot holding these token bytes, or -(empty slot) - 1."""
        cdef Py_ssize_t pos = <Py_ssize_t>(h & <uint64_t>self.mask)
        cdef fg_tok *e
        while True:
            e = &self.slots[pos]
            if e.token == NULL:
                return -pos - 1
            if e.h == h and PyBytes_GET_SIZE(<object>e.token) == n and \
                    memcmp(PyBytes_AS_STRING(<object>e.token), buf, n) == 0:
                return pos
            pos = (pos + 1) & self.mask

    cdef void _unslot(self, Py_ssize_t hole) noexcept:
        """Empty `hole` (its references already taken by the caller) by backward-shift deletion."""
        cdef Py_ssize_t j = hole, home
        while True:
            j = (j + 1) & self.mask
            if self.slots[j].token == NULL:
                break
            home = <Py_ssize_t>(self.slots[j].h & <uint64_t>self.mask)
            if (hole <= j and hole < home <= j) or (hole > j and (home > hole or home <= j)):
                continue
            self.slots[hole] = self.slots[j]
            hole = j
        self.slots[hole].token = NULL
        self.slots[hole].value = NULL
        self.n -= 1

    def get(self, token, now=None):
        return self._get(token, now)

    cdef object _get(self, object token, object now):
        cdef const char *buf
        cdef Py_ssize_t n, pos
        cdef int64_t t
        cdef fg_tok *e
        cdef PyObject *old_token
        cdef PyObject *old_value
        if now is not None:
            t = _now_ns(now)    # checked on every path, hit or miss (TypeError / ValueError)
        if self.n == 0 or not _token_bytes(token, &buf, &n) or n > self.max_token_bytes:
            self.misses += 1    # a longer token is never hashed: it was never stored
            return None
        if now is None:
            t = _now_ns(now)
        pos = self._find(fg_siphash13(<const unsigned char *>buf, <size_t>n, _sip_k0, _sip_k1), buf, n)
        if pos < 0:
            self.misses += 1
            return None
        e = &self.slots[pos]
        if e.valid_from <= t < e.valid_until:
            e.referenced = 1
            self.hits += 1
            return <object>e.value
        old_token, old_value = e.token, e.value
        self._unslot(pos)
        self.misses += 1
        Py_DECREF(<object>old_token)
        Py_DECREF(<object>old_value)
        return None

    def put(self, token, value, int64_t valid_from_ns, int64_t valid_until_ns):
        cdef const char *buf
        cdef Py_ssize_t n, pos
        cdef uint64_t h
        cdef fg_tok *e
        cdef PyObject *old_token = NULL
        cdef PyObject *old_value = NULL
        if self.capacity == 0 or not _token_bytes(token, &buf, &n) or n > self.max_token_bytes:
            return
        h = fg_siphash13(<const unsigned char *>buf, <size_t>n, _sip_k0, _sip_k1)
        key = token if type(token) is bytes else PyBytes_FromStringAndSize(buf, n)
        pos = self._find(h, buf, n)
        if pos >= 0:
            e = &self.slots[pos]
            old_value = e.value
            Py_INCREF(value)
            e.value = <PyObject *>value
            e.valid_from, e.valid_until = valid_from_ns, valid_until_ns
            Py_DECREF(<object>old_value)
            return
        if self.n >= self.capacity:
            while True:     # CLOCK: a referenced entry gets a second chance, the first unreferenced one goes
                e = &self.slots[self.hand]
                if e.token != NULL:
                    if not e.referenced:
                        break
                    e.referenced = 0
                self.hand = (self.hand + 1) & self.mask
            old_token, old_value = e.token, e.value
            self._unslot(self.hand)
            self.evictions += 1
            pos = self._find(h, buf, n)
        e = &self.slots[-pos - 1]
        Py_INCREF(key)
        Py_INCREF(value)
        e.h = h
        e.token = <PyObject *>key
        e.value = <PyObject *>value
        e.valid_from, e.valid_until = valid_from_ns, valid_until_ns
        e.referenced = 0
        self.n += 1
        Py_XDECREF(old_token)
        Py_XDECREF(old_value)

    def clear(self):
        cdef Py_ssize_t i
        cdef list dropped = []
        for i in range(self.mask + 1):
            if self.slots[i].token != NULL:
                dropped.append(<object>self.slots[i].token)
                dropped.append(<object>self.slots[i].value)
                Py_DECREF(<object>self.slots[i].token)
                Py_DECREF(<object>self.slots[i].value)
                self.slots[i].token = NULL
                self.slots[i].value = NULL
        self.n = 0
        self.hand = 0
        del dropped     # the references go only now, with the table already empty

    def __len__(self):
        return self.n


cdef class CachedVerify:
    """JWTVerifier.verify's hot path as one C call: while the key set's version is the one the cache was filled
    under, a cached verdict is returned straight from `cache`; anything else goes to `slow(token, now)`.
    Twin of _pure.CachedVerify."""

    cdef TokenCache cache
    cdef object keys
    cdef object slow
    cdef public object version

    def __init__(self, TokenCache cache, keys, version, slow):
        self.cache = cache
        self.keys = keys
        self.version = version
        self.slow = slow

    def __call__(self, token, now=None):
        if self.keys.version == self.version:
            claims = self.cache._get(token, now)
            if claims is not None:
                return claims
        return self.slow(token, now)


def check_claims(dict claims, int64_t now_ns, int64_t leeway_ns, tuple required, issuers, audiences,
                 max_lifetime_ns):
    """The JWT claim rules; see fastguard._pure.check_claims, the definition this mirrors."""
    cdef int64_t exp_ns = 0, nbf_ns = 0, iat_ns = 0, valid_from = 0, valid_until = _MAX_NOW_NS
    cdef bint has_exp = False, has_nbf = False, has_iat = False
    cdef object value, aud
    value = claims.get("exp", _ABSENT)
    if value is not _ABSENT:
        exp_ns = _claim_ns(value, "exp")
        has_exp = True
    value = claims.get("nbf", _ABSENT)
    if value is not _ABSENT:
        nbf_ns = _claim_ns(value, "nbf")
        has_nbf = True
    value = claims.get("iat", _ABSENT)
    if value is not _ABSENT:
        iat_ns = _claim_ns(value, "iat")
        has_iat = True
    for name in ("iss", "sub", "jti"):
        value = claims.get(name, _ABSENT)
        if value is not _ABSENT and type(value) is not str:
            raise _errors.InvalidClaim(f"{name} must be a string")
    aud = claims.get("aud", _ABSENT)
    if aud is not _ABSENT and type(aud) is not str:
        if type(aud) is not list or not all(type(a) is str for a in <list>aud):
            raise _errors.InvalidClaim("aud must be a string or a list of strings")
    for name in required:
        if name not in claims:
            raise _errors.MissingClaim(claim=name)
    if has_exp:
        valid_until = _sat_add(exp_ns, leeway_ns)
        if now_ns >= valid_until:
            raise _errors.ExpiredToken("the token has expired")
    if has_nbf:
        valid_from = nbf_ns - leeway_ns if nbf_ns > leeway_ns else 0
        if now_ns < valid_from:
            raise _errors.NotYetValid("the token is not valid yet")
    if has_iat and iat_ns > _sat_add(now_ns, leeway_ns):
        raise _errors.InvalidClaim("iat is in the future")
    if max_lifetime_ns is not None:
        if not has_exp or not has_iat:
            raise _errors.MissingClaim("max_lifetime needs both iat and exp", claim="iat" if has_exp else "exp")
        if (<object>exp_ns) - iat_ns > max_lifetime_ns:     # Python ints: no overflow
            raise _errors.InvalidClaim("the token lives longer than max_lifetime (exp - iat)")
    if issuers is not None:
        value = claims.get("iss", _ABSENT)
        if value is _ABSENT:
            raise _errors.MissingClaim(claim="iss")
        if value not in issuers:
            raise _errors.InvalidIssuer(f"issuer {value!r} is not accepted")
    if aud is not _ABSENT or audiences is not None:
        if aud is _ABSENT:
            raise _errors.MissingClaim(claim="aud")
        if audiences is None or ((aud not in audiences) if type(aud) is str else audiences.isdisjoint(aud)):
            raise _errors.InvalidAudience(f"audience {aud!r} is not accepted")
    return valid_from, valid_until


cdef object _ABSENT = object()


cdef inline int64_t _sat_add(int64_t a, int64_t b) noexcept:
    return _MAX_NOW_NS if a > _MAX_NOW_NS - b else a + b


cdef int64_t _claim_ns(object value, str name) except? -1:
    """A time claim in ns (ceil), clamped to [-2**62, 2**62]; InvalidClaim unless a finite int or float."""
    cdef double d
    if type(value) is int:
        if value > 4611686018:      # 2**62 ns is 4611686018.43 s
            return _MAX_NOW_NS
        if value < -4611686018:
            return -_MAX_NOW_NS
        return <int64_t>value * 1000000000
    if type(value) is float:
        d = PyFloat_AS_DOUBLE(value)
        if isfinite(d):
            d = ceil(d * 1e9)
            if d >= <double>_MAX_NOW_NS:
                return _MAX_NOW_NS
            if d <= -<double>_MAX_NOW_NS:
                return -_MAX_NOW_NS
            return <int64_t>d
    raise _errors.InvalidClaim(f"{name} must be a number of seconds")


# ---------------------------------------------------------------------------------------------------------------
# Strict JSON (RFC 8259) for JOSE headers and JWT payloads: twin of _pure.parse_json_object, which defines it.
# Same values as json.loads, but duplicate member names, NaN/Infinity, invalid UTF-8 and nesting deeper than
# JSON_MAX_DEPTH are ValueErrors. About 4x faster than the json module with a duplicate check.
# ---------------------------------------------------------------------------------------------------------------
cdef extern from "Python.h":
    object PyUnicode_DecodeUTF8(const char *s, Py_ssize_t size, const char *errors)
    double PyOS_string_to_double(const char *s, char **endptr, PyObject *overflow_exception) except? -1.0
    object PyLong_FromString(const char *s, char **pend, int base)

JSON_MAX_DEPTH = 256
cdef dict _JSON_ESCAPES = {34: '"', 92: "\\", 47: "/", 98: "\b", 102: "\f", 110: "\n", 114: "\r", 116: "\t"}

ctypedef struct fg_json:
    const unsigned char *s
    Py_ssize_t n
    Py_ssize_t i
    int depth


cdef inline void _json_ws(fg_json *j) noexcept:
    while j.i < j.n and (j.s[j.i] == 32 or j.s[j.i] == 9 or j.s[j.i] == 10 or j.s[j.i] == 13):
        j.i += 1


cdef object _json_fail(fg_json *j, str what):
    raise ValueError(f"invalid JSON at byte {j.i}: {what}")


cdef object _json_value(fg_json *j):
    cdef unsigned char c
    _json_ws(j)
    if j.i >= j.n:
        return _json_fail(j, "unexpected end")
    c = j.s[j.i]
    if c == 123:        # {
        return _json_object(j)
    if c == 91:         # [
        return _json_array(j)
    if c == 34:         # "
        return _json_string(j)
    if c == 45 or 48 <= c <= 57:
        return _json_number(j)
    if j.n - j.i >= 4 and memcmp(j.s + j.i, b"true", 4) == 0:
        j.i += 4
        return True
    if j.n - j.i >= 5 and memcmp(j.s + j.i, b"false", 5) == 0:
        j.i += 5
        return False
    if j.n - j.i >= 4 and memcmp(j.s + j.i, b"null", 4) == 0:
        j.i += 4
        return None
    return _json_fail(j, "unexpected character")


cdef int _json_open(fg_json *j) except -1:
    """Enter an object or array: one level deeper (bounded), past the bracket and the blanks after it."""
    j.depth += 1
    if j.depth > JSON_MAX_DEPTH:
        _json_fail(j, "nested too deeply")
    j.i += 1
    _json_ws(j)
    return 0


cdef bint _json_close(fg_json *j, unsigned char closer) noexcept:
    """Consume `closer` (leaving the level) if it is next."""
    if j.i < j.n and j.s[j.i] == closer:
        j.i += 1
        j.depth -= 1
        return True
    return False


cdef int _json_more(fg_json *j, unsigned char closer) except -1:
    """After a member or element: 1 if a comma announces another, 0 at the closer; anything else is an error."""
    _json_ws(j)
    if j.i < j.n and j.s[j.i] == 44:    # ,
        j.i += 1
        return 1
    if _json_close(j, closer):
        return 0
    _json_fail(j, f"expected ',' or '{chr(closer)}'")
    return -1


cdef object _json_object(fg_json *j):
    cdef dict d = {}
    _json_open(j)
    if _json_close(j, 125):             # }
        return d
    while True:
        _json_ws(j)
        if j.i >= j.n or j.s[j.i] != 34:
            return _json_fail(j, "expected a member name")
        key = _json_string(j)
        _json_ws(j)
        if j.i >= j.n or j.s[j.i] != 58:    # :
            return _json_fail(j, "expected ':'")
        j.i += 1
        value = _json_value(j)
        if key in d:
            return _json_fail(j, f"duplicate member name {key!r}")
        d[key] = value
        if not _json_more(j, 125):
            return d


cdef object _json_array(fg_json *j):
    cdef list items = []
    _json_open(j)
    if _json_close(j, 93):              # ]
        return items
    while True:
        items.append(_json_value(j))
        if not _json_more(j, 93):
            return items


cdef inline int _hex4(fg_json *j, Py_ssize_t at) noexcept:
    """The value of 4 hex digits at `at`, or -1."""
    cdef int v = 0, k
    cdef unsigned char c
    if at + 4 > j.n:
        return -1
    for k in range(4):
        c = j.s[at + k]
        if 48 <= c <= 57:
            v = v * 16 + (c - 48)
        elif 97 <= c <= 102:
            v = v * 16 + (c - 87)
        elif 65 <= c <= 70:
            v = v * 16 + (c - 55)
        else:
            return -1
    return v


cdef object _json_string(fg_json *j):
    cdef Py_ssize_t start = j.i + 1, k = start
    cdef unsigned char c
    cdef int u, low
    cdef list parts
    while k < j.n:                    # the common case: no escape, one UTF-8 decode of the whole span
        c = j.s[k]
        if c == 34:
            j.i = k + 1
            return PyUnicode_DecodeUTF8(<const char *>(j.s + start), k - start, "strict")
        if c == 92 or c < 32:
            break
        k += 1
    parts = []
    k = start
    while True:
        if k >= j.n:
            j.i = k
            return _json_fail(j, "unterminated string")
        c = j.s[k]
        if c == 34:
            parts.append(PyUnicode_DecodeUTF8(<const char *>(j.s + start), k - start, "strict"))
            j.i = k + 1
            return "".join(parts)
        if c < 32:
            j.i = k
            return _json_fail(j, "control character in string")
        if c != 92:
            k += 1
            continue
        parts.append(PyUnicode_DecodeUTF8(<const char *>(j.s + start), k - start, "strict"))
        if k + 1 >= j.n:
            j.i = k
            return _json_fail(j, "unterminated escape")
        c = j.s[k + 1]
        if c == 117:                    # \uXXXX, a surrogate pair combined as json.loads does
            u = _hex4(j, k + 2)
            if u < 0:
                j.i = k
                return _json_fail(j, "bad \\u escape")
            k += 6
            if 0xD800 <= u <= 0xDBFF and k + 1 < j.n and j.s[k] == 92 and j.s[k + 1] == 117:
                low = _hex4(j, k + 2)
                if 0xDC00 <= low <= 0xDFFF:
                    u = 0x10000 + ((u - 0xD800) << 10) + (low - 0xDC00)
                    k += 6
            if 0xD800 <= u <= 0xDFFF:   # a lone surrogate is no character: no UTF-8 (or msgpack) can carry it
                j.i = k - 6
                return _json_fail(j, "lone surrogate in \\u escape")
            parts.append(chr(u))
        else:
            escaped = _JSON_ESCAPES.get(c)
            if escaped is None:
                j.i = k
                return _json_fail(j, "bad escape")
            parts.append(escaped)
            k += 2
        start = k


cdef Py_ssize_t _json_digits(fg_json *j, Py_ssize_t k, str what) except -1:
    """Past one or more digits from k (a fraction's or an exponent's); ValueError `what` when there is none."""
    if k >= j.n or not (48 <= j.s[k] <= 57):
        j.i = k
        _json_fail(j, what)
    while k < j.n and 48 <= j.s[k] <= 57:
        k += 1
    return k


cdef object _json_number(fg_json *j):
    cdef Py_ssize_t start = j.i, k = j.i
    cdef bint is_float = False
    cdef long long v = 0
    cdef int digits = 0
    cdef char *end
    if j.s[k] == 45:
        k += 1
    if k < j.n and j.s[k] == 48:
        k += 1
        digits = 1
    elif k < j.n and 49 <= j.s[k] <= 57:
        while k < j.n and 48 <= j.s[k] <= 57:
            if digits < 18:
                v = v * 10 + (j.s[k] - 48)
            k += 1
            digits += 1
    else:
        j.i = k
        return _json_fail(j, "bad number")
    if k < j.n and j.s[k] == 46:        # .
        is_float = True
        k = _json_digits(j, k + 1, "bad fraction")
    if k < j.n and (j.s[k] == 101 or j.s[k] == 69):     # e E
        is_float = True
        k += 1
        if k < j.n and (j.s[k] == 43 or j.s[k] == 45):
            k += 1
        k = _json_digits(j, k, "bad exponent")
    span = PyBytes_FromStringAndSize(<const char *>(j.s + start), k - start)   # NUL-terminated copy
    j.i = k
    if is_float:
        return PyOS_string_to_double(PyBytes_AS_STRING(span), &end, NULL)
    if digits < 18:
        return -v if j.s[start] == 45 else v
    return PyLong_FromString(PyBytes_AS_STRING(span), &end, 10)


def parse_json_object(data):
    """A JSON object from UTF-8 bytes, strictly: ValueError for anything else (see the section comment)."""
    cdef fg_json j
    j.s = _buffer(data, &j.n)
    j.i = 0
    j.depth = 0
    _json_ws(&j)
    if j.i >= j.n or j.s[j.i] != 123:
        raise ValueError("not a JSON object")
    value = _json_object(&j)
    _json_ws(&j)
    if j.i != j.n:
        raise ValueError(f"invalid JSON at byte {j.i}: data after the object")
    return value
