"""Bucket arithmetic with an injected clock: no sleeps."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailflow.ratelimit.bucket import (
    BucketState,
    current_level,
    first_shortfall,
    over_capacity,
    seconds_until_fits,
    try_debit,
)
from mailflow.ratelimit.limits import parse_limit

HOUR = parse_limit("600/hour")  # 1 token every 6 seconds
DAY = parse_limit("5000/day")


def test_empty_bucket_record_means_full() -> None:
    assert current_level(None, HOUR.rate, now=1000.0) == 0.0


def test_level_drains_continuously() -> None:
    state = BucketState(level=600, updated=0.0)
    assert current_level(state, HOUR.rate, now=60.0) == pytest.approx(590)
    assert current_level(state, HOUR.rate, now=3600.0) == 0
    assert current_level(state, HOUR.rate, now=99999.0) == 0


def test_clock_going_backwards_does_not_refill() -> None:
    assert current_level(BucketState(10, 100.0), HOUR.rate, now=50.0) == 10


def test_debit_takes_exactly_capacity_then_refuses() -> None:
    states: list[BucketState | None] = [None]
    now = 0.0
    accepted = 0
    for _ in range(700):
        result = try_debit(states, [HOUR], 1, now)
        if result.allowed:
            accepted += 1
            states = [BucketState(result.levels[0], now)]
    assert accepted == 600


def test_refill_after_waiting() -> None:
    full = [BucketState(600, 0.0)]
    assert not try_debit(full, [HOUR], 1, now=5.9).allowed
    assert try_debit(full, [HOUR], 1, now=6.0).allowed
    assert try_debit(full, [HOUR], 10, now=60.0).allowed
    assert not try_debit(full, [HOUR], 11, now=60.0).allowed


def test_several_limits_all_or_nothing() -> None:
    states = [BucketState(0, 0.0), BucketState(4999, 0.0)]
    result = try_debit(states, [HOUR, DAY], 2, now=0.0)
    assert not result.allowed
    assert result.levels == (0.0, 4999.0)  # nothing taken from the hourly bucket either
    ok = try_debit(states, [HOUR, DAY], 1, now=0.0)
    assert ok.allowed and ok.levels == (1.0, 5000.0)


def test_shortfall_names_the_longest_wait() -> None:
    shortfall = first_shortfall([600, 5000], [HOUR, DAY], 1)
    assert shortfall is not None
    assert shortfall.limit == DAY and shortfall.retry_after == 18  # 86400/5000 = 17.28 s
    assert first_shortfall([0, 0], [HOUR, DAY], 1) is None


def test_retry_after_is_whole_seconds_and_never_zero_when_refused() -> None:
    assert seconds_until_fits(600, 1, HOUR) == 6
    assert seconds_until_fits(599.9, 1, HOUR) == 6  # 0.9 token at one per 6 s: 5.4 s, rounded up
    assert seconds_until_fits(0.01, 1, parse_limit("1/second")) == 1
    assert seconds_until_fits(0, 1, HOUR) == 0


def test_over_capacity_picks_the_smallest_bucket() -> None:
    small = parse_limit("600/hour", burst=100)
    assert over_capacity([DAY, small], 101) == small
    assert over_capacity([DAY, small], 100) is None


def test_changing_the_limit_keeps_what_was_spent() -> None:
    spent = [BucketState(500, 0.0)]
    assert not try_debit(spent, [parse_limit("400/hour")], 1, now=0.0).allowed
    assert try_debit(spent, [parse_limit("2000/hour")], 1500, now=0.0).allowed
    assert not try_debit(spent, [parse_limit("2000/hour")], 1501, now=0.0).allowed


@given(
    st.lists(st.tuples(st.integers(1, 50), st.floats(0, 30)), max_size=60),
    st.integers(1, 1000),
)
def test_never_more_than_capacity_plus_refill(debits: list[tuple[int, float]], count: int) -> None:
    limit = parse_limit(f"{count}/minute")
    state: BucketState | None = None
    now, taken = 0.0, 0
    for cost, step in debits:
        now += step
        result = try_debit([state], [limit], cost, now)
        if result.allowed:
            taken += cost
            state = BucketState(result.levels[0], now)
        assert 0 <= (result.levels[0]) <= limit.capacity + 1e-6
    assert taken <= limit.capacity + limit.rate * now + 1e-6
