"""The sharded key table: slots, probing, growth (twin of fastguard/core/keytable.pxi; eviction and insertion
are Table methods in table.py)."""

from __future__ import annotations

from typing import Any

from fastguard._pure.arguments import MIN_SLOTS, mix64
from fastguard._secret import MIX_SEED


class Shard:
    """One shard of the table: `cap` slots of entries stored in place, linear probing, at most 3/4 occupied.

    An entry is [key id, touched, words of limit 0, words of limit 1, ...]; an empty slot is None.
    """

    __slots__ = ("slots", "cap", "n", "hand", "hits", "denials", "evictions", "bans")

    def __init__(self) -> None:
        self.slots: list[list[Any] | None] = []
        self.cap = self.n = self.hand = 0
        self.hits = self.denials = self.evictions = self.bans = 0

    def home(self, h: int) -> int:
        return (h * self.cap) >> 64   # multiply-shift: h is uniform in [0, 2**64)

    def find(self, kid: int, h: int) -> tuple[bool, int]:
        """(found, slot): the key's slot, or the empty slot where it would go."""
        pos = self.home(h)
        while True:
            e = self.slots[pos]
            if e is None:
                return False, pos
            if e[0] == kid:
                return True, pos
            pos = pos + 1 if pos + 1 < self.cap else 0

    def unslot(self, hole: int) -> None:
        """Backward-shift deletion: entries later in the probe run move back into the hole."""
        j = hole
        while True:
            j = j + 1 if j + 1 < self.cap else 0
            e = self.slots[j]
            if e is None:
                break
            home = self.home(table_hash(e[0]))
            stays = (hole < home <= j) if hole <= j else (home > hole or home <= j)
            if stays:
                continue
            self.slots[hole] = e
            hole = j
        self.slots[hole] = None

    def grow(self) -> None:
        """Before adding an entry that would leave the shard over 3/4 full: rehash into 1.1875x the slots."""
        if (self.n + 1) * 4 <= self.cap * 3:
            return
        cap = max(self.cap + self.cap * 3 // 16, MIN_SLOTS)
        while (self.n + 1) * 4 > cap * 3:
            cap += 1
        old = self.slots
        self.slots = [None] * cap
        self.cap = cap
        self.hand = 0
        for e in old:
            if e is not None:
                _, pos = self.find(e[0], table_hash(e[0]))
                self.slots[pos] = e


def table_hash(kid: int) -> int:
    """The position hash of a key id (keyed, so ids chosen by outsiders cannot crowd one place)."""
    return mix64(kid ^ MIX_SEED)
