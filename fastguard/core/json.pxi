# fastguard/core/json.pxi: included by fastguard/_core.pyx (one extension; names are shared across includes).
# Strict JSON (twin and definition: fastguard/_pure/json.py).

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
