"""Per-process secrets of the key table, shared by the compiled core and its pure twin.

SipHash-1-3 turns a key's bytes into a 64-bit id under (SIP_K0, SIP_K1); MIX_SEED is xor-ed into an id before it
is mixed into a table position. Fresh random values at every start, so nobody outside can choose keys that collide
or crowd one part of the table. Both cores read them from here, so they place every key identically.
"""

import os

SIP_K0, SIP_K1, MIX_SEED = (int.from_bytes(os.urandom(8), "little") for _ in range(3))
