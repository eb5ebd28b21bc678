"""The two kinds of limit, worst cases first, with an injected clock: a token bucket of 600/hour
lets an idle account send about 1,200 in its first hour; a sliding window of 600/hour never lets
more than 600 through in any 60 minutes. Both through the SQLite store (the same arithmetic as
debit.lua, whose mirror is checked in tests/contract/test_views_store.py), and "try again in"
is right for both: the cost fits after that many seconds, not one second before."""

from __future__ import annotations

import bisect
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailflow.ratelimit.bucket import seconds_until_fits
from mailflow.ratelimit.limits import Limit, LimitSyntaxError, parse_limit
from mailflow.ratelimit.policy import shortfall_refusal
from mailflow.ratelimit.window import SLOTS, Window, level_from_reply, window_level
from mailflow.settings import RatePolicy
from mailflow.store.sqlite import SqliteStore

HOUR = 3600.0
T0 = 1_800_000_000.0  # a clock hour's start: slots and buckets line up as in production


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clocked(tmp_path: Path) -> Iterator[tuple[SqliteStore, Clock]]:
    clock = Clock()
    store = SqliteStore(str(tmp_path / "s.db"), clock=clock)
    yield store, clock
    store.close()


def greedy(store: SqliteStore, clock: Clock, limits: Sequence[Limit], seconds: int, step: float = 1.0) -> list[float]:
    """An account that sends whenever it may: every `step` seconds, as many messages as fit."""
    sent: list[float] = []
    for tick in range(int(seconds / step)):
        clock.now = T0 + tick * step
        while len(sent) < 100_000 and store.debit("greedy.example", limits, 1).allowed:
            sent.append(clock.now - T0)
    return sent


def most_in_any_window(times: Sequence[float], costs: Sequence[float], window: float) -> float:
    """The largest total cost sent within any closed interval [s - window, s]."""
    best, total, start = 0.0, 0.0, 0
    for end, at in enumerate(times):
        total += costs[end]
        while times[start] < at - window:
            total -= costs[start]
            start += 1
        best = max(best, total)
    return best


def test_parse_the_kinds() -> None:
    assert parse_limit("600/hour").kind == "bucket" and not parse_limit("600/hour").sliding
    sliding = parse_limit("600/hour sliding")
    assert sliding.sliding and sliding.capacity == 600 and str(sliding) == "600/hour sliding"
    assert parse_limit(str(sliding)) == sliding
    assert parse_limit("600/hour", kind="sliding") == sliding
    assert parse_limit("600/hour bucket") == parse_limit("600/hour")
    for bad in ("600/hour sideways", "600/hour sliding extra"):
        with pytest.raises(LimitSyntaxError):
            parse_limit(bad)
    with pytest.raises(LimitSyntaxError, match="no burst"):
        parse_limit("600/hour sliding", burst=100)


def test_the_config_reads_both_forms(tmp_path: Path) -> None:
    from mailflow.config import ConfigError, load_config

    good = tmp_path / "good.toml"
    good.write_text('[ratelimit]\nlimits = ["600/hour sliding", { limit = "5000/day", kind = "sliding" }, "10/minute"]\n')
    assert [limit.kind for limit in load_config(str(good)).ratelimit.default.limits] == ["sliding", "sliding", "bucket"]
    bad = tmp_path / "bad.toml"
    bad.write_text('[ratelimit]\nlimits = [{ limit = "600/hour", kind = "sliding", burst = 9 }, { limit = "1/day", kind = "x" }]\n')
    with pytest.raises(ConfigError) as err:
        load_config(str(bad))
    assert any("limits[0]" in e and "no burst" in e for e in err.value.errors)
    assert any("limits[1].kind" in e for e in err.value.errors)


def test_token_bucket_worst_case_is_twice_the_limit_in_the_first_hour(clocked: tuple[SqliteStore, Clock]) -> None:
    store, clock = clocked
    sent = greedy(store, clock, (parse_limit("600/hour"),), 3600)
    # 600 at once from a full bucket, then one every 6 s as it refills: 1,199 within [0, 3600).
    assert len(sent) == 1199
    assert most_in_any_window(sent, [1] * len(sent), HOUR) == 1199


def test_sliding_window_worst_case_is_the_limit_in_any_hour(clocked: tuple[SqliteStore, Clock]) -> None:
    store, clock = clocked
    sent = greedy(store, clock, (parse_limit("600/hour sliding"),), 3 * 3600, step=10)
    assert sent[:600] == [0.0] * 600 and sent[600] == 3660.0  # the first slot leaves after 61 minutes
    assert most_in_any_window(sent, [1] * len(sent), HOUR) == 600
    assert len(sent) == 3 * 600  # one burst per 61 minutes


@settings(max_examples=40)
@given(st.lists(st.tuples(st.floats(0, 4 * HOUR), st.integers(1, 60)), min_size=1, max_size=400),
       st.sampled_from(["bucket", "sliding"]))
def test_any_send_times_never_exceed_the_window_and_retry_after_is_right(sends: list[tuple[float, int]], kind: str) -> None:
    limit = parse_limit("600/hour", kind=kind)
    policy = RatePolicy((limit,))
    clock = Clock()
    with tempfile.TemporaryDirectory() as scratch:
        store = SqliteStore(f"{scratch}/p.db", clock=clock)
        times: list[float] = []
        costs: list[float] = []
        for at, cost in sorted(sends):
            clock.now = T0 + at
            result = store.debit("p.example", (limit,), cost)
            if result.allowed:
                times.append(at)
                costs.append(cost)
                continue
            # Refused: the reply's wait is exact to the second, for either kind.
            wait = seconds_until_fits(result.levels[0], cost, limit)
            refusal = shortfall_refusal(policy, "p.example", result.levels, cost)
            assert refusal is not None and refusal.reply is not None and f"try again in {wait} seconds" in refusal.reply.text
            clock.now = T0 + at + wait
            assert store.levels("p.example", (limit,))[0] + cost <= limit.capacity + 1e-9
            clock.now = T0 + at + wait - 1
            assert wait == 1 or store.levels("p.example", (limit,))[0] + cost > limit.capacity
        store.close()
    if kind == "sliding":
        assert most_in_any_window(times, costs, HOUR) <= 600
    else:  # a token bucket: its capacity at once plus what refills over the window
        assert most_in_any_window(times, costs, HOUR) <= 1200 + 1e-6


def test_window_level_counts_slots_back_to_one_period_before_its_slot() -> None:
    limit = parse_limit("60/hour sliding")
    now = T0 + 30  # in slot k = T0 / 60
    k = int(T0) // 60
    window = window_level({k - SLOTS - 1: 5, k - SLOTS: 7, k - 1: 1, k: 2}, limit, now)
    assert window == 10  # the slot 61 back has left; 60 back still covers [now - 1 h, ...]
    assert window.expiries == ((30.0, 7), (3570.0, 1), (3630.0, 2))  # slot j leaves at (j + 61) minutes
    assert window.seconds_until_room(7) == 30 and window.seconds_until_room(8) == 3570
    assert window.aged(31) == 3 and window.aged(31).expiries == ((3539.0, 1), (3599.0, 2))
    answer = level_from_reply(f"10|{now!r}:3600|{k - SLOTS - 1},5,{k - SLOTS},7,{k - 1},1,{k},2")  # as debit.lua
    assert isinstance(answer, Window) and answer == window and answer.expiries == window.expiries
    assert level_from_reply("1.5") == 1.5 and level_from_reply(f"0|{now!r}:60|") == 0
    # What the window does not hold yet (a message's recipients in flight) leaves with the current slot.
    assert window.current_end == 3630.0 and window.seconds_until_room(11) == 3630
    assert window.aged(3631).current_end == 59.0 and window.aged(3631).seconds_until_room(1) == 59


def test_a_recipient_deferred_at_rcpt_waits_for_the_current_slot() -> None:
    """The 3rd recipient of one message under 2/hour sliding: the first two will be counted in the
    current slot at end of message, so the 3rd fits (in a later transaction) once that slot leaves."""
    limit = parse_limit("2/hour sliding")
    empty = window_level({}, limit, T0 + 20)
    refusal = shortfall_refusal(RatePolicy((limit,)), "news.example", (empty,), 3)
    assert refusal is not None and refusal.reply is not None and "try again in 3640 seconds" in refusal.reply.text


def test_a_lowered_token_bucket_waits_one_new_token_not_the_old_excess(clocked: tuple[SqliteStore, Clock]) -> None:
    store, clock = clocked
    assert store.debit("lower.example", (parse_limit("1000/hour"),), 1000).allowed
    lowered = (parse_limit("100/hour"),)
    [level] = store.levels("lower.example", lowered)
    assert level == 100  # clipped to the new capacity, not 1000
    # The bound: one message's refill time under the new limit, 3600 / 100 = 36 s (not 9 h).
    assert seconds_until_fits(level, 1, lowered[0]) == 36
    refusal = shortfall_refusal(RatePolicy(lowered), "lower.example", (level,), 1)
    assert refusal is not None and refusal.reply is not None and "try again in 36 seconds" in refusal.reply.text
    clock.now += 35
    assert not store.debit("lower.example", lowered, 1).allowed
    clock.now += 1
    assert store.debit("lower.example", lowered, 1).allowed
    # In general: never longer than the new limit's period (a whole new bucket), whatever was spent.
    assert seconds_until_fits(store.levels("lower.example", lowered)[0], 100, lowered[0]) <= 3600


def test_a_lowered_sliding_window_waits_at_most_its_period_and_one_slot(clocked: tuple[SqliteStore, Clock]) -> None:
    store, clock = clocked
    assert store.debit("lower.example", (parse_limit("1000/hour sliding"),), 1000).allowed
    clock.now += 1800
    lowered = parse_limit("100/hour sliding")
    [level] = store.levels("lower.example", (lowered,))
    assert level == 1000 and seconds_until_fits(level, 1, lowered) == 3660 - 1800
    clock.now += 3660 - 1800
    assert store.debit("lower.example", (lowered,), 100).allowed
