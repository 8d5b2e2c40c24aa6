# fastguard/core/algorithms.pxi: included by fastguard/_core.pyx (one extension; names are shared across includes).
# The decision rules of the four algorithms over one key's state (twin: fastguard/_pure/algorithms.py).

# ---------------------------------------------------------------------------------------------------------------
# The decision (no GIL; caller holds the shard lock). Mirrors _pure.Table._decide.
# ---------------------------------------------------------------------------------------------------------------
cdef inline void _new_state(const fg_params *p, int64_t *w) noexcept nogil:
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
