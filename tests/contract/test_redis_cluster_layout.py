"""The Cluster key layout (store/keys.py) on a real three-master Cluster: every key one message
touches is in the account's slot and served as one pipeline by its master; the global list is
spread over every master (single-node names: tests/unit/test_key_layout). Measures a RCPT lookup to one master
against one sent to two masters at once (account slot + a global shard)."""

from __future__ import annotations

import statistics
import time
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from mailflow.ratelimit.limits import parse_limit
from mailflow.store import open_store
from mailflow.store.base import StoreError
from mailflow.store.keys import CLUSTER, GLOBAL_SHARDS
from mailflow.store.redis import RedisStore, _lua, limit_key, trap_key
from mailflow.store.redis_claims import claim_key
from mailflow.store.redis_counts import counts_key
from mailflow.store.redis_held import held_mail_key
from tests.helpers.redis_cluster import slot_owner

LIMITS = (parse_limit("50/hour"), parse_limit("500/day sliding"))


def _slot(key: str) -> int:
    return key_slot(key.encode())


def test_one_message_touches_one_slot_served_as_one_pipeline(cluster_ports: list[int]) -> None:
    for n in range(20):
        account = f"acct{n}.example"
        per_message = [CLUSTER.account_list(account), CLUSTER.held_read(account)[1], trap_key(account),
                       counts_key(account, 1), claim_key(account, "x"), held_mail_key(account),
                       *(limit_key(account, limit) for limit in LIMITS)]
        assert len({_slot(key) for key in per_message}) == 1, per_message
        owner = slot_owner(cluster_ports, _slot(per_message[0]))
        with redis.Redis(port=owner, decode_responses=True) as node:
            script = node.register_script(_lua("debit.lua"))
            node.hset(CLUSTER.account_list(account), "k1", "v")
            pipe = node.pipeline(transaction=False)
            pipe.hmget(CLUSTER.account_list(account), ["k1", "k2"])
            pipe.execute_command(*CLUSTER.held_read(account))
            keys, args = RedisStore._debit_call(account, LIMITS, 1, commit=True)
            script(keys=keys, args=args, client=pipe)
            found, held, debit = pipe.execute()  # a MOVED or CROSSSLOT would raise here
        assert found == ["v", None] and held is None and int(debit[0]) == 1


def test_the_global_list_is_spread_over_every_master(cluster_ports: list[int]) -> None:
    shards = CLUSTER.global_shards()
    assert len(set(shards)) == GLOBAL_SHARDS
    owners = [slot_owner(cluster_ports, _slot(shard)) for shard in shards]
    share = max(owners.count(port) for port in cluster_ports) / GLOBAL_SHARDS
    assert set(owners) == set(cluster_ports) and share < 0.45, share
    entries = [f"entry-{n}" for n in range(10_000)]
    sizes = [len(keys) for keys in CLUSTER.global_lookup(entries).values()]
    assert len(sizes) == GLOBAL_SHARDS and max(sizes) < 2 * len(entries) / GLOBAL_SHARDS


def _exchange(conns: list[Any], commands: list[list[list[Any]]]) -> None:
    """Send every connection its pipeline, then read the replies: the nodes work at once."""
    for conn, cmds in zip(conns, commands):
        conn.send_packed_command(conn.pack_commands(cmds))
    for conn, cmds in zip(conns, commands):
        for _ in cmds:
            conn.read_response()


def test_a_lookup_of_both_lists_costs_one_round_trip_time(cluster_ports: list[int]) -> None:
    account, entry = "shop.example", "entry-1"
    home = slot_owner(cluster_ports, _slot(CLUSTER.account_list(account)))
    shard = next(s for s in CLUSTER.global_shards() if slot_owner(cluster_ports, _slot(s)) != home)
    other = slot_owner(cluster_ports, _slot(shard))
    mine = [["HMGET", CLUSTER.account_list(account), entry], CLUSTER.held_read(account)]
    connection: Any = redis.Connection  # untyped in redis-py
    conns: list[Any] = [connection(port=home), connection(port=other)]
    theirs = [["HMGET", shard, entry]]
    ways: dict[str, list[tuple[list[Any], list[list[list[Any]]]]]] = {
        "one master": [([conns[0]], [mine])],
        "two masters at once": [(conns, [mine, theirs])],
        "two masters in a row": [([conns[0]], [mine]), ([conns[1]], [theirs])]}
    timings: dict[str, list[float]] = {name: [] for name in ways}
    try:
        for _ in range(500):
            for name, steps in ways.items():
                began = time.perf_counter()
                for use, cmds in steps:
                    _exchange(use, cmds)
                timings[name].append(time.perf_counter() - began)
    finally:
        for conn in conns:
            conn.disconnect()
    medians = {name: statistics.median(times) * 1e6 for name, times in timings.items()}
    print(", ".join(f"{name}: median {us:.0f} µs" for name, us in medians.items()))
    # Loose (a shared machine): the figures are the point; at once must not cost two in a row twice over.
    assert medians["two masters at once"] < 2 * medians["two masters in a row"]


def test_a_plain_url_at_one_cluster_node_fails_naming_moved(cluster_ports: list[int]) -> None:
    account = "shop.example"
    owner = slot_owner(cluster_ports, _slot(limit_key(account, LIMITS[0])))
    elsewhere = next(p for p in cluster_ports if p != owner)
    store = open_store(f"redis://127.0.0.1:{elsewhere}/0")
    try:
        with pytest.raises(StoreError, match=rf"^redis: MOVED: slot \d+ is served by 127.0.0.1:{owner} \(a Redis Cluster"):
            store.debit(account, LIMITS, 1)
    finally:
        store.close()
