"""Parse limits written the way admins write them: "600/hour", optionally with a burst."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

PERIOD_SECONDS: dict[str, int] = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}

_LIMIT_RE = re.compile(r"^\s*(\d+)\s*/\s*([a-z]+)\s*$")


class LimitSyntaxError(ValueError):
    """A limit string that does not read as N/second|minute|hour|day."""


@dataclass(frozen=True)
class Limit:
    """`count` emails per `period`, refilled continuously; `capacity` is the burst size."""

    count: int
    period: str
    capacity: int
    rate: float = field(init=False, repr=False, compare=False)  # tokens refilled per second

    def __post_init__(self) -> None:
        # Worked out once: read for every bucket of every recipient and message.
        object.__setattr__(self, "rate", self.count / PERIOD_SECONDS[self.period])

    def __str__(self) -> str:
        text = f"{self.count}/{self.period}"
        return text if self.capacity == self.count else f"{text} (burst {self.capacity})"


def parse_limit(text: str, burst: int | None = None) -> Limit:
    """Parse "600/hour"; `burst` replaces the capacity (default: the count)."""
    match = _LIMIT_RE.match(text.lower()) if isinstance(text, str) else None
    if not match or match.group(2).rstrip("s") not in PERIOD_SECONDS:
        raise LimitSyntaxError(f"{text!r} is not a limit (expected N/second, N/minute, N/hour or N/day)")
    count, period = int(match.group(1)), match.group(2).rstrip("s")
    if count < 1:
        raise LimitSyntaxError(f"{text!r}: the count must be at least 1")
    if burst is not None and (isinstance(burst, bool) or not isinstance(burst, int) or burst < 1):
        raise LimitSyntaxError(f"burst {burst!r} must be a whole number of at least 1")
    return Limit(count=count, period=period, capacity=burst if burst is not None else count)
