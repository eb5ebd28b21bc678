"""A Bloom filter over suppression lookup keys: "certainly not listed" without asking the store.

Lookup keys are already HMAC-SHA256 output (hex), so they are uniformly random: the bit
positions come straight from the key's 128 bits (double hashing), no further hashing needed.
A filter never answers "not listed" for a key that was added; it may answer "maybe" for one
that was not (about 1 % at its planned size), which costs only the store lookup it saves.
"""

from __future__ import annotations

import hashlib

BITS_PER_KEY = 10  # with 7 probes: about 0.8 % false positives at the planned size
PROBES = 7
MIN_CAPACITY = 100_000


class KeyFilter:
    def __init__(self, capacity: int) -> None:
        self.capacity = max(MIN_CAPACITY, capacity)
        self.size = self.capacity * BITS_PER_KEY
        self.count = 0
        self._bits = bytearray((self.size + 7) // 8)

    @staticmethod
    def _probe_start(key: str) -> tuple[int, int]:
        """(first position, step) before the modulo: double hashing over the key's own bits."""
        try:
            value = int(key, 16)
        except ValueError:  # not one of ours (written by hand?): hash it, the filter still holds
            value = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=16).digest(), "big")
        return value & 0xFFFF_FFFF_FFFF_FFFF, (value >> 64) | 1

    def add(self, key: str) -> None:
        first, step = self._probe_start(key)
        bits, size = self._bits, self.size
        for i in range(PROBES):
            position = (first + i * step) % size
            bits[position >> 3] |= 1 << (position & 7)
        self.count += 1

    def might_contain(self, key: str) -> bool:
        # A plain loop, not a generator: nearly every lookup (an unlisted key) ends at its
        # first clear bit, on every RCPT.
        first, step = self._probe_start(key)
        bits, size = self._bits, self.size
        for i in range(PROBES):
            position = (first + i * step) % size
            if not bits[position >> 3] & (1 << (position & 7)):
                return False
        return True

    @property
    def overfull(self) -> bool:
        """Past twice its planned size the false-positive rate climbs: time to rebuild it bigger."""
        return self.count > 2 * self.capacity
