"""The Cluster store (redis+cluster://) on a real three-master Cluster: the key layout it writes,
its routing through a resharding (MOVED, ASK, TRYAGAIN followed, counts exact), and a timed-out
debit that is never sent twice."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.cluster import RedisCluster
from redis.crc import key_slot

from mailflow.ratelimit.limits import parse_limit
from mailflow.store import StoreError, open_store
from mailflow.store.keys import CLUSTER, GLOBAL_SHARDS
from mailflow.store.redis import bucket_key
from mailflow.store import redis_cluster_client
from mailflow.store.redis_cluster import RedisClusterStore
from mailflow.store.redis_cluster_client import LazyCluster
from mailflow.suppression.entries import Entry
from mailflow.suppression.key_peek import compare_key_with_store
from mailflow.suppression.keys import KeyMismatch, check_store_key
from tests.helpers.redis_cluster import move_slot, slot_owner
from tests.helpers.servers import free_port

ACCOUNT = "shop.example"
LIMITS = (parse_limit("50/hour"), parse_limit("200/day"))
MOVES = 6


def _url(ports: list[int]) -> str:
    return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in ports[:1])


@pytest.fixture
def cluster_store(cluster_ports: list[int]) -> Iterator[RedisClusterStore]:
    store = open_store(_url(cluster_ports), timeout_ms=1000)
    assert isinstance(store, RedisClusterStore)
    yield store
    store.close()


def _entry(key: str) -> Entry:
    return Entry(key=key, reason="complaint", added_at=1, source="test", sealed="x")


def _keys_on(port: int) -> list[str]:
    with redis.Redis(port=port, socket_timeout=2, decode_responses=True) as node:
        return [str(key) for key in node.scan_iter(count=1000)]


def test_the_lists_and_the_held_flag_use_the_cluster_layout(cluster_store: RedisClusterStore,
                                                            cluster_ports: list[int]) -> None:
    keys = [f"k{i}" for i in range(600)]
    assert cluster_store.add_suppressions("global", [_entry(key) for key in keys]) == 600
    assert cluster_store.add_suppressions(f"account:{ACCOUNT}", [_entry("mine")]) == 1
    cluster_store.hold_account(ACCOUNT, "trap hits")
    shards = {key for port in cluster_ports for key in _keys_on(port) if key.startswith("mailflow:sup:global:")}
    assert len(shards) > GLOBAL_SHARDS * 0.9  # spread over the shards...
    for port in cluster_ports:  # ...and so over every master
        assert any(key.startswith("mailflow:sup:global:") for key in _keys_on(port)), port
    home = {key_slot(name.encode()) for name in (CLUSTER.account_list(ACCOUNT), CLUSTER.held_read(ACCOUNT)[1],
                                                 bucket_key(ACCOUNT, "hour"))}
    assert len(home) == 1  # the account's list, held flag and buckets: one slot
    lookup = cluster_store.find_suppressions(ACCOUNT, ["global", f"account:{ACCOUNT}"], ["k7", "mine", "k599", "no"],
                                             LIMITS)
    assert sorted((scope, entry.key) for scope, entry in lookup.matches) == [
        ("account:shop.example", "mine"), ("global", "k599"), ("global", "k7")]
    assert lookup.account_held is not None and lookup.account_held.endswith("trap hits")
    assert lookup.levels == (0.0, 0.0)
    assert cluster_store.suppression_scopes() == {"global": 600, f"account:{ACCOUNT}": 1}
    assert len(list(cluster_store.iter_suppressions("global"))) == 600
    assert cluster_store.remove_suppressions("global", ["k7", "k8", "nothing"]) == 2
    assert cluster_store.held_accounts().keys() == {ACCOUNT}
    assert cluster_store.release_account(ACCOUNT)
    assert cluster_store.find_suppressions(ACCOUNT, ["global"], ["k9"]).account_held is None


def test_the_replica_is_built_from_every_master(cluster_store: RedisClusterStore) -> None:
    cluster_store.add_suppressions("global", [_entry(f"g{i}") for i in range(300)])
    cluster_store.add_suppressions(f"account:{ACCOUNT}", [_entry("a1")])
    cluster_store.replica.refresh()
    assert cluster_store.replica.lookup(ACCOUNT, ["g1"]) is None  # listed: Redis is asked
    assert cluster_store.replica.lookup(ACCOUNT, ["a1"]) is None
    assert cluster_store.replica.lookup(ACCOUNT, ["unlisted"]) is not None  # answered here
    cluster_store.add_suppressions("global", [_entry("late")])
    cluster_store.replica.refresh()  # caught up from the change log ({sup}: one slot)
    assert cluster_store.replica.lookup(ACCOUNT, ["late"]) is None


def test_debits_and_lookups_stay_exact_while_the_accounts_slot_moves(cluster_store: RedisClusterStore,
                                                                     cluster_ports: list[int]) -> None:
    slot = key_slot(bucket_key(ACCOUNT, "hour").encode())
    home = slot_owner(cluster_ports, slot)
    elsewhere = next(key for key in (f"g{i}" for i in range(100))  # a global entry on another master
                     if slot_owner(cluster_ports, key_slot(CLUSTER.global_shard(key).encode())) != home)
    cluster_store.add_suppressions(f"account:{ACCOUNT}", [_entry("listed")])  # every lookup goes to Redis...
    cluster_store.add_suppressions("global", [_entry(elsewhere)])  # ...to two masters at once
    other = next(port for port in cluster_ports if port != home)
    done, moved = threading.Event(), []

    def reshard() -> None:  # back and forth, one key per MIGRATE (a debit's two keys split: TRYAGAIN)
        for i in range(MOVES):
            if done.is_set():
                return
            move_slot(cluster_ports, slot, other if i % 2 == 0 else home, batch=1,
                      migrating=lambda source, target: time.sleep(0.05))
            moved.append(i)

    mover = threading.Thread(target=reshard, daemon=True)
    allowed = sent = during = 0
    mover.start()
    try:
        deadline = time.monotonic() + 30
        while (sent < 300 or mover.is_alive()) and time.monotonic() < deadline:
            during += mover.is_alive()
            lookup = cluster_store.find_suppressions(ACCOUNT, ["global", f"account:{ACCOUNT}"],
                                                     ["listed", elsewhere], LIMITS[:1])
            assert sorted(entry.key for _, entry in lookup.matches) == sorted(["listed", elsewhere])
            allowed += cluster_store.debit(ACCOUNT, LIMITS, 1).allowed
            sent += 1
    finally:
        done.set()
        mover.join(timeout=30)
    assert len(moved) == MOVES
    assert allowed == LIMITS[0].capacity, (allowed, sent)
    redirected = cluster_store._routes.redirected
    assert redirected["MOVED"] >= 1 and redirected["ASK"] >= 1, redirected
    assert during >= 50, (during, sent)
    print(f"{sent} messages, {during} while the slot moved {MOVES} times; {allowed} allowed; {redirected}")


BUSY = """local t = redis.call('TIME') local start = t[1] * 1000000 + t[2]
repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] - start > tonumber(ARGV[1]) return 1"""


def _wait_busy(port: int) -> None:
    """Until the node no longer answers a PING within 50 ms (its event loop is in the script)."""
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        try:
            with redis.Redis(port=port, socket_timeout=0.05, retry=Retry(NoBackoff(), 0)) as probe:
                probe.ping()
        except (redis.TimeoutError, redis.ConnectionError):  # the reply (or the handshake's) is late
            return
        time.sleep(0.01)
    raise TimeoutError(f"127.0.0.1:{port} never got busy")


def test_a_timed_out_debit_is_not_sent_again(cluster_ports: list[int]) -> None:
    """The owner is busy (a long script blocks its event loop) past the debit's timeout: the
    debit fails, and runs once when the owner wakes up (it was read); a re-send would run twice."""
    store = open_store(_url(cluster_ports), timeout_ms=200)
    try:
        owner = slot_owner(cluster_ports, key_slot(bucket_key(ACCOUNT, "hour").encode()))
        store.debit(ACCOUNT, LIMITS[:1], 1)
        with redis.Redis(port=owner, socket_timeout=5) as node:
            busy = threading.Thread(target=node.eval, args=(BUSY, 0, 1_500_000), daemon=True)
            busy.start()
            _wait_busy(owner)
            with pytest.raises(StoreError, match="no answer within"):
                store.debit(ACCOUNT, LIMITS[:1], 1)
            busy.join(timeout=5)
        level = store.levels(ACCOUNT, LIMITS[:1])[0]
        assert 1.9 < level < 2.1, level  # two debits ran, not three
    finally:
        store.close()


def test_a_cluster_down_at_start_fails_calls_not_the_start() -> None:
    port = free_port()
    store = open_store(f"redis+cluster://127.0.0.1:{port}", timeout_ms=200)  # nothing listens there
    try:
        for call in (lambda: store.debit(ACCOUNT, LIMITS, 1), store.grants, lambda: store.add_sent({(1, ACCOUNT): 1}),
                     lambda: store.find_suppressions(ACCOUNT, ["global"], ["k"])):
            started = time.monotonic()
            with pytest.raises(StoreError, match="redis"):
                call()
            assert time.monotonic() - started < 1
    finally:
        store.close()


def test_the_cluster_is_reached_at_a_later_call(cluster_ports: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    tries: list[int] = []

    def connect() -> RedisCluster:
        tries.append(1)
        if len(tries) == 1:
            raise redis.ConnectionError("not yet")
        return RedisCluster(host="127.0.0.1", port=cluster_ports[0], decode_responses=True)

    monkeypatch.setattr(redis_cluster_client, "RETRY_EVERY", 0.1)
    lazy = LazyCluster(connect, str)
    with pytest.raises(StoreError, match="not yet"):
        lazy.ping()
    with pytest.raises(StoreError, match="not yet"):  # within RETRY_EVERY: not tried again
        lazy.ping()
    time.sleep(0.15)
    assert lazy.ping() and len(tries) == 2
    lazy.close()


def test_connections_killed_on_every_master_fail_no_call(cluster_store: RedisClusterStore,
                                                         cluster_ports: list[int]) -> None:
    keys = [f"g{i}" for i in range(40)]  # shards on every master: each lookup speaks to all three
    cluster_store.add_suppressions("global", [_entry(key) for key in keys])
    cluster_store.add_suppressions(f"account:{ACCOUNT}", [_entry("mine")])
    for round_ in range(3):
        lookup = cluster_store.find_suppressions(ACCOUNT, ["global", f"account:{ACCOUNT}"], [*keys, "mine"], LIMITS)
        assert len(lookup.matches) == 41
        assert cluster_store.debit(ACCOUNT, LIMITS, 1).allowed
        for port in cluster_ports:  # as a restart or an idle timeout would, between two messages
            with redis.Redis(port=port, socket_timeout=2) as node:
                node.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")


def _calls(port: int, command: str) -> int:
    with redis.Redis(port=port, socket_timeout=2) as node:
        return int(node.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))


def test_a_wait_goes_with_its_debit_when_the_slot_moved(cluster_ports: list[int]) -> None:
    store = open_store(_url(cluster_ports), timeout_ms=1000, wait=(1, 10))  # no replicas here: WAIT answers 0
    try:
        slot = key_slot(bucket_key(ACCOUNT, "hour").encode())
        store.debit(ACCOUNT, LIMITS[:1], 1)
        home = slot_owner(cluster_ports, slot)
        other = next(port for port in cluster_ports if port != home)
        move_slot(cluster_ports, slot, other)  # the store's table still names `home`
        for port in cluster_ports:
            with redis.Redis(port=port, socket_timeout=2) as node:
                node.config_resetstat()
        assert store.debit(ACCOUNT, LIMITS[:1], 1).allowed  # MOVED: the debit and its WAIT go to `other`
        assert isinstance(store, RedisClusterStore) and store._routes.redirected["MOVED"] == 1
        assert _calls(other, "evalsha") == 1 and _calls(other, "wait") == 1
        assert 1.9 < store.levels(ACCOUNT, LIMITS[:1])[0] < 2.1
    finally:
        store.close()


def test_check_config_reads_the_key_fingerprint_through_the_cluster(cluster_ports: list[int]) -> None:
    url = _url(cluster_ports)
    assert "has no fingerprint yet" in compare_key_with_store(url, b"k" * 32, 500)
    store = open_store(url)
    try:
        check_store_key(store, b"k" * 32, ())  # the first run adopts the key
    finally:
        store.close()
    assert "matches the store's fingerprint" in compare_key_with_store(url, b"k" * 32, 500)
    with pytest.raises(KeyMismatch):
        compare_key_with_store(url, b"o" * 32, 500)
    port = free_port()
    assert "did not answer" in compare_key_with_store(f"redis+cluster://127.0.0.1:{port}", b"k" * 32, 200)
    # One line naming the cause: a wrong user/password is not "did not answer (RedisClusterException)".
    refused = compare_key_with_store(f"redis+cluster://u:wrong@127.0.0.1:{cluster_ports[0]}", b"k" * 32, 500)
    assert refused.endswith("(wrong password (or user))") and "\n" not in refused, refused
    down_first = compare_key_with_store(f"redis+cluster://127.0.0.1:{port},127.0.0.1:{cluster_ports[0]}", b"k" * 32, 500)
    assert "matches the store's fingerprint" in down_first  # one node down: the next one answers
