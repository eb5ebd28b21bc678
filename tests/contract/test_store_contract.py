"""One contract, every store: the same tests run against SQLite and a real redis-server."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest
import redis

from mailflow.ratelimit.limits import parse_limit
from mailflow.store import DomainTaken, Store, StoreError, open_store
from mailflow.store.redis import bucket_key

HOURLY = (parse_limit("5/hour"),)


def test_a_new_account_has_full_buckets(store: Store) -> None:
    assert store.levels("new.example", HOURLY) == (0.0,)


def test_debit_exactly_capacity_then_refuse(store: Store) -> None:
    results = [store.debit("a.example", HOURLY, 1).allowed for _ in range(7)]
    assert results == [True] * 5 + [False] * 2
    assert store.levels("a.example", HOURLY)[0] == pytest.approx(5, abs=0.01)


def test_refusal_reports_levels_and_takes_nothing(store: Store) -> None:
    store.debit("a.example", HOURLY, 4)
    refused = store.debit("a.example", HOURLY, 2)
    assert not refused.allowed and refused.levels[0] == pytest.approx(4, abs=0.01)
    assert store.debit("a.example", HOURLY, 1).allowed


def test_several_limits_debit_all_or_nothing(store: Store) -> None:
    limits = (parse_limit("10/hour"), parse_limit("12/day"))
    assert store.debit("b.example", limits, 8).allowed
    assert not store.debit("b.example", limits, 3).allowed  # hour has 2 left
    levels = store.levels("b.example", limits)
    assert levels[0] == pytest.approx(8, abs=0.01) and levels[1] == pytest.approx(8, abs=0.01)
    assert store.debit("b.example", limits, 2).allowed
    assert not store.debit("b.example", (parse_limit("100/hour"), parse_limit("12/day")), 3).allowed  # day now binds


def test_accounts_are_independent(store: Store) -> None:
    assert store.debit("one.example", HOURLY, 5).allowed
    assert store.debit("two.example", HOURLY, 5).allowed
    assert not store.debit("one.example", HOURLY, 1).allowed


def test_changing_a_limit_keeps_the_spent_count(store: Store) -> None:
    assert store.debit("c.example", (parse_limit("600/hour"),), 500).allowed
    assert not store.debit("c.example", (parse_limit("400/hour"),), 1).allowed
    assert store.debit("c.example", (parse_limit("2000/hour"),), 1500).allowed
    assert not store.debit("c.example", (parse_limit("2000/hour"),), 1).allowed


def test_buckets_refill_with_time(store: Store) -> None:
    fast = (parse_limit("20/second"),)
    assert store.debit("d.example", fast, 20).allowed
    assert not store.debit("d.example", fast, 1).allowed
    time.sleep(0.3)  # refills about 6 tokens; the store's own clock, so a short real wait
    assert store.debit("d.example", fast, 4).allowed


def test_reset_refills(store: Store) -> None:
    store.debit("e.example", HOURLY, 5)
    store.reset("e.example")
    assert store.levels("e.example", HOURLY) == (0.0,)


def test_concurrent_debits_are_exact(store: Store) -> None:
    limits = (parse_limit("100/hour"),)
    accepted = []
    lock = threading.Lock()

    def sender() -> None:
        for _ in range(40):
            if store.debit("f.example", limits, 1).allowed:
                with lock:
                    accepted.append(1)

    threads = [threading.Thread(target=sender) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(accepted) == 100


def test_sqlite_is_shared_across_processes_on_one_host(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import multiprocessing

    url = f"sqlite://{tmp_path}/shared.db"
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        results = pool.starmap(_debit_many, [(url, 30)] * 4)
    assert sum(results) == 50


def _debit_many(url: str, n: int) -> int:
    store = open_store(url, timeout_ms=5000)
    return sum(store.debit("g.example", (parse_limit("50/hour"),), 1).allowed for _ in range(n))


def test_redis_keys_are_readable_cluster_safe_and_expire(redis_url: str) -> None:
    store = open_store(redis_url)
    limits = (parse_limit("600/hour"), parse_limit("5000/day"))
    store.debit("shop.example", limits, 60)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    keys = sorted(client.keys("mailflow:*"))
    assert keys == [bucket_key("shop.example", "day"), bucket_key("shop.example", "hour")]
    assert keys[1] == "mailflow:rl:{shop.example}:hour"
    assert float(client.hget(keys[1], "level")) == 60
    # Full again after 60 tokens at 600/hour = 360 s (plus a second of slack).
    assert 355_000 <= client.pttl(keys[1]) <= 361_000
    store.close()


def test_redis_time_not_client_time_is_used(redis_url: str) -> None:
    """The script reads Redis TIME: the `ts` field matches the server clock."""
    store = open_store(redis_url)
    store.debit("t.example", HOURLY, 1)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    server_now = float(".".join(map(str, client.time())))
    assert abs(float(client.hget(bucket_key("t.example", "hour"), "ts")) - server_now) < 5
    store.close()


def test_dead_redis_fails_fast_with_store_error() -> None:
    store = open_store("redis://127.0.0.1:9/0", timeout_ms=250)
    started = time.monotonic()
    with pytest.raises(StoreError):
        store.debit("x.example", HOURLY, 1)
    assert time.monotonic() - started < 2
    store.close()


def test_a_silent_redis_times_out_with_a_clear_error() -> None:
    """The hot path keeps its timeout in the kernel (SO_RCVTIMEO): it must still fire, and say so."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    store = open_store(f"redis://127.0.0.1:{silent.getsockname()[1]}/0", timeout_ms=250)
    try:
        for _ in range(2):  # a fresh connection each time: the timed-out one is discarded
            started = time.monotonic()
            with pytest.raises(StoreError, match="no answer within 250 ms"):
                store.debit("x.example", HOURLY, 1)
            assert time.monotonic() - started < 1
    finally:
        store.close()
        silent.close()


def test_unwritable_sqlite_path_is_a_store_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "file").write_text("")
    with pytest.raises(StoreError):
        open_store(f"sqlite://{tmp_path}/file/sub/state.db")


def test_domains_add_list_remove(store: Store) -> None:
    assert store.domains() == {}
    store.add_domain("shop.example", "shop-news.example")
    store.add_domain("shop.example", "shop-news.example")  # idempotent
    store.add_domain("other.example", "other-brand.example")
    assert store.domains() == {"shop-news.example": "shop.example", "other-brand.example": "other.example"}
    with pytest.raises(DomainTaken, match="belongs to account shop.example"):
        store.add_domain("other.example", "shop-news.example")
    assert not store.remove_domain("other.example", "shop-news.example")
    assert store.remove_domain("shop.example", "shop-news.example")
    assert store.domains() == {"other-brand.example": "other.example"}


def _entries(matcher_texts: list[str], reason: str = "unsubscribe") -> list:  # type: ignore[type-arg]
    from tests.unit.test_suppression import MATCHER

    return [MATCHER.make_entry(text, reason, "test", 1_700_000_000) for text in matcher_texts]


def test_suppression_lists_per_scope_in_one_lookup(store: Store) -> None:
    from tests.unit.test_suppression import MATCHER

    assert store.add_suppressions("global", _entries(["@blocked.example", "trap@t.example"], "complaint")) == 2
    assert store.add_suppressions("account:shop.example", _entries(["optout@dest.example"])) == 1
    lookup = store.find_suppressions("shop.example", ["global", "account:shop.example"],
                                     MATCHER.recipient_keys("OptOut@dest.example"))
    assert [(scope, entry.reason) for scope, entry in lookup.matches] == [("account:shop.example", "unsubscribe")]
    assert lookup.account_held is None
    other = store.find_suppressions("other.example", ["global", "account:other.example"],
                                    MATCHER.recipient_keys("optout@dest.example"))
    assert other.matches == ()
    blocked = store.find_suppressions("shop.example", ["global"], MATCHER.recipient_keys("x@mx.blocked.example"))
    assert [entry.reason for _, entry in blocked.matches] == ["complaint"]


def test_importing_again_keeps_what_is_stored(store: Store) -> None:
    first = _entries(["a@x.example"], "complaint")
    assert store.add_suppressions("global", first) == 1
    again = _entries(["a@x.example", "b@x.example"], "unsubscribe")
    assert store.add_suppressions("global", again) == 1
    reasons = sorted(entry.reason for entry in store.iter_suppressions("global"))
    assert reasons == ["complaint", "unsubscribe"]  # a@ kept its original reason
    assert store.remove_suppressions("global", [first[0].key]) == 1
    assert len(list(store.iter_suppressions("global"))) == 1


def test_a_dump_of_the_store_does_not_show_addresses(store: Store, store_url: str) -> None:
    store.add_suppressions("global", _entries(["secret.person@dest.example"]))
    if store_url.startswith("redis"):
        client = store.client  # type: ignore[attr-defined]  # one node's, or the Cluster's (every master)
        dump = "".join(k + v for key in client.scan_iter(match="mailflow:sup:*")
                       for k, v in client.hgetall(key).items()).encode()
    else:
        db = Path(store_url[len("sqlite://"):])
        dump = b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))  # the file and its WAL
    assert b"secret.person" not in dump and b"dest.example" not in dump


def test_trap_hits_and_holds(store: Store) -> None:
    assert [store.record_trap_hit("t.example") for _ in range(3)] == [1, 2, 3]
    assert store.record_trap_hit("other.example") == 1
    store.hold_account("t.example", "3 spam-trap hits in 24 hours")
    assert store.find_suppressions("t.example", ["global"], ["k"]).account_held.endswith("3 spam-trap hits in 24 hours")
    assert list(store.held_accounts()) == ["t.example"]
    assert store.release_account("t.example") and not store.release_account("t.example")
    assert store.record_trap_hit("t.example") == 1  # release forgets the hits


def test_state_swap_is_compare_and_set(store: Store) -> None:
    assert store.state_get("rbl:x") is None
    assert store.state_swap("rbl:x", None, "listed:1:0")
    assert not store.state_swap("rbl:x", None, "listed:2:0")  # someone else got there first
    assert store.state_swap("rbl:x", "listed:1:0", "clean") and store.state_get("rbl:x") == "clean"


def test_sent_counts_rank_the_senders(store: Store) -> None:
    from mailflow.sent import SentCounter

    hour = int(time.time()) // 3600
    counter = SentCounter(store, flush_every=3600, clock=lambda: hour * 3600.0 + 5)
    for account, n in [("a.example", 5), ("b.example", 50), ("a.example", 10), ("c.example", 1)]:
        counter.add(account, n)
    assert store.top_senders([hour], 10) == []  # not flushed yet
    counter.flush()
    store.add_sent({(hour - 1, "c.example"): 100})
    assert store.top_senders([hour - 1, hour], 2) == [("c.example", 101), ("b.example", 50)]


def test_suppression_lookup_peeks_the_buckets_in_the_same_trip(store: Store, store_url: str) -> None:
    limits = (parse_limit("10/hour"),)
    store.debit("p.example", limits, 4)
    if store_url.startswith("redis"):
        store.client.script_flush()  # type: ignore[attr-defined]  # as after a Redis restart (every master)
    lookup = store.find_suppressions("p.example", ["global"], ["k"], peek=limits)
    assert lookup.levels is not None and lookup.levels[0] == pytest.approx(4, abs=0.01)
    assert store.find_suppressions("p.example", ["global"], ["k"]).levels is None


def test_suppression_scopes_lists_every_list_with_its_size(store: Store) -> None:
    assert store.suppression_scopes() == {}
    store.add_suppressions("global", _entries(["a@x.example", "b@x.example", "@blocked.example"]))
    store.add_suppressions("account:shop.example", _entries(["optout@dest.example"]))
    store.add_suppressions("account:zeta*[x]", _entries(["c@x.example"]))  # glob characters are a name, not a pattern
    store.state_swap("suppression:key-fingerprint", None, "f")  # state is not a list
    store.hold_account("held.example", "why")
    assert store.suppression_scopes() == {"global": 3, "account:shop.example": 1, "account:zeta*[x]": 1}
    store.remove_suppressions("account:shop.example", [_entries(["optout@dest.example"])[0].key])
    assert store.suppression_scopes() == {"global": 3, "account:zeta*[x]": 1}  # an emptied list is gone
