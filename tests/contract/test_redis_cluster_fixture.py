"""The three-master loopback Cluster fixture: all slots served, keys routed by slot, and one
slot moved between masters under a client (ASK during the move, MOVED after) with no key lost."""

from __future__ import annotations

import pytest
import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import MovedError

from tests.helpers.redis_cluster import move_slot, slot_owner


def test_cluster_serves_every_slot_from_three_masters(cluster_ports: list[int]) -> None:
    assert len(cluster_ports) == 3
    with redis.Redis(port=cluster_ports[0], decode_responses=True) as c:
        info = c.execute_command("CLUSTER", "INFO")
    assert "cluster_state:ok" in str(info) and "cluster_slots_assigned:16384" in str(info)
    owners = {slot_owner(cluster_ports, slot) for slot in (0, 8000, 16383)}
    assert owners == set(cluster_ports)


def test_a_moved_slot_keeps_its_keys_and_the_client_follows(cluster_ports: list[int]) -> None:
    client = RedisCluster(host="127.0.0.1", port=cluster_ports[0], decode_responses=True)
    try:
        slot = key_slot(b"mailflow:rl:{acct}:hour")
        for i in range(250):
            client.set(f"mailflow:rl:{{acct}}:k{i}", i)
        source = slot_owner(cluster_ports, slot)
        target = next(p for p in cluster_ports if p != source)
        move_slot(cluster_ports, slot, target)
        assert slot_owner(cluster_ports, slot) == target
        with redis.Redis(port=source) as old, pytest.raises(MovedError, match=f"^{slot} 127.0.0.1:{target}$"):
            old.get("mailflow:rl:{acct}:k0")
        assert [client.get(f"mailflow:rl:{{acct}}:k{i}") for i in range(250)] == [str(i) for i in range(250)]
        move_slot(cluster_ports, slot, source)
        assert client.get("mailflow:rl:{acct}:k249") == "249"
    finally:
        client.close()
