"""The Cluster store through a master's death: three masters with a replica each, the account's
master killed (SIGKILL) under debits that WAIT for one replica. The store follows the promoted
replica with no restart, within a bound, and accepts no message past the limit."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import redis
from redis.crc import key_slot

from mailflow.ratelimit.limits import parse_limit
from mailflow.store import StoreError, open_store
from mailflow.store.redis import bucket_key
from tests.helpers.redis_cluster import redis_cluster, slot_owner

ACCOUNT = "shop.example"
LIMIT = parse_limit("40/day")  # refills 0.0005/s: the count is what was spent
BACK_WITHIN = 12.0  # seconds from the kill: node timeout 2 s, the replica's election, a slot-map refresh (5 s seen)


def test_the_store_follows_a_failover_and_keeps_the_limit(tmp_path: Path) -> None:
    with redis_cluster(tmp_path, masters=3, replicas=1) as ports:
        slot = key_slot(bucket_key(ACCOUNT, "day").encode())
        owner = slot_owner(ports, slot)
        # WAIT within the timeout: once no replica is left, each debit waits its 100 ms.
        store = open_store("redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in ports),
                           timeout_ms=1000, wait=(1, 100))
        allowed = failed = 0
        killed_at = back_at = 0.0
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and (not back_at or allowed < LIMIT.capacity):
                if allowed == LIMIT.capacity // 2 and not killed_at:
                    with redis.Redis(port=owner, socket_timeout=2) as node:
                        pid = int(node.info("server")["process_id"])
                    os.kill(pid, signal.SIGKILL)
                    killed_at = time.monotonic()
                try:
                    allowed += store.debit(ACCOUNT, (LIMIT,), 1).allowed
                except StoreError:
                    failed += 1
                    time.sleep(0.02)
                    continue
                if killed_at and not back_at:
                    back_at = time.monotonic()
            new_owner = slot_owner([port for port in ports if port != owner], slot)
            refused = store.debit(ACCOUNT, (LIMIT,), 1)
            level = store.levels(ACCOUNT, (LIMIT,))[0]
        finally:
            store.close()
    assert killed_at and back_at, (allowed, failed)
    assert new_owner != owner
    assert back_at - killed_at < BACK_WITHIN, back_at - killed_at
    # Every acknowledged debit reached the replica (WAIT 1) and so the promoted master: none lost,
    # so the limit holds across the failover (a debit cut off by the kill may also have counted).
    assert allowed == LIMIT.capacity and not refused.allowed
    assert LIMIT.capacity - 0.5 < level < LIMIT.capacity + 1.5, level
    print(f"back {back_at - killed_at:.1f} s after the kill; {failed} calls failed meanwhile; {allowed} allowed")
