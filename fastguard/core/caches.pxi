# fastguard/core/caches.pxi: included by fastguard/_core.pyx (one extension; names are shared across includes).
# The verified-token cache and the verify hot path (twin: fastguard/_pure/caches.py).

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
    contains(token, now=None) -> whether get would hit (counts and changes nothing).
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

    def contains(self, token, now=None):
        """Whether get(token, now) would hit, without counting, touching or dropping anything."""
        cdef const char *buf
        cdef Py_ssize_t n, pos
        cdef int64_t t = _now_ns(now)
        cdef fg_tok *e
        if self.n == 0 or not _token_bytes(token, &buf, &n) or n > self.max_token_bytes:
            return False
        pos = self._find(fg_siphash13(<const unsigned char *>buf, <size_t>n, _sip_k0, _sip_k1), buf, n)
        if pos < 0:
            return False
        e = &self.slots[pos]
        return e.valid_from <= t < e.valid_until

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
