"""Delivery feedback and reputation standings keep one contract on SQLite, a real redis-server and
a three-master Redis Cluster (Store.add_feedback ... swap_reputation)."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from mailflow.store import Store, StoreError, open_store
from mailflow.store.base import FEEDBACK_HOURS, ONE_OFF_SOURCE, RECIPIENT_HOURS
from mailflow.store.redis_cluster import connect_cluster
from mailflow.store.redis_feedback import (REPUTATION_KEY, expire_at, feedback_index_key, feedback_key, guard_key,
                                           recipients_key)
from mailflow.store.sqlite import SqliteStore
from tests.helpers.races import exactly_one_wins
from tests.helpers.redis_faults import redis_process
from tests.helpers.sentinel import sentinel_set
from tests.helpers.servers import free_port

SOURCE = "mx1:/var/log/mail.log"


def now_hour() -> int:
    return int(time.time()) // 3600  # Redis expires by its own clock: hours near now


def digests(start: int, stop: int) -> list[str]:
    return [hashlib.sha256(str(i).encode()).hexdigest()[:32] for i in range(start, stop)]


def test_counts_add_up_per_hour_and_field(store: Store) -> None:
    h = now_hour()
    store.add_feedback(None, 0, {(h, "a.example", "delivered"): 3, (h, "a.example", "bounce_5.1"): 1,
                                 (h - 1, "a.example", "delivered"): 2, (h, "b.example", "complaint"): 1}, {})
    store.add_feedback(None, 0, {(h, "a.example", "delivered"): 4}, {})
    assert store.feedback_counts("a.example", [h - 2, h - 1, h]) == {
        h: {"delivered": 7, "bounce_5.1": 1}, h - 1: {"delivered": 2}}
    assert store.feedback_counts("a.example", [h - 1]) == {h - 1: {"delivered": 2}}
    assert store.feedback_counts("b.example", [h]) == {h: {"complaint": 1}}
    assert store.feedback_counts("nobody.example", [h]) == {}
    assert store.feedback_counts("a.example", []) == {}


def test_a_source_counts_each_seq_once_per_account(store: Store) -> None:
    h = now_hour()

    def batch(n: int, *accounts: str) -> dict[tuple[int, str, str], int]:
        return {(h, account, "delivered"): n for account in accounts}

    store.add_feedback(SOURCE, 5, batch(1, "a.example"), {(h, "a.example"): ["d1"]})
    store.add_feedback(SOURCE, 5, batch(10, "a.example"), {(h, "a.example"): ["d2"]})  # applied again: nothing
    store.add_feedback(SOURCE, 4, batch(100, "a.example"), {})  # an older one: nothing
    assert store.feedback_counts("a.example", [h]) == {h: {"delivered": 1}}
    assert store.unique_recipients("a.example", [h]) == 1
    store.add_feedback("mx2:/var/log/mail.log", 1, batch(1000, "a.example"), {})  # another source: its own seq
    # One batch of two accounts: a.example took 5 already, b.example is new to it and takes it.
    store.add_feedback(SOURCE, 5, batch(10_000, "a.example", "b.example"), {})
    store.add_feedback(SOURCE, 6, batch(20_000, "a.example"), {})
    store.add_feedback(None, 0, batch(2, "a.example"), {})  # no source: no guard
    store.add_feedback(None, 0, batch(2, "a.example"), {})
    assert store.feedback_counts("a.example", [h]) == {h: {"delivered": 21_005}}
    assert store.feedback_counts("b.example", [h]) == {h: {"delivered": 10_000}}


def test_unique_recipients_merge_hours_and_hosts(store_url: str, store: Store) -> None:
    """10,000 digests, two hours, two store objects (two hosts of a fleet): within 2 % on Redis
    (HyperLogLog), exact on SQLite."""
    h = now_hour()
    other = open_store(store_url, timeout_ms=1000)
    try:
        store.add_feedback(None, 0, {(h, "u.example", "delivered"): 6000}, {(h, "u.example"): digests(0, 6000)})
        other.add_feedback(None, 0, {(h - 1, "u.example", "delivered"): 6000},
                           {(h - 1, "u.example"): digests(4000, 10_000)})
        other.add_feedback(None, 0, {}, {(h, "u.example"): digests(0, 100)})  # seen already that hour
        exact = store_url.startswith("sqlite")
        for reader in (store, other):
            for hours, want in (([h], 6000), ([h - 1], 6000), ([h - 1, h], 10_000), ([h - 5, h - 1, h], 10_000)):
                got = reader.unique_recipients("u.example", hours)
                assert got == want if exact else abs(got - want) <= want * 0.02, (hours, got)
        assert store.unique_recipients("u.example", [h - 2]) == 0
        assert store.unique_recipients("nobody.example", [h]) == 0
        assert store.unique_recipients("u.example", []) == 0
    finally:
        other.close()


def test_feedback_accounts_lists_the_hours_accounts(store: Store) -> None:
    h = now_hour()
    store.add_feedback(None, 0, {(h, "a.example", "delivered"): 1, (h - 1, "b.example", "deferred"): 1,
                                 (h - 3, "c.example", "complaint"): 1}, {(h, "d.example"): ["x"]})
    assert sorted(store.feedback_accounts([h])) == ["a.example", "d.example"]
    assert sorted(store.feedback_accounts([h - 1, h])) == ["a.example", "b.example", "d.example"]
    assert store.feedback_accounts([h - 2]) == []
    assert store.feedback_accounts([]) == []


def test_many_accounts_in_one_call(store: Store) -> None:
    h = now_hour()
    accounts = [f"acct{i}.example" for i in range(2500)]  # more than one pipeline's batch
    counts = {(h, account, "delivered"): i + 1 for i, account in enumerate(accounts)}
    store.add_feedback(SOURCE, 1, counts, {(h, account): [account] for account in accounts})
    store.add_feedback(SOURCE, 1, counts, {})
    assert sorted(store.feedback_accounts([h])) == sorted(accounts)
    assert store.feedback_counts("acct2499.example", [h]) == {h: {"delivered": 2500}}
    assert store.unique_recipients("acct7.example", [h]) == 1


def test_hostile_account_names_keep_their_own_counts(store: Store) -> None:
    h = now_hour()
    names = ["}x", "", "a}b", "a", "%7D", "{a}", "é.example"]
    store.add_feedback(SOURCE, 1, {(h, name, "delivered"): i + 1 for i, name in enumerate(names)},
                       {(h, name): [str(i)] for i, name in enumerate(names)})
    for i, name in enumerate(names):
        assert store.feedback_counts(name, [h]) == {h: {"delivered": i + 1}}
        assert store.unique_recipients(name, [h]) == 1
    assert sorted(store.feedback_accounts([h])) == sorted(names)


def test_swap_reputation_sets_changes_and_removes_only_from_what_was_read(store: Store) -> None:
    assert store.reputation_states() == {}
    assert store.swap_reputation("shop.example", None, "s1")
    assert not store.swap_reputation("shop.example", None, "s2")  # someone set it first
    assert not store.swap_reputation("shop.example", "other", None)
    assert store.swap_reputation("shop.example", "s1", "s2")
    assert store.swap_reputation("web.example", None, "w1")
    assert store.reputation_states() == {"shop.example": "s2", "web.example": "w1"}
    assert not store.swap_reputation("shop.example", "s1", None)
    assert store.swap_reputation("shop.example", "s2", None)
    assert store.reputation_states() == {"web.example": "w1"}
    assert not store.swap_reputation("shop.example", "s2", None)
    assert store.grants() == {}  # its own hash or table


def test_concurrent_reputation_swaps_let_exactly_one_win(store: Store) -> None:
    store.swap_reputation("shop.example", None, "start")
    exactly_one_wins(lambda new: store.swap_reputation("shop.example", "start", new))


# -- SQLite: pruning by its clock, a corrupt row ---------------------------------------------

def test_sqlite_prunes_hours_older_than_feedback_hours_at_writes(tmp_path: Path) -> None:
    clock = [1_800_000_000.0]
    store = SqliteStore(str(tmp_path / "s.db"), clock=lambda: clock[0])
    h = int(clock[0]) // 3600
    store.add_feedback(SOURCE, 3, {(h, "a.example", "delivered"): 1}, {(h, "a.example"): ["d"]})
    clock[0] += FEEDBACK_HOURS * 3600  # the hour is FEEDBACK_HOURS old: still kept
    store.add_feedback(None, 0, {(h + 1, "b.example", "delivered"): 1}, {})
    assert store.feedback_counts("a.example", [h]) == {h: {"delivered": 1}}
    clock[0] += 3600
    store.add_feedback(None, 0, {(h + FEEDBACK_HOURS + 1, "b.example", "delivered"): 1}, {})
    assert store.feedback_counts("a.example", [h]) == {}
    assert store.unique_recipients("a.example", [h]) == 0
    assert store.feedback_accounts([h]) == []
    # The guard went with them: the seq is taken afresh (its counts long gone anyway).
    store.add_feedback(SOURCE, 3, {(h + FEEDBACK_HOURS + 1, "a.example", "delivered"): 5}, {})
    assert store.feedback_counts("a.example", [h + FEEDBACK_HOURS + 1]) == {h + FEEDBACK_HOURS + 1: {"delivered": 5}}
    store.close()


def test_sqlite_corrupt_count_is_a_store_error(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "s.db"))
    h = now_hour()
    store.add_feedback(None, 0, {(h, "a.example", "delivered"): 1}, {})
    with store._connection() as conn:
        conn.execute("UPDATE feedback SET n = 'lots'")
    with pytest.raises(StoreError, match="corrupt"):
        store.feedback_counts("a.example", [h])
    store.close()


# -- Redis and the Cluster: the keys, their expiry, scripts gone, wrong types, Redis down ----

def raw_client(store_url: str) -> Any:
    """A plain client of the store's Redis (redis-py's Cluster client for a Cluster)."""
    if store_url.startswith("sqlite"):
        pytest.skip("Redis keys")
    if store_url.startswith("redis+cluster"):
        return connect_cluster(store_url, 2000)
    return redis.Redis.from_url(store_url, decode_responses=True)


def test_keys_share_the_accounts_slot_and_expire(store_url: str, store: Store) -> None:
    client = raw_client(store_url)
    h = now_hour()
    store.add_feedback(SOURCE, 1, {(h, "}x", "delivered"): 1, (h - 1, "}x", "deferred"): 2},
                       {(h, "}x"): ["d1", "d2"]})
    keys = [guard_key("}x"), feedback_key("}x", h), feedback_key("}x", h - 1), recipients_key("}x", h)]
    assert len({key_slot(key.encode()) for key in keys}) == 1
    for key in keys:
        assert 0 < client.ttl(key) <= (FEEDBACK_HOURS + 1) * 3600, key
    assert abs(client.ttl(feedback_key("}x", h)) - (expire_at(h) - time.time())) < 5
    assert client.ttl(feedback_key("}x", h)) - client.ttl(feedback_key("}x", h - 1)) in range(3595, 3605)
    assert client.smembers(feedback_index_key(h)) == {"}x"}
    assert 0 < client.ttl(feedback_index_key(h)) <= (FEEDBACK_HOURS + 1) * 3600
    assert client.hgetall(guard_key("}x")) == {SOURCE: "1"}
    # An hour past FEEDBACK_HOURS (an old log read late) is gone at once, as SQLite prunes it.
    old = h - FEEDBACK_HOURS - 2
    store.add_feedback(None, 0, {(old, "}x", "delivered"): 1}, {})
    assert store.feedback_counts("}x", [old]) == {} and client.exists(feedback_key("}x", old)) == 0
    assert store.swap_reputation("}x", None, "v")
    assert client.hgetall(REPUTATION_KEY) == {"}x": "v"}
    client.close()


def test_scripts_flushed_from_redis_are_loaded_again(store_url: str, store: Store) -> None:
    client = raw_client(store_url)
    h = now_hour()
    store.add_feedback(SOURCE, 1, {(h, f"a{i}.example", "delivered"): 1 for i in range(50)}, {})
    client.script_flush()  # on a Cluster, every master's: each answers NOSCRIPT next
    assert not any(client.script_exists(store._feedback_script().sha))  # type: ignore[attr-defined]
    store.add_feedback(SOURCE, 2, {(h, f"a{i}.example", "delivered"): 1 for i in range(50)}, {})
    assert store.swap_reputation("a1.example", None, "v")
    assert all(store.feedback_counts(f"a{i}.example", [h]) == {h: {"delivered": 2}} for i in range(50))
    client.close()


def test_wrong_types_and_corrupt_values_are_store_errors_writing_nothing(store_url: str, store: Store) -> None:
    client = raw_client(store_url)
    h = now_hour()
    client.set(guard_key("g.example"), "not a hash")
    client.hset(feedback_key("c.example", h), "delivered", "lots")
    client.set(recipients_key("u.example", h), "not a HyperLogLog")
    client.hset(guard_key("s.example"), SOURCE, "x")
    client.set(feedback_index_key(h - 1), "not a set")
    client.set(REPUTATION_KEY, "not a hash")
    for account in ("g.example", "c.example", "u.example", "s.example"):
        with pytest.raises(StoreError, match="redis"):
            store.add_feedback(SOURCE, 7, {(h, account, "delivered"): 1, (h, account, "complaint"): 1},
                               {(h, account): ["d"]})
    # Nothing written, the guard not taken: once the keys are mended the same batch counts.
    assert client.exists(feedback_key("g.example", h), feedback_key("u.example", h), guard_key("c.example")) == 0
    assert client.hgetall(feedback_key("c.example", h)) == {"delivered": "lots"}
    for call in (lambda: store.feedback_counts("c.example", [h]), lambda: store.unique_recipients("u.example", [h]),
                 lambda: store.feedback_accounts([h - 1, h]), store.reputation_states,
                 lambda: store.swap_reputation("a", None, "v")):
        with pytest.raises(StoreError, match="redis"):
            call()
    client.delete(guard_key("g.example"))
    store.add_feedback(SOURCE, 7, {(h, "g.example", "delivered"): 1}, {})
    assert store.feedback_counts("g.example", [h]) == {h: {"delivered": 1}}
    client.close()


def test_redis_down_is_a_store_error(tmp_path: Path) -> None:
    with redis_process(tmp_path) as server:
        store = open_store(server.url, timeout_ms=200)
        h = now_hour()
        store.add_feedback(SOURCE, 1, {(h, "a.example", "delivered"): 1}, {})
        server.kill()
        cluster = open_store(f"redis+cluster://127.0.0.1:{free_port()}", timeout_ms=200)  # never reached
        for s in (store, cluster):
            for call in (lambda: s.add_feedback(SOURCE, 2, {(h, "a.example", "delivered"): 1}, {(h, "a.example"): ["d"]}),
                         lambda: s.feedback_counts("a.example", [h]), lambda: s.unique_recipients("a.example", [h]),
                         lambda: s.feedback_accounts([h]), s.reputation_states,
                         lambda: s.swap_reputation("a.example", None, "v")):
                with pytest.raises(StoreError, match="redis"):
                    call()
            s.close()


def test_feedback_through_sentinel_lands_on_the_master(tmp_path: Path) -> None:
    h = now_hour()
    with sentinel_set(tmp_path) as fleet:
        store = open_store(fleet.url(), timeout_ms=1000)
        try:
            store.add_feedback(SOURCE, 1, {(h, "s.example", "bounce_5.1"): 2}, {(h, "s.example"): ["d1", "d2"]})
            store.add_feedback(SOURCE, 1, {(h, "s.example", "bounce_5.1"): 2}, {})
            assert store.swap_reputation("s.example", None, "v")
            assert store.feedback_counts("s.example", [h]) == {h: {"bounce_5.1": 2}}
            assert store.unique_recipients("s.example", [h]) == 2 and store.feedback_accounts([h]) == ["s.example"]
            with fleet.master.client() as master:
                assert master.hgetall(feedback_key("s.example", h)) == {"bounce_5.1": "2"}
                assert master.hgetall(REPUTATION_KEY) == {"s.example": "v"}
        finally:
            store.close()


def test_recipient_digests_are_kept_recipient_hours_only(store_url: str, store: Store) -> None:
    """The ladder reads unique recipients of the last two hours: a busy account's digests (most of
    the bytes: 12 KiB of HyperLogLog, or a SQLite row per recipient, an hour) go after
    RECIPIENT_HOURS, its counts after FEEDBACK_HOURS."""
    h = now_hour()
    old = h - RECIPIENT_HOURS - 1
    store.add_feedback(None, 0, {(old, "r.example", "delivered"): 2, (h, "r.example", "delivered"): 2},
                       {(old, "r.example"): ["d1", "d2"], (h, "r.example"): ["d1", "d3"]})
    assert store.unique_recipients("r.example", [old]) == 0
    assert store.unique_recipients("r.example", [h - 1, h]) == 2
    assert store.feedback_counts("r.example", [old, h]) == {old: {"delivered": 2}, h: {"delivered": 2}}
    if not store_url.startswith("sqlite"):
        client = raw_client(store_url)
        ttl = client.ttl(recipients_key("r.example", h))
        assert 0 < ttl <= (RECIPIENT_HOURS + 1) * 3600 and client.exists(recipients_key("r.example", old)) == 0
        assert client.ttl(feedback_key("r.example", h)) > FEEDBACK_HOURS * 3600
        client.close()


def test_a_one_off_sources_guard_is_its_own_and_expires(store_url: str, store: Store) -> None:
    """A complaint's count is guarded by its report (source `once:…`, seq 1): taken once, and on
    Redis in a key of its own that expires, not a field that the account's hash keeps for ever."""
    h = now_hour()
    for _ in range(2):  # a retry after a fault
        store.add_feedback(ONE_OFF_SOURCE + "arf:r1", 1, {(h, "o.example", "complaint"): 1}, {})
    store.add_feedback(ONE_OFF_SOURCE + "arf:r2", 1, {(h, "o.example", "complaint"): 1}, {})
    assert store.feedback_counts("o.example", [h]) == {h: {"complaint": 2}}
    if not store_url.startswith("sqlite"):
        client = raw_client(store_url)
        assert client.exists(guard_key("o.example")) == 0
        assert 0 < client.ttl(guard_key("o.example", ONE_OFF_SOURCE + "arf:r1")) <= FEEDBACK_HOURS * 3600
        client.close()



def test_a_standing_that_is_not_utf8_is_a_store_error(store_url: str, store: Store) -> None:
    """Bytes that are not UTF-8 in the standings' hash (written by hand) raised a UnicodeDecodeError
    out of every reader (the follower's ladder timer stopped the follower): a StoreError that
    says what to remove, as a corrupt count is."""
    if store_url.startswith("sqlite") or store_url.startswith("redis+cluster"):
        pytest.skip("one Redis: the Cluster store reads the hash the same way")
    binary = redis.Redis.from_url(store_url)
    binary.hset(REPUTATION_KEY, b"bad\xff", b"\xff")
    with pytest.raises(StoreError, match="not UTF-8"):
        store.reputation_states()
    binary.hdel(REPUTATION_KEY, b"bad\xff")
    assert store.reputation_states() == {}
    binary.close()
