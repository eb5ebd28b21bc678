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
from mailflow.ratelimit.limits import parse_limit
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
