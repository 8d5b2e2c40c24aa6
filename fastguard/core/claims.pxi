# fastguard/core/claims.pxi: included by fastguard/_core.pyx (one extension; names are shared across includes).
# The JWT claim rules (twin and definition: fastguard/_pure/claims.py).

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
