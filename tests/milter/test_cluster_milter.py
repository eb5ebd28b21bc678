"""The milter-protocol suite's core flows through a real `mailflow run` on a three-master Redis
Cluster (redis+cluster://): limits exact (also across two milters), both suppression lists, held
mail and held accounts, grants (also to a fleet), domains; and a resharding under load: the
account's slot moves between masters while messages flow, every message is decided and exactly
the limit is accepted."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from redis.crc import key_slot

from mailflow.store import open_store
from mailflow.store.keys import CLUSTER
from mailflow.store.redis import bucket_key
from tests.helpers.redis_cluster import move_slot, slot_owner
from tests.helpers.servers import MilterProcess
from tests.milter.test_fleet_exactness import (  # noqa: F401  (collected here with the Cluster's URLs)
    test_exactly_n_recipients_pass_across_two_milters)
from tests.milter.test_grants_milter import (  # noqa: F401  (the same)
    test_a_grant_applies_from_the_first_message_and_expires_by_itself, test_one_grant_reaches_every_milter_of_a_fleet)
from tests.milter.test_milter_protocol import (  # noqa: F401  (the same)
    AUTH, config, milter, run_cli, send, test_a_rate_limit_refusal_at_rcpt_is_confirmed_by_the_store,
    test_a_suppression_reaches_a_running_milter_within_refresh_ms,
    test_domains_added_to_the_store_reach_a_running_milter,
    test_local_mail_to_a_suppressed_recipient_drops_that_recipient, test_local_over_limit_hold_quarantines,
    test_message_unit_and_rejected_messages_cost_nothing, test_the_recipient_over_the_limit_gets_451)

MOVES = 6


@pytest.fixture
def store_url(cluster_ports: list[int]) -> str:
    """The Cluster, named by one node (the others are learned from it)."""
    return f"redis+cluster://127.0.0.1:{cluster_ports[0]}"


@pytest.fixture
def redis_url(store_url: str) -> str:
    """The fleet tests' shared Redis: the Cluster too."""
    return store_url


def test_a_held_account_is_held_at_every_message(start_milter: Callable[..., MilterProcess], store_url: str) -> None:
    milter = start_milter(config(store_url, store={"refresh_ms": 100}))
    assert send(milter, "bob@shop.example", ["a@x.example"], AUTH) == (["continue"], "continue")
    run_cli(milter, "account", "hold", "shop.example")
    time.sleep(0.3)  # the replica's refresh (the held index) or the lookup (the account's flag)
    send(milter, "bob@shop.example", ["b@x.example"], AUTH)
    assert milter.decisions()[-1]["action"] == "hold"
    store = open_store(store_url)  # `account release` would also run postqueue, not here
    try:
        assert store.release_account("shop.example")
    finally:
        store.close()
    time.sleep(0.3)
    send(milter, "bob@shop.example", ["c@x.example"], AUTH)
    assert milter.decisions()[-1]["action"] == "continue"


def test_a_resharding_under_load_loses_no_decision(start_milter: Callable[..., MilterProcess], store_url: str,
                                                   cluster_ports: list[int]) -> None:
    milter = start_milter(config(store_url, store={"timeout_ms": 1000}, ratelimit={"limits": ["50/hour"]},
                                 suppression={"hash_key_env": "MAILFLOW_SUPPRESSION_KEY"}))
    run_cli(milter, "suppress", "add", "--account", "shop.example", "optout@dest.example")  # lookups reach Redis
    slot = key_slot(bucket_key("shop.example", "hour").encode())
    assert key_slot(CLUSTER.account_list("shop.example").encode()) == slot
    home = slot_owner(cluster_ports, slot)
    other = next(port for port in cluster_ports if port != home)
    done, moved = threading.Event(), []

    def reshard() -> None:
        for i in range(MOVES):
            if done.is_set():
                return
            move_slot(cluster_ports, slot, other if i % 2 == 0 else home, migrating=lambda s, t: time.sleep(0.1))
            moved.append(i)
            time.sleep(0.05)

    mover = threading.Thread(target=reshard, daemon=True)
    accepted, refused, sent, during = 0, [], 0, 0
    mover.start()
    try:
        deadline = time.monotonic() + 60
        while (sent < 100 or mover.is_alive()) and time.monotonic() < deadline:
            during += mover.is_alive()
            rcpt, eom = send(milter, "bob@shop.example", ["a@x.example", "optout@dest.example"], AUTH)
            assert rcpt[1].startswith("550 5.7.1"), rcpt  # the account's list, read from its master
            reply = rcpt[0] if rcpt[0] != "continue" else eom
            if reply == "continue":
                accepted += 1
            else:
                refused.append(reply)
            sent += 1
    finally:
        done.set()
        mover.join(timeout=30)
    assert len(moved) == MOVES
    assert accepted == 50, (accepted, sent)
    # Every refusal is the limit's (never a store error's tempfail): no decision was lost.
    assert all(reply.startswith("451 4.7.1 Rate limit 50/hour") for reply in refused), set(refused)
    assert during >= 20, (during, sent)
    assert "store=local" not in milter.log() and "MOVED" not in milter.log()
    print(f"{sent} messages, {during} while the slot moved {MOVES} times; {accepted} accepted")
