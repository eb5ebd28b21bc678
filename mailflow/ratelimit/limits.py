"""Parse limits written the way admins write them: "600/hour", optionally with a burst, or
"600/hour sliding" for a sliding window (at most 600 in any hour)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

PERIOD_SECONDS: dict[str, int] = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
KINDS = ("bucket", "sliding")  # token bucket (the default) | sliding window (ratelimit/window.py)

_LIMIT_RE = re.compile(r"^\s*(\d+)\s*/\s*([a-z]+)\s*(?:\s([a-z]+)\s*)?$")


class LimitSyntaxError(ValueError):
    """A limit string that does not read as N/second|minute|hour|day [bucket|sliding]."""


@dataclass(frozen=True)
class Limit:
    """`count` emails per `period`. A token bucket (`kind` "bucket") refills continuously and
    `capacity` is its burst size; a sliding window ("sliding") allows `capacity` (= count) in any
    window of the period."""

    count: int
    period: str
    capacity: int
    kind: str = "bucket"
    rate: float = field(init=False, repr=False, compare=False)  # tokens refilled per second
    sliding: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Worked out once: read for every bucket of every recipient and message.
        object.__setattr__(self, "rate", self.count / PERIOD_SECONDS[self.period])
        object.__setattr__(self, "sliding", self.kind == "sliding")

    def __str__(self) -> str:
        text = f"{self.count}/{self.period}"
        if self.sliding:
            return f"{text} sliding"
        return text if self.capacity == self.count else f"{text} (burst {self.capacity})"


def parse_limit(text: str, burst: int | None = None, kind: str | None = None) -> Limit:
    """Parse "600/hour" or "600/hour sliding"; `burst` replaces a token bucket's capacity
    (default: the count); `kind` (a table's `kind = "sliding"`) says the same as the word."""
    match = _LIMIT_RE.match(text.lower()) if isinstance(text, str) else None
    if not match or match.group(2).rstrip("s") not in PERIOD_SECONDS:
        raise LimitSyntaxError(f"{text!r} is not a limit (expected N/second, N/minute, N/hour or N/day, "
                               "optionally followed by sliding)")
    count, period = int(match.group(1)), match.group(2).rstrip("s")
    word = match.group(3)
    if word is not None and word not in KINDS:
        raise LimitSyntaxError(f"{text!r}: {word!r} is not a kind of limit (bucket or sliding)")
    if word and kind and word != kind:
        raise LimitSyntaxError(f"{text!r} says {word} but kind says {kind}")
    kind = word or kind or "bucket"
    if kind not in KINDS:
        raise LimitSyntaxError(f"kind {kind!r} is not a kind of limit (bucket or sliding)")
    if count < 1:
        raise LimitSyntaxError(f"{text!r}: the count must be at least 1")
    if burst is not None and (isinstance(burst, bool) or not isinstance(burst, int) or burst < 1):
        raise LimitSyntaxError(f"burst {burst!r} must be a whole number of at least 1")
    if burst is not None and kind == "sliding":
        raise LimitSyntaxError(f"{text!r}: a sliding window has no burst (it allows {count} in any {period})")
    return Limit(count=count, period=period, capacity=burst if burst is not None else count, kind=kind)
