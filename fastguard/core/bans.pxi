# fastguard/core/bans.pxi: included by fastguard/_core.pyx (one extension; names are shared across includes).
# Bans: the verdict of a banned key and the count of denials towards a ban
# (twin: fastguard/_pure/table.py, whose Table decides bans).

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
