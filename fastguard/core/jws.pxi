# fastguard/core/jws.pxi: included by fastguard/_core.pyx (one extension; names are shared across includes).
# Compact JWS parsing: base64url and the two dots (twin: fastguard/_pure/jws.py).

# ---------------------------------------------------------------------------------------------------------------
# JWS helpers. Twins: _pure.jws.b64url_decode, _pure.jws.parse_compact.
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


cdef int _find_dots(const unsigned char *src, Py_ssize_t n, Py_ssize_t *first, Py_ssize_t *second) except -1:
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
    _find_dots(src, n, &first, &second)
    return (PyBytes_FromStringAndSize(<const char *>src, first), PyBytes_FromStringAndSize(<const char *>src, second),
            _b64url_range(src, first + 1, second), _b64url_range(src, second + 1, n))


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
