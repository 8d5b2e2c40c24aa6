# fastguard/core/bangate.pxi: included by fastguard/_core.pyx after table.pxi (it reads a Table's fields).
# The BanGate of cluster mode: banned keys answered in C without a round trip (twin: fastguard/_pure/bans.py).

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
