# fastguard/core/table.pxi: included by fastguard/_core.pyx (one extension; names are shared across includes).
# Decision and Table: one decision under a shard lock, the Python-facing table, hit_many and the journal
# (twin: fastguard/_pure/table.py).

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
    _new_state(p, fresh)
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
        _new_state(p, fresh)
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
    """One rate-limit decision. Times in float seconds; `retry_after` is 0.0 when allowed, inf when never.
    `fallback`: made by on_error because the shared store could not decide (never set by the in-process table)."""

    cdef readonly bint allowed
    cdef readonly bint banned
    cdef readonly bint fallback
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
    def of(*, bint allowed, int64_t limit, int64_t remaining, double reset_after, double retry_after,
           double period, tuple limits, remainings, bint banned=False, bint fallback=False):
        """A Decision made elsewhere (a cluster store, a fallback): limits is the tuple of Limits, remainings one
        int per limit. Raises ValueError when they differ in length or exceed the core's limit count."""
        cdef Py_ssize_t i, n = len(limits)
        if n > FG_MAX_LIMITS or len(remainings) != n:
            raise ValueError(f"a Decision holds 1 to {FG_MAX_LIMITS} limits with one remaining each")
        cdef Decision d = Decision.__new__(Decision)
        d.allowed = allowed
        d.banned = banned
        d.fallback = fallback
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
                f"{', banned=True' if self.banned else ''}{', fallback=True' if self.fallback else ''})")


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
    cdef fg_jslot *journal
    cdef Py_ssize_t journal_len, journal_cap
    cdef readonly int64_t journal_dropped

    def __cinit__(self, str algorithm, limits, max_keys, ban_after=0, ban_for=0.0):
        cdef int i
        self.shards = NULL
        self.journal = NULL
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
        for j in range(self.journal_cap):
            Py_XDECREF(self.journal[j].key)
        PyMem_RawFree(self.journal)

    cdef int _record(self, object key, uint64_t kid, int64_t k) except -1:
        cdef Py_ssize_t i, mask
        cdef fg_jslot *slot
        if (self.journal_len + 1) * 4 > self.journal_cap * 3:
            self._grow_journal()
        mask = self.journal_cap - 1
        i = <Py_ssize_t>(fg_mix(kid) & <uint64_t>mask)
        while self.journal[i].key != NULL and self.journal[i].kid != kid:
            i = (i + 1) & mask
        slot = &self.journal[i]
        if slot.key == NULL:
            if self.journal_len >= self.max_keys:
                self.journal_dropped += 1
                return 0
            Py_INCREF(key)
            slot.key = <PyObject *>key
            slot.kid = kid
            slot.cost = 0
            self.journal_len += 1
        slot.cost = slot.cost + k if slot.cost < FG_MAX_COST - k else FG_MAX_COST
        return 0

    cdef int _grow_journal(self) except -1:
        cdef Py_ssize_t cap = self.journal_cap * 2 if self.journal_cap else 1024, j, i
        cdef fg_jslot *old = self.journal
        cdef fg_jslot *new = <fg_jslot *>PyMem_RawCalloc(cap, sizeof(fg_jslot))
        if new == NULL:
            raise MemoryError()
        for j in range(self.journal_cap):
            if old[j].key != NULL:
                i = <Py_ssize_t>(fg_mix(old[j].kid) & <uint64_t>(cap - 1))
                while new[i].key != NULL:
                    i = (i + 1) & (cap - 1)
                new[i] = old[j]
        PyMem_RawFree(old)
        self.journal = new
        self.journal_cap = cap
        return 0

    def record_hits(self, bint on):
        """Start (True) or stop (False) keeping a journal of hits for drain_hits()."""
        self.recording = on

    def drain_hits(self):
        """The keys `hit()` saw since the last drain with their summed admitted cost (0 for a key only denied): a
        list of (key, cost) in no particular order (one entry per key id, at most max_keys; `journal_dropped` counts the
        hits of keys past that), and an empty journal. `hit_many` is not journaled: its callers see its decisions
        in its result arrays."""
        cdef Py_ssize_t j
        cdef list out = []
        cdef object key
        for j in range(self.journal_cap):
            if self.journal[j].key != NULL:
                key = <object>self.journal[j].key
                Py_DECREF(key)
                out.append((key, self.journal[j].cost))
                self.journal[j].key = NULL
        self.journal_len = 0
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
        d.fallback = False
        d.limit = self.p.lim[v.best].count
        d.remaining = v.remaining[v.best]
        d.reset_after = <double>v.reset_ns / 1e9
        d.retry_after = _seconds(v.retry_ns)
        d.period = <double>self.p.lim[v.best].period / 1e9
        d.limits = self.limits
        memcpy(d._remaining, v.remaining, self.p.nlimits * sizeof(int64_t))
        return d

    cdef Decision _decide_key(self, uint64_t kid, uint64_t h, int64_t k, int64_t now, bint commit):
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
        cdef Decision d = self._decide_key(kid, h, k, _now_ns(now), True)
        if self.recording:
            self._record(key, kid, k if d.allowed else 0)
        return d

    def peek(self, key, now=None):
        """The decision a hit of cost 1 would get now, recording nothing."""
        cdef uint64_t kid = _key_id(key)
        cdef uint64_t h = self._locate(kid)
        return self._decide_key(kid, h, 1, _now_ns(now), False)

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
        _new_state(&self.p, fresh)
        if _insert(&self.p, s, kid, h, now, fresh) < 0:
            return NULL
        fg_table_find(&self.p, s, kid, h, &pos)
        return fg_table_slot(&self.p, s, pos) + self.p.stride - FG_BAN_WORDS

    cdef int _check_bans(self) except -1:
        if self.p.stride == FG_HEADER_WORDS + self.p.nlimits * self.p.words:
            raise ValueError(NO_BANS)
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

    def unban_all(self):
        """Lift every ban (and forget the denials counting towards one): what a table that caches bans does when
        an operator lifted or shortened one elsewhere. Twin of _pure.Table.unban_all."""
        cdef int i
        cdef int64_t j
        cdef int64_t *e
        cdef fg_shard *s
        self._check_bans()
        for i in range(self.nshards):
            s = &self.shards[i]
            fg_spin_lock(&s.lock)
            for j in range(s.cap):
                e = fg_table_slot(&self.p, s, j)
                if e[1] != FG_EMPTY:
                    e[self.p.stride - FG_BAN_WORDS] = 0
                    e[self.p.stride - 1] = 0
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
        np = _numpy()
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
