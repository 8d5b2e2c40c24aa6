# fastguard/core/arguments.pxi: included by fastguard/_core.pyx (one extension; names are shared across includes).
# Argument conversion (GIL held): keys, costs and times, with the rules and messages of
# fastguard/arguments.py (the pure twin: fastguard/_pure/arguments.py is that module itself).

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
