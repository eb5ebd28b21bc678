"""The engine's side of limit notices: publish limit_refused and limit_near (mailflow/events.py)
once per account, limit and notice window, at the cost of a comparison per debit.

Windows are clock-aligned (UTC): the hour for second, minute and hour limits, the day for day
limits; a 10/minute limit refused all afternoon makes one notice an hour, not one a minute.
This memory keeps a milter from even queueing repeats; the notifier's claim in the store makes
the first notice of a window the fleet's only one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from mailflow import events
from mailflow.ratelimit.bucket import first_shortfall
from mailflow.ratelimit.limits import PERIOD_SECONDS, Limit

MEMORY = 50_000  # (kind, account, period) windows remembered; beyond, the store's claim still dedups


def notice_window(limit: Limit, now: float) -> int:
    """Start (unix time) of the notice window `now` falls in."""
    span = max(3600, PERIOD_SECONDS[limit.period])
    return int(now) // span * span


class LimitNotices:
    def __init__(self, near_percent: int, monitor: bool = False, clock: Callable[[], float] = time.time) -> None:
        self.near = near_percent
        self.monitor = monitor
        self.clock = clock
        self._seen: dict[tuple[str, str, str], int] = {}

    def refused(self, account: str, limits: Sequence[Limit], levels: Sequence[float], cost: float) -> None:
        """A refusal for lack of room: the limit that refused, at most once per window."""
        shortfall = first_shortfall(levels, limits, cost)
        if shortfall is not None:
            level = levels[list(limits).index(shortfall.limit)]
            self._publish(events.LIMIT_REFUSED, account, shortfall.limit, level, retry_after=shortfall.retry_after)

    def debited(self, account: str, limits: Sequence[Limit], levels: Sequence[float]) -> None:
        """After a debit: any limit now at or above the near share (levels as the debit left them)."""
        if not self.near:
            return
        for level, limit in zip(levels, limits):
            # Percent as shown (rounded): a level drains between debits, so 3 of 5 reads 2.9999.
            if 100 * level >= (self.near - 0.5) * limit.capacity:
                self._publish(events.LIMIT_NEAR, account, limit, level)

    def _publish(self, kind: str, account: str, limit: Limit, level: float, **extra: int) -> None:
        now = self.clock()
        window = notice_window(limit, now)
        key = (kind, account, limit.period)
        if self._seen.get(key) == window:
            return
        if len(self._seen) >= MEMORY:
            self._seen.clear()
        self._seen[key] = window
        detail: dict[str, str | int | float] = {
            "limit": str(limit), "period": limit.period, "window": window, "capacity": limit.capacity,
            "used": round(level, 2), "percent": min(100, round(100 * level / limit.capacity)), **extra}
        if self.monitor:
            detail["mode"] = "monitor"
        events.publish(events.Event(kind, account, detail, at=now))
