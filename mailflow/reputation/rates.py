"""The figures the ladder's rules read, from the store's hourly feedback counts.

Hours are whole clock hours (unix time // 3600), as the store keeps them. Denominators:
- hard bounces: hard bounces of class 5.1, 5.2 and other, over recipients attempted = delivered
  plus every hard bounce (5.7 too), in the current hour and the 23 before. Deferrals are not
  attempts (they come back as a delivery or a bounce). 5.7.x policy refusals count in the
  denominator but not the numerator: they judge the provider's IP, which every customer on it
  shares (the receivers' watch counts them per IP).
- complaints: complaints over delivered, in the current hour and the 167 before (7 days).
- unknown and unique recipients: the last 60 minutes, estimated as the current hour plus the
  previous hour's part still inside the 60 minutes (its share of the hour not yet elapsed), as
  the sliding rate limits do: a burst across an hour boundary is not cut in two.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

from mailflow.feedback.model import (BOUNCE_ADDRESS, BOUNCE_MAILBOX, BOUNCE_OTHER, COMPLAINT, DELIVERED, HARD_BOUNCES,
                                     UNKNOWN_RECIPIENT)
from mailflow.settings import reputation as rules

HOUR = 3600
BOUNCE_HOURS = 24
COMPLAINT_HOURS = 7 * 24
BLAMED_BOUNCES = (BOUNCE_ADDRESS, BOUNCE_MAILBOX, BOUNCE_OTHER)


class FeedbackReader(Protocol):
    """The part of the Store the rates read (memory.py has it too)."""

    def feedback_counts(self, account: str, hours: Sequence[int]) -> dict[int, dict[str, int]]: ...

    def unique_recipients(self, account: str, hours: Sequence[int]) -> int: ...


@dataclass(frozen=True)
class Rates:
    attempted_24h: int = 0  # delivered + hard bounces of every class
    hard_bounces_24h: int = 0  # 5.1, 5.2 and other
    delivered_7d: int = 0
    complaints_7d: int = 0
    unknown_last_hour: int = 0
    unique_last_hour: int = 0

    @property
    def hard_bounce_percent(self) -> float:
        return 100.0 * self.hard_bounces_24h / self.attempted_24h if self.attempted_24h else 0.0

    @property
    def complaint_percent(self) -> float:
        return 100.0 * self.complaints_7d / self.delivered_7d if self.delivered_7d else 0.0

    def figure(self, rule: str) -> tuple[float, int]:
        """(the rule's figure, its sample: the recipients it is a share of, or the count itself)."""
        if rule == rules.HARD_BOUNCES:
            return self.hard_bounce_percent, self.attempted_24h
        if rule == rules.COMPLAINTS:
            return self.complaint_percent, self.delivered_7d
        if rule == rules.UNKNOWN_RECIPIENTS:
            return float(self.unknown_last_hour), self.unknown_last_hour
        if rule == rules.UNIQUE_RECIPIENTS:
            return float(self.unique_last_hour), self.unique_last_hour
        raise ValueError(f"no figure for rule {rule!r}")

    def describe(self, rule: str) -> str:
        """The figure in words, for a standing's `why`."""
        figure, sample = self.figure(rule)
        if rule == rules.HARD_BOUNCES:
            return f"hard bounces {figure:.1f}% ({self.hard_bounces_24h} of {sample} recipients in 24 h)"
        if rule == rules.COMPLAINTS:
            return f"complaints {figure:.2f}% ({self.complaints_7d} of {sample} delivered in 7 days)"
        if rule == rules.UNKNOWN_RECIPIENTS:
            return f"{sample} unknown recipients in the last hour"
        return f"{sample} unique recipients in the last hour"

    def plain(self) -> dict[str, float]:
        """Every count and both shares (rounded), as Standing.rates and event details keep them."""
        values: dict[str, float] = {key: float(value) for key, value in asdict(self).items()}
        values["hard_bounce_percent"] = round(self.hard_bounce_percent, 3)
        values["complaint_percent"] = round(self.complaint_percent, 4)
        return values


def hours_back(now: float, count: int) -> list[int]:
    """The current clock hour and the count - 1 before it."""
    hour = int(now // HOUR)
    return list(range(hour - count + 1, hour + 1))


def read_rates(store: FeedbackReader, account: str, now: float, start: float | None = None) -> Rates:
    """Three store calls: the 7 days of counts, and the unique recipients of this hour and of
    this hour with the previous one. With `start` (an admin's reset), hours before its hour are
    left out: the figures start over there."""
    first = int(start // HOUR) if start is not None else None
    week = [hour for hour in hours_back(now, COMPLAINT_HOURS) if first is None or hour >= first]
    current = int(now // HOUR)
    previous = current - 1 if first is None or current - 1 >= first else None
    counts = store.feedback_counts(account, week)
    day = set(week[-BOUNCE_HOURS:])
    rest = 1.0 - (now % HOUR) / HOUR  # the previous hour's share still in the last 60 minutes

    def total(fields: Sequence[str], hours: set[int] | None = None) -> int:
        return sum(max(0, int(by_field.get(name, 0))) for hour, by_field in counts.items()
                   if hours is None or hour in hours for name in fields)

    def last_hour(now_count: float, before: float) -> int:
        return int(now_count + max(0.0, before) * rest + 0.5)

    unique_now = store.unique_recipients(account, [current])
    unique_both = store.unique_recipients(account, [previous, current]) if previous is not None else unique_now
    unknown_before = counts.get(previous, {}).get(UNKNOWN_RECIPIENT, 0) if previous is not None else 0
    return Rates(
        attempted_24h=total((DELIVERED, *HARD_BOUNCES), day),
        hard_bounces_24h=total(BLAMED_BOUNCES, day),
        delivered_7d=total((DELIVERED,)),
        complaints_7d=total((COMPLAINT,)),
        unknown_last_hour=last_hour(counts.get(current, {}).get(UNKNOWN_RECIPIENT, 0), unknown_before),
        unique_last_hour=last_hour(unique_now, unique_both - unique_now),
    )
