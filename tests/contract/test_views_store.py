"""Sliding windows, clipping and the views' counts, on every store (SQLite and a real redis-server):
the same contract, and debit.lua agreeing with ratelimit/window.py."""

from __future__ import annotations

import time

import pytest
import redis

from mailflow.config import Config
from mailflow.model import Decision, Verdict
from mailflow.ratelimit.bucket import seconds_until_fits
from mailflow.ratelimit.limits import parse_limit
from mailflow.ratelimit.window import SLOTS, Window, slot_of, window_level
from mailflow.sent import SentCounter
from mailflow.settings import RateLimitSettings, RatePolicy
from mailflow.store import Store, open_store
from mailflow.store.redis import limit_key
from mailflow.store.redis_counts import active_key, counts_key
from mailflow.views import report

SLIDING = (parse_limit("10/hour sliding"),)


def test_a_sliding_window_counts_and_refuses_with_the_slot_wait(store: Store) -> None:
    assert [store.debit("w.example", SLIDING, 4).allowed for _ in range(3)] == [True, True, False]
    refused = store.debit("w.example", SLIDING, 3)
    [level] = refused.levels
    assert not refused.allowed and isinstance(level, Window) and level == 8
    # Everything is in the current slot: it leaves 61 minutes after the slot began.
    wait = seconds_until_fits(level, 3, SLIDING[0])
    assert 3600 < wait <= 3660
    assert store.debit("w.example", SLIDING, 2).allowed and store.levels("w.example", SLIDING) == (10,)


def test_a_window_refills_when_its_slots_leave(store: Store) -> None:
    fast = (parse_limit("5/second sliding"),)  # slots of 1/60 s: the store's own clock, a short real wait
    assert store.debit("f.example", fast, 5).allowed
    refused = store.debit("f.example", fast, 1)
    assert not refused.allowed and seconds_until_fits(refused.levels[0], 1, fast[0]) == 2  # 1.017 s, rounded up
    time.sleep(1.05)
    assert store.debit("f.example", fast, 5).allowed


def test_buckets_and_windows_debit_all_or_nothing(store: Store) -> None:
    mixed = (parse_limit("5/hour"), parse_limit("10/day sliding"))
    assert store.debit("m.example", mixed, 5).allowed
    refused = store.debit("m.example", mixed, 1)  # the bucket is full: the window takes nothing either
    assert not refused.allowed and refused.levels[1] == 5
    assert store.levels("m.example", (parse_limit("10/day sliding"),)) == (5,)
    store.reset("m.example")
    assert store.levels("m.example", mixed) == (0, 0)


def test_a_lowered_limit_waits_one_new_token(store: Store) -> None:
    assert store.debit("low.example", (parse_limit("1000/hour"),), 1000).allowed
    lowered = parse_limit("100/hour")
    [level] = store.levels("low.example", (lowered,))
    assert level == pytest.approx(100, abs=0.1)
    assert seconds_until_fits(level, 1, lowered) <= 36  # 3600 s / 100, never 9 hours
    assert not store.debit("low.example", (lowered,), 2).allowed


def test_debit_lua_mirrors_window_py(redis_url: str) -> None:
    """Slots written by hand, one per minute back to 62 minutes ago: the script counts and times
    them as window_level does (the same clock reading, within the test's few milliseconds)."""
    store = open_store(redis_url)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    limit = parse_limit("1000/hour sliding")
    key = limit_key("mirror.example", limit)
    for _ in range(5):  # a minute's boundary may fall inside the test: then try again
        seconds, micros = client.time()
        now = seconds + micros / 1e6
        current = slot_of(limit, now)
        slots = {current - back: back + 1 for back in range(SLOTS + 3)}
        client.delete(key)
        client.hset(key, mapping={str(slot): str(count) for slot, count in slots.items()})
        [level] = store.levels("mirror.example", (limit,))
        seconds, micros = client.time()
        if slot_of(limit, seconds + micros / 1e6) == current:
            break
    expected = window_level(slots, limit, now)
    assert isinstance(level, Window) and level == expected == sum(range(1, SLOTS + 2))
    assert [count for _, count in level.expiries] == [count for _, count in expected.expiries]
    assert all(abs(a - b) < 0.5 for (a, _), (b, _) in zip(level.expiries, expected.expiries))
    assert abs(level.current_end - expected.current_end) < 0.5 and level.slot == expected.slot == 60
    assert store.debit("mirror.example", (parse_limit("5000/hour sliding"),), 1).allowed
    assert len(client.hkeys(limit_key("mirror.example", parse_limit("5000/hour sliding")))) == SLOTS + 1  # stale slots gone
    assert 3660_000 < client.pttl(key.replace("1000", "5000")) <= 3662_000
    store.close()


def test_counts_add_up_per_account_and_hour(store: Store) -> None:
    hour = int(time.time()) // 3600
    store.add_counts({(hour, "a.example", "sent"): 3, (hour, "a.example", "rcpts"): 7,
                      (hour, "a.example", "refused:ratelimit"): 2, (hour, "b.example", "refused:suppressed"): 1,
                      (hour - 1, "a.example", "sent"): 10})
    store.add_counts({(hour, "a.example", "sent"): 1})
    assert store.active_accounts([hour]) == {"a.example": 4, "b.example": 0}
    assert store.active_accounts([hour, hour - 1]) == {"a.example": 14, "b.example": 0}
    assert store.account_counts(["a.example", "c.example"], [hour]) == {
        "a.example": {"sent": 4, "rcpts": 7, "refused:ratelimit": 2}}
    assert store.account_counts(["a.example"], [hour - 1, hour])["a.example"]["sent"] == 14
    limits = (parse_limit("10/hour"), parse_limit("10/hour sliding"))
    store.debit("a.example", limits, 4)
    levels = store.levels_of([("a.example", limits), ("c.example", limits[:1])])
    assert levels[0][0] == pytest.approx(4, abs=0.01) and levels[0][1] == 4 and levels[1] == (0,)


def test_redis_count_keys_are_tagged_indexed_and_expire(redis_url: str) -> None:
    store = open_store(redis_url)
    hour = int(time.time()) // 3600
    store.add_counts({(hour, "shop.example", "sent"): 1})
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    assert sorted(client.keys("mailflow:*")) == [active_key(hour), counts_key("shop.example", hour)]
    assert "{shop.example}" in counts_key("shop.example", hour)
    for key in (active_key(hour), counts_key("shop.example", hour)):
        assert client.ttl(key) >= 48 * 3600
    store.close()


def test_the_milters_counter_feeds_the_views(store: Store) -> None:
    now = time.time()
    counter = SentCounter(store, flush_every=3600, clock=lambda: now)
    ok, held = Decision(Verdict.CONTINUE, "ok"), Decision(Verdict.HOLD, "lookalike")
    deferred = Decision(Verdict.TEMPFAIL, "ratelimit")
    for _ in range(3):
        counter.note("shop.example", "sasl", "eom", ok, 2)
    counter.note("shop.example", "sasl", "rcpt", deferred, 2)
    counter.note("shop.example", "local", "eom", held, 1)
    counter.note("quiet.example", "trusted_ip", "rcpt", deferred, 0)
    counter.note("quiet.example", "trusted_ip", "rcpt", Decision(Verdict.CONTINUE, "ok"), 1)  # not counted
    counter.flush()
    limits = (parse_limit("10/hour"),)
    config = Config(ratelimit=RateLimitSettings(default=RatePolicy(limits),
                                                 accounts={"vip.example": RatePolicy(limits, exempt=True)}))
    store.debit("shop.example", limits, 9)
    rows = report.top(config, store, report.hours_back(now, 1), 10)
    assert [row["account"] for row in rows] == ["shop.example", "quiet.example"]
    shop = rows[0]
    assert (shop["messages"], shop["recipients"], shop["refused"], shop["held"]) == (3, 6, 1, 1)
    assert shop["refused_by_reason"] == {"ratelimit": 1} and shop["source"] == "sasl+local"
    assert shop["limit"] == "10/hour" and shop["limit_share"] == pytest.approx(0.9, abs=0.01)

    near, looked_at = report.near_limit(config, store, 0.8, now)
    assert looked_at == 2 and [(row["account"], row["limit"]) for row in near] == [("shop.example", "10/hour")]
    assert report.near_limit(config, store, 0.95, now)[0] == []

    status = report.status(config, store, "shop.example", now)
    assert status["seen"] and status["this_hour"]["messages"] == 3 and status["last_24_hours"]["recipients"] == 6
    [hourly] = status["limits"]
    assert hourly["kind"] == "token_bucket" and "up to 10 at once" in hourly["meaning"]
    assert hourly["left"] == pytest.approx(1, abs=0.01) and status["next_fits_in_seconds"] == 0
    assert status["grants"] == []
    never = report.status(config, store, "never.example", now)
    assert not never["seen"] and never["this_hour"]["messages"] == 0
