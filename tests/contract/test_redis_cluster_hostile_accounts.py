"""Account names a customer chooses (a SASL login, a sender domain) against the Cluster's hash
tags: a `}` or an empty name must neither spread one message's keys over several slots (every
debit a CROSSSLOT error, so on_error decides for that customer) nor share another account's tag."""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from mailflow.ratelimit.limits import parse_limit
from mailflow.store import open_store
from mailflow.store.keys import CLUSTER, tag
from mailflow.store.redis import limit_key, trap_key
from mailflow.store.redis_claims import claim_key
from mailflow.store.redis_cluster import RedisClusterStore
from mailflow.store.redis_counts import counts_key
from mailflow.store.redis_held import held_mail_key
from mailflow.suppression.entries import Entry

LIMITS = (parse_limit("50/hour"), parse_limit("500/day sliding"))
HOSTILE = ["}x", "", "}", "a}b", "a%7Db", "%", "%25", "{", "{a}", "a{b}c", "x}{y}"]


def test_no_two_accounts_share_a_tag_and_plain_names_keep_theirs() -> None:
    assert len({tag(name) for name in [*HOSTILE, "a", "x"]}) == len(HOSTILE) + 2
    assert limit_key("shop.example", LIMITS[0]) == "mailflow:rl:{shop.example}:hour"  # no key of today moves


@pytest.mark.parametrize("account", HOSTILE)
def test_a_hostile_name_keeps_one_message_in_one_slot(cluster_ports: list[int], account: str) -> None:
    keys = [CLUSTER.account_list(account), CLUSTER.held_read(account)[1], trap_key(account), counts_key(account, 1),
            claim_key(account, "x"), held_mail_key(account), *(limit_key(account, limit) for limit in LIMITS)]
    assert len({key_slot(key.encode()) for key in keys}) == 1, keys
    store = open_store(f"redis+cluster://127.0.0.1:{cluster_ports[0]}/0", timeout_ms=1000)
    assert isinstance(store, RedisClusterStore)
    try:
        assert [round(store.debit(account, LIMITS, 1).levels[1]) for _ in range(2)] == [1, 2]
        store.add_suppressions(f"account:{account}", [Entry("rcpt@example.org", "complaint", 1, "test", "x")])
        assert store.find_suppressions(account, [f"account:{account}"], ["rcpt@example.org"], LIMITS).matches
        assert store.suppression_scopes() == {f"account:{account}": 1}
    finally:
        store.close()
