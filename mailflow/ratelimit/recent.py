"""Bucket levels this process saw lately, drained forward locally.

At RCPT the milter only needs a good estimate of the levels, to defer recipients that will not
fit; the end-of-message debit in the store is atomic and authoritative. A level this process
read or wrote moments ago, drained since at the limit's rate, is that estimate without a store
round trip. Other MTAs of a fleet may have spent tokens meanwhile: then the estimate is low, a
recipient is accepted at RCPT, and the debit refuses the message at end of message (451).
MAX_AGE bounds how long that can go on. An account this process has not seen within MAX_AGE is
estimated to have room: a quiet account is rarely at its limit, and one that is gets its 451 at
end of message, whose debit reply then tells this process its levels for the next messages.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from mailflow.ratelimit.bucket import BucketState, current_level
from mailflow.ratelimit.limits import Limit
from mailflow.ratelimit.window import Window

MAX_AGE = 10.0  # seconds a remembered level stands in for the store's
MAX_ACCOUNTS = 50_000  # past this, forget what is too old to use


class RecentLevels:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        # account -> (when, the limits the levels are for, the levels). Keyed by the account
        # alone: hashing the limits on every RCPT costs more than comparing them.
        self._seen: dict[str, tuple[float, tuple[Limit, ...], tuple[float, ...]]] = {}

    def remember(self, account: str, limits: Sequence[Limit], levels: Sequence[float]) -> None:
        now = self._clock()
        if len(self._seen) >= MAX_ACCOUNTS:
            self._seen = {k: v for k, v in self._seen.items() if now - v[0] <= MAX_AGE}
        self._seen[account] = (now, tuple(limits), tuple(levels))

    def recall(self, account: str, limits: Sequence[Limit]) -> tuple[float, ...] | None:
        """The levels now, or None when this process has not seen them within MAX_AGE."""
        seen = self._seen.get(account)
        now = self._clock()
        if seen is None or now - seen[0] > MAX_AGE:
            return None
        at, seen_limits, levels = seen
        if seen_limits is not limits and seen_limits != tuple(limits):
            return None
        return tuple(level.aged(now - at) if isinstance(level, Window) else
                     current_level(BucketState(level, at), limit.rate, now) for level, limit in zip(levels, limits))

    def estimate(self, account: str, limits: Sequence[Limit]) -> tuple[float, ...]:
        """The recalled levels, or room in every bucket when there are none."""
        recalled = self.recall(account, limits)
        return recalled if recalled is not None else tuple(0.0 for _ in limits)
