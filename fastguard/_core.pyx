# cython: language_level=3
"""Compiled core of fastguard: the sharded key table and the four rate-limit algorithms.

The rules are those of fastguard/_pure/ (its docstrings are the definition); this module implements them in
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

from fastguard import errors as _errors
from fastguard._secret import MIX_SEED, SIP_K0, SIP_K1

from fastguard.arguments import ALGORITHMS as _ALGORITHMS
from fastguard.arguments import NO_BANS, as_integer, ban_seconds, ban_settings, check_algorithm, check_max_keys
from fastguard.decision import decision_headers
from fastguard.decision import numpy as _numpy

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


# The core by concern (each file names its pure-Python twin, the oracle of its rules):
include "core/arguments.pxi"
include "core/algorithms.pxi"
include "core/keytable.pxi"
include "core/bans.pxi"
include "core/table.pxi"
include "core/bangate.pxi"
include "core/jws.pxi"
include "core/caches.pxi"
include "core/claims.pxi"
include "core/json.pxi"
