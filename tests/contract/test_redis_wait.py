"""[store] wait_replicas, for real: a master and one replica (real redis-servers on loopback).

A committed debit is acknowledged by the replica (WAIT in the same exchange); with the replica
stopped (SIGSTOP) the debit still stands, returns within wait_timeout_ms plus a bound, and is
counted short (one log line however many); reads never wait; check-config refuses nonsense.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mailflow import metrics
from mailflow.metrics.prom import PromRecorder
from mailflow.milter.client import MilterClient
from mailflow.ratelimit.limits import parse_limit
from mailflow.store.redis import RedisStore, bucket_key
from tests.helpers.cli import run_cli
from tests.helpers.redis_faults import RedisProcess
from tests.helpers.servers import MilterProcess

TIMEOUT_MS = 1000
WAIT_MS = 150
SLACK_S = 0.35  # beyond WAIT_MS for a call on a loaded 2-core machine
LIMITS = (parse_limit("1000/day"),)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[RedisProcess, RedisProcess]]:
    master = RedisProcess(tmp_path, "--repl-diskless-sync-delay", "0").start()  # a sync at once, not in 5 s
    replica = RedisProcess(tmp_path, "--replicaof", "127.0.0.1", str(master.port)).start()
    try:
        deadline = time.monotonic() + 15
        with master.client() as c:  # until a write is acknowledged: the replica synced and acks
            while c.set("probe", "1") and c.execute_command("WAIT", 1, 100) != 1:
                assert time.monotonic() < deadline, "the replica did not sync"
        yield master, replica
    finally:
        replica.kill()
        master.kill()


@pytest.fixture
def recorder() -> Iterator[PromRecorder]:
    metrics.RECORDER = recorder = PromRecorder()
    try:
        yield recorder
    finally:
        metrics.RECORDER = metrics.Recorder()


def short_count(recorder: PromRecorder) -> float:
    return {s.name: s.value for f in recorder.registry.collect() for s in f.samples}["mailflow_store_wait_short_total"]


def waits(server: RedisProcess) -> int:
    with server.client() as c:
        return int(c.info("commandstats").get("cmdstat_wait", {}).get("calls", 0))


def test_a_debit_is_on_the_replica_when_it_returns(pair: tuple[RedisProcess, RedisProcess],
                                                  recorder: PromRecorder) -> None:
    master, replica = pair
    store = RedisStore(master.url, timeout_ms=TIMEOUT_MS, wait_replicas=1, wait_timeout_ms=WAIT_MS)
    try:
        with replica.client() as on_replica:
            for n in range(1, 21):
                if n == 2:  # after the first exchange, which loads the script (NOSCRIPT: sent again, WAIT too)
                    before = waits(master)
                assert store.debit("shop.example", LIMITS, 1).allowed
                # Acknowledged means applied there: readable at once, no polling.
                level = float(on_replica.hget(bucket_key("shop.example", "day"), "level") or 0)
                assert n - 0.01 <= level <= n, (n, level)
        assert waits(master) - before == 19 and short_count(recorder) == 0
        store.levels("shop.example", LIMITS)  # a read: no WAIT
        store.debit("shop.example", LIMITS, 0)  # spends nothing: no WAIT
        assert waits(master) - before == 19
    finally:
        store.close()


def test_a_stopped_replica_costs_the_wait_and_is_counted(pair: tuple[RedisProcess, RedisProcess],
                                                        recorder: PromRecorder,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    master, replica = pair
    store = RedisStore(master.url, timeout_ms=TIMEOUT_MS, wait_replicas=1, wait_timeout_ms=WAIT_MS)
    replica.pause()
    try:
        took = []
        with caplog.at_level(logging.WARNING, logger="mailflow.store"):
            for _ in range(3):
                started = time.monotonic()
                assert store.debit("shop.example", LIMITS, 1).allowed  # the debit stands
                took.append(time.monotonic() - started)
        assert all(WAIT_MS / 1000 * 0.9 <= t <= WAIT_MS / 1000 + SLACK_S for t in took), took
        assert short_count(recorder) == 3
        lines = [r.getMessage() for r in caplog.records if "wait_replicas" in r.getMessage()]
        assert len(lines) == 1 and "debits stand" in lines[0], lines
        with master.client() as c:
            assert float(c.hget(bucket_key("shop.example", "day"), "level") or 0) >= 2.99
    finally:
        replica.resume()
        store.close()


def test_off_by_default_sends_no_wait(pair: tuple[RedisProcess, RedisProcess]) -> None:
    master, _ = pair
    store = RedisStore(master.url, timeout_ms=TIMEOUT_MS)
    before = waits(master)  # the fixture's own
    try:
        assert store.debit("shop.example", LIMITS, 1).allowed
        assert waits(master) == before
    finally:
        store.close()


def test_the_milter_waits_through_its_config(pair: tuple[RedisProcess, RedisProcess],
                                            start_milter: Callable[..., MilterProcess]) -> None:
    """[store] wait_replicas reaches the running milter: each accepted message's debit is on the
    replica when the milter answers; with the replica stopped, messages still pass, in bounded time."""
    master, replica = pair
    milter = start_milter({"store": {"url": master.url, "timeout_ms": TIMEOUT_MS, "wait_replicas": 1,
                                     "wait_timeout_ms": WAIT_MS},
                           "accounts": {"identify": ["sasl"]}, "ratelimit": {"limits": ["1000/day"]}})

    def send() -> float:
        started = time.monotonic()
        with MilterClient(milter.socket) as c:
            c.connect("mua.example", "198.51.100.20", 40000)
            assert c.mail("bob@shop.example", macros={"{auth_authen}": "shop.example"}).action == "continue"
            assert c.rcpt("a@dest.example").action == "continue"
            c.header("From", "bob@shop.example")
            c.eoh()
            assert c.eom().action == "continue"
        return time.monotonic() - started

    before = waits(master)
    with replica.client() as on_replica:
        for n in range(1, 4):
            send()
            assert float(on_replica.hget(bucket_key("shop.example", "day"), "level") or 0) >= n - 0.01
    assert waits(master) - before >= 3
    replica.pause()
    try:
        took = [send() for _ in range(2)]
        assert all(t <= WAIT_MS / 1000 + 1.0 for t in took), took  # the milter's whole session, loaded machine
    finally:
        replica.resume()
    with master.client() as c:
        assert float(c.hget(bucket_key("shop.example", "day"), "level") or 0) >= 4.99


@pytest.mark.parametrize("store_lines, words", [
    ('url = "sqlite://{tmp}/s.db"\nwait_replicas = 1', "store.wait_replicas: needs a Redis store"),
    ('url = "redis://127.0.0.1:1/0"\nwait_replicas = -1', "store.wait_replicas: must be at least 0"),
    ('url = "redis://127.0.0.1:1/0"\nwait_replicas = 1\nwait_timeout_ms = 0', "store.wait_timeout_ms: must be at least 1"),
    ('url = "redis://127.0.0.1:1/0"\ntimeout_ms = 250\nwait_replicas = 1\nwait_timeout_ms = 200',
     "store.wait_timeout_ms: 200 is over half of timeout_ms (250)"),
])
def test_check_config_refuses_nonsense(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       store_lines: str, words: str) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[store]\n" + store_lines.format(tmp=tmp_path) + "\n")
    code, _, err = run_cli(capsys, "check-config", "-c", str(config))
    assert code == 2 and words in err and err.count("\n") == 1, err
