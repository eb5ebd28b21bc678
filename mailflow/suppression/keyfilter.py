"""A Bloom filter over suppression lookup keys: "certainly not listed" without asking the store.

Lookup keys are already HMAC-SHA256 output (hex), so they are uniformly random: the bit
positions come straight from the key's 128 bits (double hashing), no further hashing needed.
A filter never answers "not listed" for a key that was added; it may answer "maybe" for one
that was not (about 1 % at its planned size), which costs only the store lookup it saves.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

BITS_PER_KEY = 10  # with 7 probes: about 0.8 % false positives at the planned size
PROBES = 7
MIN_CAPACITY = 100_000


class KeyFilter:
    def __init__(self, capacity: int) -> None:
        self.capacity = max(MIN_CAPACITY, capacity)
        self.size = self.capacity * BITS_PER_KEY
        self.count = 0
        self._bits = bytearray((self.size + 7) // 8)

    def _positions(self, key: str) -> Iterable[int]:
        try:
            value = int(key, 16)
        except ValueError:  # not one of ours (written by hand?): hash it, the filter still holds
            value = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=16).digest(), "big")
        first, step = value & 0xFFFF_FFFF_FFFF_FFFF, (value >> 64) | 1
        size = self.size
        return ((first + i * step) % size for i in range(PROBES))

    def add(self, key: str) -> None:
        bits = self._bits
        for position in self._positions(key):
            bits[position >> 3] |= 1 << (position & 7)
        self.count += 1

    def might_contain(self, key: str) -> bool:
        bits = self._bits
        return all(bits[position >> 3] & (1 << (position & 7)) for position in self._positions(key))

    @property
    def overfull(self) -> bool:
        """Past twice its planned size the false-positive rate climbs: time to rebuild it bigger."""
        return self.count > 2 * self.capacity
