"""Levels this process saw lately stand in for the store's at RCPT, drained forward, for a while."""

from __future__ import annotations

import pytest

from mailflow.ratelimit.limits import parse_limit
from mailflow.ratelimit.recent import MAX_AGE, RecentLevels

HOURLY = (parse_limit("3600/hour"),)  # drains one token a second


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_remembered_level_drains_at_the_limits_rate() -> None:
    clock = Clock()
    recent = RecentLevels(clock)
    recent.remember("shop.example", HOURLY, (100.0,))
    clock.now += 4
    assert recent.recall("shop.example", HOURLY) == pytest.approx((96.0,))


def test_nothing_is_recalled_past_max_age_or_for_other_limits() -> None:
    clock = Clock()
    recent = RecentLevels(clock)
    recent.remember("shop.example", HOURLY, (5.0,))
    assert recent.recall("shop.example", (parse_limit("600/hour"),)) is None
    assert recent.recall("other.example", HOURLY) is None
    clock.now += MAX_AGE + 0.1
    assert recent.recall("shop.example", HOURLY) is None


def test_an_account_not_seen_lately_is_estimated_to_have_room() -> None:
    clock = Clock()
    recent = RecentLevels(clock)
    assert recent.estimate("quiet.example", HOURLY) == (0.0,)
    recent.remember("busy.example", HOURLY, (50.0,))
    assert recent.estimate("busy.example", HOURLY) == (50.0,)
