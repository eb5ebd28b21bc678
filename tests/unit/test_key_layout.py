"""The single-node key layout is today's, name for name: an upgrade moves no suppression record."""

from __future__ import annotations

from mailflow.store import redis as store_redis
from mailflow.store.keys import CLUSTER, SINGLE


def test_single_node_names_are_todays() -> None:
    assert SINGLE.account_list("shop.example") == store_redis.suppression_key("account:shop.example")
    assert SINGLE.global_shards() == [store_redis.suppression_key("global")] == [SINGLE.global_shard("k")]
    assert SINGLE.held_read("shop.example") == ["HGET", store_redis.HELD_KEY, "shop.example"]
    assert SINGLE.global_lookup(["a", "b"]) == {store_redis.suppression_key("global"): ["a", "b"]}


def test_cluster_names_carry_the_accounts_hash_tag() -> None:
    assert CLUSTER.account_list("shop.example") == "mailflow:sup:{shop.example}:account"
    assert CLUSTER.held_read("shop.example") == ["GET", "mailflow:{shop.example}:held"]
    assert CLUSTER.global_shard("k") == CLUSTER.global_shard("k") in CLUSTER.global_shards()
