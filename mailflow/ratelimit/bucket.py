"""Pure token-bucket arithmetic, shared by every store and by the policy.

A bucket is stored as the *level* already spent (0 = full bucket) and the time it was last
written. The level drains at the limit's rate. Storing what was spent, rather than what is
left, means raising a limit keeps the count already spent in that period. Lowering one clips the
level to the new capacity, as written, before it drains at the new rate: an account never waits
longer than the new limit takes to refill a whole bucket (1000/hour spent, lowered to 100/hour:
the next message fits within 36 s, not 9 h).
The Redis Lua script (store/lua/debit.lua) mirrors `current_level` and `try_debit`.
A sliding-window limit's level is a Window (ratelimit/window.py); `fits` and
`seconds_until_fits` take either kind.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from mailflow.ratelimit.limits import Limit
from mailflow.ratelimit.window import SLOTS, Window


@dataclass(frozen=True)
class BucketState:
    level: float
    updated: float


def current_level(state: BucketState | None, rate: float, now: float, capacity: float = math.inf) -> float:
    """The spent level at `now`: as last written but at most `capacity` (a lowered limit), then
    drained since. Clipped before draining, so the wait is one new token's, whenever it is read."""
    if state is None:
        return 0.0
    elapsed = max(0.0, now - state.updated)
    return max(0.0, min(capacity, state.level) - elapsed * rate)


def fits(level: float, cost: float, limit: Limit) -> bool:
    return level + cost <= limit.capacity + 1e-9


def seconds_until_fits(level: float, cost: float, limit: Limit) -> int:
    """Whole seconds until `cost` fits into the bucket or window (0 when it fits now)."""
    excess = level + cost - limit.capacity
    if excess <= 1e-9:
        return 0
    if isinstance(level, Window):
        return level.seconds_until_room(excess)
    if limit.sliding:  # a window's level without its expiries (an estimate): the longest it can take
        return math.ceil(limit.count / limit.rate * (SLOTS + 1) / SLOTS)
    return max(1, math.ceil(excess / limit.rate))


def seconds_until_empty(level: float, limit: Limit) -> float:
    """How long a bucket's record is worth keeping: after this it is full again."""
    return level / limit.rate


@dataclass(frozen=True)
class Shortfall:
    """The limit that refused a cost, and when the cost would fit."""

    limit: Limit
    retry_after: int


def first_shortfall(levels: Sequence[float], limits: Sequence[Limit], cost: float) -> Shortfall | None:
    """The limit that blocks `cost` the longest, or None when every limit has room."""
    worst: Shortfall | None = None
    for level, limit in zip(levels, limits, strict=True):
        if not fits(level, cost, limit):
            wait = seconds_until_fits(level, cost, limit)
            if worst is None or wait > worst.retry_after:
                worst = Shortfall(limit, wait)
    return worst


def over_capacity(limits: Sequence[Limit], cost: float) -> Limit | None:
    """The smallest limit that `cost` can never fit into, however long one waits."""
    too_small = [limit for limit in limits if cost > limit.capacity]
    return min(too_small, key=lambda limit: limit.capacity) if too_small else None


@dataclass(frozen=True)
class DebitResult:
    """Outcome of an all-or-nothing debit: levels after it (or as found, when refused)."""

    allowed: bool
    levels: tuple[float, ...]


def try_debit(
    states: Sequence[BucketState | None], limits: Sequence[Limit], cost: float, now: float
) -> DebitResult:
    return debit_levels(tuple(current_level(s, limit.rate, now, limit.capacity)
                              for s, limit in zip(states, limits, strict=True)), limits, cost)


def debit_levels(levels: tuple[float, ...], limits: Sequence[Limit], cost: float) -> DebitResult:
    """All or nothing over the levels now: each level plus `cost` when every limit has room."""
    if all(fits(level, cost, limit) for level, limit in zip(levels, limits, strict=True)):
        return DebitResult(True, tuple(level + cost for level in levels))
    return DebitResult(False, levels)
