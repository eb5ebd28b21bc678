"""Transitions of one (IP, zone) pair and of one zone's health. Pure: state in, state and alert out.

Stored state is a short string so watchers sharing a store can swap it atomically:
  listed:SINCE:CLEAN_STREAK   clean   (IP, zone)
  blind:SINCE                 ok      (zone)
A listing alerts at once; a delisting only after `clean_polls` consecutive clean polls (resolvers
cache "listed" until its TTL runs out). Errors, unknowns and blind zones change nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

CLEAN = "clean"


@dataclass(frozen=True)
class Step:
    new_state: str
    alert: str | None  # listed | delisted | blind | recovered


def ip_step(previous: str | None, observed: str, now: int, clean_polls: int) -> Step:
    """Next state of an (IP, zone) pair after one trusted observation."""
    was_listed = previous is not None and previous.startswith("listed:")
    if observed == "listed":
        if was_listed:
            since = previous.split(":")[1]  # type: ignore[union-attr]
            return Step(f"listed:{since}:0", None)
        return Step(f"listed:{now}:0", "listed")
    if observed == CLEAN:
        if not was_listed:
            return Step(CLEAN, None)
        _, since, streak = previous.split(":")  # type: ignore[union-attr]
        streak_now = int(streak) + 1
        if streak_now >= clean_polls:
            return Step(CLEAN, "delisted")
        return Step(f"listed:{since}:{streak_now}", None)
    return Step(previous or "", None)  # error / unknown / untrusted: no news


def zone_step(previous: str | None, blind: bool, now: int) -> Step:
    was_blind = previous is not None and previous.startswith("blind:")
    if blind:
        return Step(previous if was_blind else f"blind:{now}", None if was_blind else "blind")  # type: ignore[arg-type]
    return Step("ok", "recovered" if was_blind else None)
