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
    listed = previous.split(":") if previous and previous.startswith("listed:") else None
    if observed == "listed":
        if listed:
            return Step(f"listed:{listed[1]}:0", None)
        return Step(f"listed:{now}:0", "listed")
    if observed == CLEAN:
        if not listed:
            return Step(CLEAN, None)
        _, since, streak = listed
        streak_now = int(streak) + 1
        if streak_now >= clean_polls:
            return Step(CLEAN, "delisted")
        return Step(f"listed:{since}:{streak_now}", None)
    return Step(previous or "", None)  # error / unknown / untrusted: no news


def zone_step(previous: str | None, blind: bool, now: int) -> Step:
    if blind:
        if previous and previous.startswith("blind:"):
            return Step(previous, None)
        return Step(f"blind:{now}", "blind")
    return Step("ok", "recovered" if previous and previous.startswith("blind:") else None)
