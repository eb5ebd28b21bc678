"""mailflow's debit script on a real three-master Cluster while the account's slot moves between
masters (ASK during each migration, MOVED after): redis-py's RedisCluster re-sends a debit Redis
refused with ASK/MOVED (it did not run), so the count stays exact. The Cluster store routes its
hot path itself: test_redis_cluster_store.py and tests/milter/test_cluster_milter.py."""

from __future__ import annotations

import threading
import time

import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import AskError, MovedError

from mailflow.ratelimit.limits import parse_limit
from mailflow.store.redis import RedisStore, _lua
from tests.helpers.redis_cluster import move_slot, slot_owner

LIMIT = parse_limit("50/hour")
MESSAGES = 400  # at least; and on until every move is done
MAX_MESSAGES = 100_000
MOVES = 6


def test_debits_stay_exact_while_the_accounts_slot_moves(cluster_ports: list[int]) -> None:
    client = RedisCluster(host="127.0.0.1", port=cluster_ports[0], decode_responses=True, socket_timeout=2)
    script = client.register_script(_lua("debit.lua"))
    keys, args = RedisStore._debit_call("shop.example", (LIMIT,), 1, commit=True)
    slot = key_slot(keys[0].encode())
    home = slot_owner(cluster_ports, slot)
    moved: list[int] = []
    asked: list[str] = []

    def held_in_migration(source: int, target: int) -> None:
        """The key is on the target, the slot still the source's: clients get ASK for a while."""
        with redis.Redis(port=source, socket_timeout=2) as old:
            try:
                old.hget(keys[0], "level")
            except AskError as exc:  # MovedError is an AskError: only the ASK itself counts
                if not isinstance(exc, MovedError):
                    asked.append(str(exc))
        time.sleep(0.05)
    done = threading.Event()

    def reshard() -> None:  # back and forth between two masters while the debits run
        other = next(p for p in cluster_ports if p != home)
        for i in range(MOVES):
            if done.is_set():
                return
            target = other if i % 2 == 0 else home
            move_slot(cluster_ports, slot, target, migrating=held_in_migration)
            moved.append(target)
            time.sleep(0.01)

    mover = threading.Thread(target=reshard, daemon=True)
    allowed = sent = during = 0
    try:
        mover.start()
        deadline = time.monotonic() + 30
        while sent < MESSAGES or (mover.is_alive() and sent < MAX_MESSAGES and time.monotonic() < deadline):
            during += mover.is_alive()
            allowed += int(script(keys=keys, args=args)[0])
            sent += 1
    finally:
        done.set()
        mover.join(timeout=30)
        client.close()
    assert len(moved) == MOVES, moved
    assert len(asked) == MOVES, asked  # each move had its ASK window under the debits
    assert allowed == LIMIT.capacity, (allowed, sent)
    print(f"{sent} debits, {during} while the slot moved {MOVES} times; {allowed} allowed")
    assert during >= 100, (during, sent)  # debits ran through the moves, not only before them
