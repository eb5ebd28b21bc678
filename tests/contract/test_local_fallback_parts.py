"""The local fallback's parts, each against a real redis-server: the forced debit that
reconciles (and debit.lua keeping its level above the capacity until it drains), the fleet
heartbeat, the division of limits, the SQLite store (nothing to fall back from), and
check-config's one-line answers for bad `fleet_size` / `on_error` / `fallback_path`."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailflow.config import load_config
from mailflow.engine import Engine
from mailflow.fallback.fleet import FLEET_KEY, beat
from mailflow.fallback.local import LocalFallback, divided, scaled
from mailflow.fallback.reconcile import force_debit
from mailflow.ratelimit.limits import Limit, parse_limit
from mailflow.store.redis import RedisStore, bucket_key
from mailflow.store.redis_cluster import RedisClusterStore
from mailflow.store.sqlite import SqliteStore
from tests.helpers.servers import write_config

REPO = Path(__file__).resolve().parents[2]
HOUR = parse_limit("10/hour")
WINDOW = parse_limit("10/hour sliding")


@pytest.fixture(params=["redis", "cluster"])
def store(request: pytest.FixtureRequest) -> Iterator[RedisStore]:
    """One Redis, or the three-master Cluster (its store is a RedisStore: the fallback runs on both)."""
    if request.param == "cluster":
        ports: list[int] = request.getfixturevalue("cluster_ports")
        store: RedisStore = RedisClusterStore(f"redis+cluster://127.0.0.1:{ports[0]}")
    else:
        store = RedisStore(request.getfixturevalue("redis_url"))
    store.client.flushdb()
    yield store
    store.close()


def test_a_forced_debit_stands_above_the_capacity_until_it_drains(store: RedisStore) -> None:
    assert store.debit("shop.example", [HOUR, WINDOW], 4).allowed
    force_debit(store, "shop.example", [HOUR, WINDOW], 12)  # the outage's spend: no room asked
    levels = store.levels("shop.example", [HOUR, WINDOW])
    assert levels[0] == pytest.approx(16, abs=0.1) and levels[1] == 16
    refused = store.debit("shop.example", [HOUR, WINDOW], 1)
    assert not refused.allowed and refused.levels[0] == pytest.approx(16, abs=0.1)  # not clamped to 10
    # Drained below the capacity (an hour's refill done by hand), a debit writes a normal bucket again.
    store.client.hset(bucket_key("shop.example", "hour"), mapping={"level": "2", "over": "2"})
    assert store.debit("shop.example", [HOUR], 1).allowed
    assert store.client.hget(bucket_key("shop.example", "hour"), "over") is None
    force_debit(store, "new.example", [HOUR], 3)  # no bucket yet: made, with its expiry
    assert store.levels("new.example", [HOUR])[0] == pytest.approx(3, abs=0.1)
    assert 0 < store.client.pttl(bucket_key("new.example", "hour")) <= 3 * 360_000 + 1000


def test_the_heartbeat_counts_live_hosts_once_each(store: RedisStore) -> None:
    now = time.time()
    assert beat(store, "a:/x.db", now, 15) == 1
    assert beat(store, "b:/x.db", now, 15) == 2
    assert beat(store, "a:/x.db", now + 1, 15) == 2  # a host's workers share one field
    assert beat(store, "a:/x.db", now + 20, 15) == 1  # b has not beaten for 20 s: gone
    assert beat(store, "a:/x.db", now + 200, 15) == 1 and store.client.hkeys(FLEET_KEY) == ["a:/x.db"]


def test_shares_and_their_levels() -> None:
    limits = [parse_limit("25/hour"), parse_limit("3/minute sliding")]
    shares = divided(limits, 4)
    assert [(s.count, s.capacity, s.kind) for s in shares] == [(6, 6, "bucket"), (1, 1, "sliding")]
    assert divided(limits, 1) == tuple(limits)
    assert scaled([3, 0], limits, shares) == (12.5, 0)
    # Refused by a share (5.5 + 1 > 6) though the whole limit would read 22.9 + 1 <= 25: stays refused.
    assert scaled([5.5, 0], limits, shares, refused=1)[0] > 24
    # Review finding: the reply said "try again in 1 seconds" whatever the share's wait. A share
    # of 6/hour half a token short refills in 5 minutes; a message of 20 never fits a share of 6.
    from mailflow.ratelimit.bucket import first_shortfall
    hour = [parse_limit("25/hour")]
    share = divided(hour, 4)
    short = first_shortfall(scaled([5.5], hour, share, refused=1), hour, 1)
    assert short is not None and short.retry_after == pytest.approx(300, abs=2)
    never = first_shortfall(scaled([0.0], hour, share, refused=20), hour, 20)
    assert never is not None and never.retry_after >= 14 * 600


def test_a_restarted_milter_reads_the_learned_fleet_size_and_the_spend(store: RedisStore, tmp_path: Path) -> None:
    path = str(tmp_path / "fallback.db")
    first = LocalFallback(store, path, 5, lambda account: [HOUR], probe_every=0.05)  # no heartbeat racing
    first._learn(3)
    first.enter("test")
    store.client.flushdb()
    assert first.debit("shop.example", [HOUR], 1).allowed
    first.active = True
    first.stop()  # its probe never got to reconcile
    dead = RedisStore("redis://127.0.0.1:1/0", timeout_ms=100)  # restarted during the outage
    during = LocalFallback(dead, path, 0, lambda account: [HOUR], probe_every=0.05)
    assert during.fleet_size == 3  # as learned before it
    during.stop()
    dead.close()
    again = LocalFallback(store, path, 0, lambda account: [HOUR], probe_every=0.05)  # the store back
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not store.client.exists(bucket_key("shop.example", "hour")):
        time.sleep(0.05)
    assert store.levels("shop.example", [HOUR])[0] == pytest.approx(1, abs=0.1)
    again.stop()


def test_on_sqlite_local_means_tempfail(tmp_path: Path) -> None:
    config = load_config(str(write_config(tmp_path / "m.toml", {
        "store": {"url": f"sqlite://{tmp_path}/s.db"}, "milter": {"on_error": "local"}})))
    store = SqliteStore(str(tmp_path / "s.db"))
    engine = Engine(config, store)
    assert engine.fallback is None and engine.error_decision("store_error").reply is not None
    engine.close()
    store.close()


@pytest.mark.parametrize("store_toml, needle", [
    ('fleet_size = -1', "store.fleet_size: must be at least 0"),
    ('fleet_size = "two"', "store.fleet_size"),
    ('fallback_path = "/nonexistent/dir/fallback.db"', "store.fallback_path"),
])
def test_check_config_refuses_a_bad_fallback_in_one_line(tmp_path: Path, store_toml: str, needle: str) -> None:
    config = tmp_path / "m.toml"
    config.write_text(f'[milter]\non_error = "local"\n[store]\nurl = "redis://127.0.0.1:1/0"\n{store_toml}\n')
    result = subprocess.run([sys.executable, "-m", "mailflow", "check-config", "-c", str(config)],
                            capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 2 and needle in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_health_and_the_gauge_while_local(tmp_path: Path) -> None:
    """Redis unreachable: critical with tempfail; with the fallback enforcing, a warning naming it."""
    from prometheus_client import CollectorRegistry, generate_latest

    from mailflow.metrics.health import Health
    from mailflow.metrics.worker import MilterCollector
    from mailflow.store.health import StoreHealth

    dead = RedisStore("redis://127.0.0.1:1/0", timeout_ms=100)
    store_health = StoreHealth("local")
    health = Health(dead, store_health, 100, None, 1)
    assert health.report()["status"] == "critical"
    fallback = LocalFallback(dead, str(tmp_path / "fallback.db"), 2, lambda account: [HOUR], health=store_health)
    fallback.enter("test")
    report = health.report()
    assert report["status"] == "warning", report
    assert any("enforcing locally" in problem and "divided by 2 (configured)" in problem
               for problem in report["problems"]), report
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MilterCollector(health, dead))
    assert b"mailflow_store_fallback_active 1.0" in generate_latest(registry)
    fallback.stop()
    dead.close()


def test_a_locked_fallback_file_hands_mail_back_to_the_store_and_its_spend_follows(
        store: RedisStore, tmp_path: Path) -> None:
    """Review findings: the probe's own SQLite calls raised sqlite3 errors, not StoreError, so a
    file locked (or full: seen on a full tmpfs) while the store came back killed the probe, and
    once that was caught the host stayed local, deferring every message, while Redis was fine.
    Now the hot path goes back to Redis and the spend is added once the file works again."""
    import sqlite3

    path = str(tmp_path / "fallback.db")
    fallback = LocalFallback(store, path, 2, lambda account: [HOUR], probe_every=0.05)
    fallback.active = True  # an outage, with spend, that the probe has not seen end yet
    assert fallback.debit("shop.example", [HOUR], 1).allowed
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # an admin's sqlite3 shell, a stuck worker; or a full disk
    deferred = fallback.answer(lambda local: local.debit("shop.example", [HOUR], 1))
    assert getattr(deferred, "reply", None) is not None  # 451, not an exception
    fallback.active = False
    fallback.enter("test")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and fallback.active:
        time.sleep(0.05)
    assert not fallback.active and fallback._thread is not None and fallback._thread.is_alive()
    assert not store.client.exists(bucket_key("shop.example", "hour"))  # the spend waits for the file
    holder.execute("COMMIT")
    holder.close()
    while time.monotonic() < deadline + 5 and not store.client.exists(bucket_key("shop.example", "hour")):
        time.sleep(0.05)
    assert store.levels("shop.example", [HOUR])[0] == pytest.approx(1, abs=0.1)
    fallback.stop()


def test_a_failure_during_the_last_reconcile_keeps_the_probe_going(store: RedisStore, tmp_path: Path) -> None:
    """Review finding: the hot path failing again (a flapping link) while the probe ran its last
    pass found the probe alive, started none, and the probe then returned: local mode forever."""
    fallback: LocalFallback | None = None
    flapped: list[str] = []

    def limits_for(account: str) -> list[Limit]:
        assert fallback is not None
        if fallback.active and account == "a.example":  # first pass: the hot path spends meanwhile
            fallback.debit("b.example", [HOUR], 1)
        elif not fallback.active and not flapped:  # last pass: the link flaps, the hot path fails
            flapped.append(account)
            fallback.enter("flap")
        return [HOUR]

    fallback = LocalFallback(store, str(tmp_path / "fallback.db"), 2, limits_for, probe_every=0.05)
    fallback.debit("a.example", [HOUR], 1)
    fallback.enter("test")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not (flapped and not fallback.active):
        time.sleep(0.05)
    assert flapped == ["b.example"] and not fallback.active
    assert store.levels("b.example", [HOUR])[0] == pytest.approx(1, abs=0.1)
    fallback.stop()


def _members(store: RedisStore, count: int) -> list[str]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and len(store.client.hkeys(FLEET_KEY)) < count:
        time.sleep(0.02)
    return sorted(store.client.hkeys(FLEET_KEY))


def test_cloned_hosts_count_once_each_on_redis_time(store: RedisStore, tmp_path: Path) -> None:
    """Review finding: the heartbeat field was host name and path only, so cloned hosts (same
    name, same path) counted as one and each enforced too big a share; and its stamps came from
    each host's clock, so a host lagging by 15 s was counted out. Now: the file's own token, and
    Redis's TIME."""
    path = str(tmp_path / "fallback.db")
    first = LocalFallback(store, path, 0, lambda account: [HOUR])
    [member] = _members(store, 1)
    seconds, micros = store.client.time()
    assert abs(float(store.client.hget(FLEET_KEY, member)) - (seconds + micros / 1e6)) < 2
    first.stop()
    again = LocalFallback(store, path, 0, lambda account: [HOUR])  # restarted: the same member
    assert _members(store, 1) == [member]
    again.stop()
    Path(path).unlink()  # a clone of this host, its own file at the same path: a second member
    clone = LocalFallback(store, path, 0, lambda account: [HOUR])
    assert len(_members(store, 2)) == 2 and beat(store, member) == 2  # beat on Redis's clock
    clone.stop()


def test_a_redis_restarted_empty_does_not_shrink_the_learned_fleet_at_once(store: RedisStore, tmp_path: Path) -> None:
    """Review finding: Redis restarted without its data (or crash-looping) answers the first
    heartbeat with 1 host; that was learned and kept, so an outage right after let every host
    enforce the whole limit. A smaller count now stands only once it has held for 15 s."""
    fallback = LocalFallback(store, str(tmp_path / "fallback.db"), 5, lambda account: [HOUR])
    fallback.configured = 0  # learned, without a heartbeat thread racing the test
    beat(store, "a:/f.db:1")
    beat(store, "b:/f.db:2")
    fallback._learn(beat(store, "c:/f.db:3"))
    assert fallback.learned == 3 and fallback.fleet_size == 3
    store.client.flushdb()  # restarted empty: the first beat counts one host
    fallback._learn(beat(store, "a:/f.db:1"))
    assert fallback.fleet_size == 3
    fallback.shrink_after = 0.1  # the smaller count holds
    time.sleep(0.15)
    fallback._learn(beat(store, "a:/f.db:1"))
    assert fallback.fleet_size == 1
    fallback._learn(beat(store, "b:/f.db:2"))  # a bigger count: at once
    assert fallback.fleet_size == 2
    fallback.stop()


def test_a_redis_that_answers_but_refuses_writes_keeps_the_host_local(tmp_path: Path) -> None:
    """Review finding: the probe trusted PING, so a Redis refusing writes (maxmemory reached;
    MISCONF after a failed save on a full disk; READONLY) handed the hot path back at once with
    no spend to reconcile, and the host flapped in and out of local mode twice a second."""
    from mailflow.store.base import StoreError
    from tests.helpers.redis_faults import redis_process

    with redis_process(tmp_path) as server:
        store = RedisStore(server.url, timeout_ms=250)
        fallback = LocalFallback(store, str(tmp_path / "fallback.db"), 2, lambda account: [HOUR], probe_every=0.05)
        server.client().config_set("maxmemory", "1")  # noeviction: every write refused, PING fine
        with pytest.raises(StoreError, match="OOM"):
            store.debit("shop.example", [HOUR], 1)
        fallback.enter("OOM")
        time.sleep(0.5)  # ten probes
        assert fallback.active
        server.client().config_set("maxmemory", "0")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and fallback.active:
            time.sleep(0.05)
        assert not fallback.active
        fallback.stop()
        store.close()


def test_an_unusable_fallback_file_at_start_does_not_stop_the_milter(redis_url: str, tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """Review finding: a fallback file that cannot be opened at start (a full disk under
    /var/lib/mailflow, a lock held) raised out of Engine(): no worker served, so all mail got the
    MTA's default action though Redis was fine. Now: a warning, and on_error acts as tempfail."""
    import sqlite3

    path = tmp_path / "fallback.db"
    config = load_config(str(write_config(tmp_path / "m.toml", {
        "store": {"url": redis_url, "fallback_path": str(path), "fleet_size": 2}, "milter": {"on_error": "local"}})))
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    store = RedisStore(redis_url)
    engine = Engine(config, store)
    holder.execute("ROLLBACK")
    holder.close()
    assert engine.fallback is None and engine.error_decision("store_error").reply is not None
    assert any("local fallback unavailable" in r.getMessage() and "locked" in r.getMessage() for r in caplog.records)
    engine.close()
    store.close()
