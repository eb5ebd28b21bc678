"""The milter's in-memory replica of what RCPT needs from Redis, against a real redis-server."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from mailflow.ratelimit.limits import parse_limit
from mailflow.store.redis import HELD_KEY, RedisStore, suppression_key
from mailflow.store.redis_replica import GEN_KEY, LOG_KEY, SuppressionReplica
from mailflow.suppression.entries import GLOBAL
from tests.unit.test_suppression import MATCHER

HOURLY = (parse_limit("600/hour"),)


def keys_of(address: str) -> list[str]:
    return MATCHER.recipient_keys(address)


def add(store: RedisStore, scope: str, *texts: str) -> None:
    store.add_suppressions(scope, [MATCHER.make_entry(text, "unsubscribe", "test", 1_700_000_000) for text in texts])


@pytest.fixture
def store(redis_url: str) -> Iterator[RedisStore]:
    s = RedisStore(redis_url, timeout_ms=1000, refresh_ms=50)
    yield s
    s.close()


@pytest.fixture
def replica(redis_url: str) -> SuppressionReplica:
    return SuppressionReplica(redis.Redis.from_url(redis_url, decode_responses=True), suppression_key("*"), HELD_KEY, 60)


def test_an_unlisted_recipient_is_answered_here_a_listed_one_goes_to_redis(store: RedisStore, replica: SuppressionReplica) -> None:
    add(store, GLOBAL, "listed@dest.example")
    assert replica.lookup("shop.example", keys_of("a@dest.example")) is None  # not built yet: ask Redis
    replica.refresh()
    answer = replica.lookup("shop.example", keys_of("a@dest.example"))
    assert answer is not None and answer.matches == () and answer.account_held is None
    assert replica.lookup("shop.example", keys_of("listed@dest.example")) is None


def test_changes_arrive_through_the_log_and_a_gap_means_a_rebuild(store: RedisStore, replica: SuppressionReplica,
                                                                  redis_url: str) -> None:
    replica.refresh()
    add(store, "account:shop.example", "late@dest.example")
    add(store, GLOBAL, "@blocked.example")
    assert replica.lookup("x", keys_of("late@dest.example")) is not None  # stale in the one allowed direction
    replica.refresh()
    assert replica.lookup("x", keys_of("late@dest.example")) is None
    assert replica.lookup("x", keys_of("anyone@blocked.example")) is None
    client = redis.Redis.from_url(redis_url)
    client.delete(LOG_KEY)  # the log no longer bridges the gap
    add(store, GLOBAL, "after-gap@dest.example")
    replica.refresh()
    assert replica.lookup("x", keys_of("after-gap@dest.example")) is None
    client.flushall()  # a Redis replaced by an empty one: generation went backwards
    replica.refresh()
    assert replica.lookup("x", keys_of("late@dest.example")) is not None
    client.close()


def test_a_flushed_redis_refilled_to_the_same_generation_is_not_mistaken_for_the_old_one(
        store: RedisStore, replica: SuppressionReplica, redis_url: str) -> None:
    add(store, GLOBAL, "first@dest.example")
    replica.refresh()
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    add(store, GLOBAL, "second@dest.example")  # generation 1 again, other entries
    assert int(client.get(GEN_KEY) or 0) == 1
    replica.refresh()
    assert replica.lookup("x", keys_of("second@dest.example")) is None  # rebuilt: Redis is asked
    client.close()


def test_held_accounts_and_staleness(store: RedisStore, replica: SuppressionReplica) -> None:
    store.hold_account("held.example", "2 spam-trap hits in 24 hours")
    replica.refresh()
    answer = replica.lookup("held.example", keys_of("a@dest.example"))
    assert answer is not None and answer.account_held is not None and "spam-trap" in answer.account_held
    replica.interval = 0.01
    time.sleep(0.1)  # five intervals without a refresh: no longer trusted
    assert replica.lookup("held.example", keys_of("a@dest.example")) is None


def test_the_store_answers_a_rcpt_without_redis_once_its_replica_is_fresh(store: RedisStore, redis_url: str) -> None:
    add(store, GLOBAL, "listed@dest.example")
    store.debit("shop.example", HOURLY, 1)  # the levels are now known to this process
    store.find_suppressions("shop.example", [GLOBAL], keys_of("a@dest.example"), HOURLY)  # starts the replica
    time.sleep(0.3)
    client = redis.Redis.from_url(redis_url)
    before = client.info("commandstats").get("cmdstat_hmget", {}).get("calls", 0)
    lookup = store.find_suppressions("shop.example", [GLOBAL], keys_of("a@dest.example"), HOURLY)
    assert lookup.matches == () and lookup.levels == pytest.approx((1.0,), abs=0.2)  # drained a little since
    assert client.info("commandstats").get("cmdstat_hmget", {}).get("calls", 0) == before
    listed = store.find_suppressions("shop.example", [GLOBAL], keys_of("listed@dest.example"), HOURLY)
    assert [entry.reason for _, entry in listed.matches] == ["unsubscribe"]
    client.close()
