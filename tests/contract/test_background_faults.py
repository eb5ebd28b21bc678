"""Real Redis faults met by issue 15's background paths: the held-message recorder, the sent and
view counts, the grant overlay. Each outage outlasts what the path keeps in memory; what it
keeps is written once Redis is back (restarted empty too), and what it dropped is said in a
line, never per message."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailflow import held
from mailflow.config import parse_config
from mailflow.engine import Engine
from mailflow.held import HeldMessage, HeldRecorder
from mailflow.ratelimit.grants import Grant, GrantOverlay
from mailflow.ratelimit.limits import parse_limit
from mailflow.sent import SentCounter
from mailflow.store.redis import RedisStore
from tests.helpers.redis_faults import RedisProcess
from tests.helpers.servers import free_port, poll_until

TIMEOUT_MS = 200


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisProcess]:
    process = RedisProcess(tmp_path).start()
    yield process
    process.kill()


def record(n: int) -> HeldMessage:
    return HeldMessage("shop.example", f"4AB1C2D{n:03d}", int(time.time()), "account_held", "held", 1)


def test_held_records_outlast_an_outage_bounded_and_the_loss_is_said(
        server: RedisProcess, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(held, "PENDING_MAX", 20)
    store = RedisStore(server.url, timeout_ms=TIMEOUT_MS)
    recorder = HeldRecorder(store, flush_every=0.1)
    try:
        server.kill()
        with caplog.at_level(logging.WARNING, logger="mailflow"):
            for n in range(30):  # more than the recorder keeps
                recorder.add(record(n))
                if n % 10 == 9:
                    time.sleep(0.35)  # a few failed flushes between
            server.start()  # restarted empty
            assert poll_until(lambda: len(store.held_messages("shop.example")) == 20)
        written = sorted(r.queue_id for r in store.held_messages("shop.example"))
        assert written == [record(n).queue_id for n in range(10, 30)]  # the oldest went first
        lines = [r.getMessage() for r in caplog.records if "held" in r.getMessage()]
        assert sum("could not record" in line for line in lines) == 1, lines  # once per outage
        assert any("10 held-message records dropped" in line for line in lines), lines
        assert any("recorded again" in line for line in lines), lines
        assert len(lines) <= 4, lines
    finally:
        recorder.stop()
        store.close()


def test_held_records_added_during_a_hung_flush_are_kept_before_older_ones_are(
        server: RedisProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGSTOP: a flush waits timeout_ms; what the milter holds meanwhile is the newest, kept."""
    monkeypatch.setattr(held, "PENDING_MAX", 5)
    store = RedisStore(server.url, timeout_ms=TIMEOUT_MS)
    recorder = HeldRecorder(store, flush_every=60)  # flushed by hand only
    try:
        for n in range(5):
            recorder.add(record(n))
        server.pause()
        flushing = threading.Thread(target=recorder.flush)
        flushing.start()
        time.sleep(0.05)  # the flush has taken the five and waits for Redis
        for n in range(5, 8):
            recorder.add(record(n))
        flushing.join(timeout=5)
        server.resume()
        recorder.flush()
        written = sorted(r.queue_id for r in store.held_messages("shop.example"))
        assert written == [record(n).queue_id for n in range(3, 8)]  # before the fix: 0-4, the new ones lost
    finally:
        server.resume()
        recorder.stop()
        store.close()


def test_held_records_not_written_at_stop_are_said(server: RedisProcess, caplog: pytest.LogCaptureFixture) -> None:
    store = RedisStore(server.url, timeout_ms=TIMEOUT_MS)
    recorder = HeldRecorder(store, flush_every=60)
    recorder.add(record(1))
    server.kill()
    with caplog.at_level(logging.WARNING, logger="mailflow"):
        recorder.stop()
    store.close()
    assert any("1 held messages not recorded at stop" in r.getMessage() for r in caplog.records)


SETTINGS = parse_config({"ratelimit": {"limits": ["100/hour"]}}).ratelimit


def limits_of(overlay: GrantOverlay, account: str) -> list[str]:
    return [str(limit) for limit in overlay.policy_for(account).limits]


def test_a_grant_applies_and_expires_across_an_outage_and_a_restart_empty(
        server: RedisProcess, caplog: pytest.LogCaptureFixture) -> None:
    """Documented (README, store outages): an outage keeps the grants last read, each ending by
    the milter's own clock; a Redis restarted empty has none, and the refresh says each is gone."""
    now = [time.time()]
    store = RedisStore(server.url, timeout_ms=TIMEOUT_MS)
    for account, seconds in (("short.example", 60), ("long.example", 3600)):
        grant = Grant((parse_limit("500/hour"),), now[0] + seconds, "launch", "root", now[0])
        assert store.swap_grant(account, None, grant.value())
    overlay = GrantOverlay(SETTINGS, store, 0.05, clock=lambda: now[0])
    try:
        overlay.start()
        assert limits_of(overlay, "short.example") == limits_of(overlay, "long.example") == ["500/hour"]
        with caplog.at_level(logging.INFO, logger="mailflow"):
            server.kill()
            time.sleep(0.5)  # ~10 refreshes fail
            assert limits_of(overlay, "long.example") == ["500/hour"]  # kept through the outage
            now[0] += 120
            assert limits_of(overlay, "short.example") == ["100/hour"]  # ended by the clock, store down
            server.start()  # empty: the long grant is gone from the store
            assert poll_until(lambda: limits_of(overlay, "long.example") == ["100/hour"])
            time.sleep(0.2)
        lines = [r.getMessage() for r in caplog.records if "grant" in r.getMessage()]
        assert sum("cannot refresh grants" in line for line in lines) == 1, lines  # once per outage
        assert sum("read from the store again" in line for line in lines) == 1, lines
        assert any("short.example (500/hour) expired" in line for line in lines), lines
        # Before the fix the long grant vanished without a word.
        assert any("long.example (500/hour) is no longer in the store" in line for line in lines), lines
    finally:
        overlay.stop()
        store.close()


def test_counts_made_during_an_outage_are_written_once_redis_is_back_empty(server: RedisProcess) -> None:
    store = RedisStore(server.url, timeout_ms=TIMEOUT_MS)
    counter = SentCounter(store, flush_every=0.1)
    hour = int(time.time()) // 3600
    try:
        server.kill()
        for _ in range(5):
            counter.add("shop.example", 3)
            time.sleep(0.15)  # a failed flush between each
        server.start()
        assert poll_until(lambda: store.top_senders([hour, hour - 1], 5) == [("shop.example", 15)])
    finally:
        counter.flush()
        store.close()


def test_engine_close_on_a_stopped_redis_is_bounded_and_ends_its_threads(
        server: RedisProcess, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("MAILFLOW_TEST_KEY", "k" * 32)
    config = parse_config({"store": {"url": server.url, "timeout_ms": TIMEOUT_MS, "refresh_ms": 50},
                           "ratelimit": {"limits": ["100/hour"]}, "suppression": {"hash_key_env": "MAILFLOW_TEST_KEY"}})
    store = RedisStore(server.url, timeout_ms=TIMEOUT_MS, refresh_ms=50)
    before = set(threading.enumerate())  # other tests' engines may still refresh: only this one's count
    engine = Engine(config, store)
    engine.grants.start()
    engine.aftermath.sent.add("shop.example", 1)
    engine.aftermath.held_mail.add(record(1))
    server.pause()
    try:
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="mailflow"):
            engine.close()  # the last counts and records meet a store that does not answer
        closed_in = time.monotonic() - started
        assert closed_in < 4 * TIMEOUT_MS / 1000 + 2, closed_in  # a few store timeouts, with room for load
        # Before the fix: "keeping them for the next flush", and a timer retrying every 10 s for ever.
        assert "sent counts of 1 accounts lost at stop: redis: no answer within 200 ms" in caplog.text
        assert "keeping them for the next flush" not in caplog.text
        ours = ("mailflow-grants", "mailflow-domains", "sent-flush", "held-flush")
        assert poll_until(lambda: not [t for t in set(threading.enumerate()) - before if t.name in ours], 5), [
            t.name for t in set(threading.enumerate()) - before]
    finally:
        server.resume()
        store.close()


def test_an_expired_grant_a_readonly_replica_will_not_delete_is_said_once(
        server: RedisProcess, caplog: pytest.LogCaptureFixture) -> None:
    """READONLY (a failover the URL did not follow): grants still read, their removal refused on
    every refresh (refresh_ms). One line, and one when removals work again; the expired grant is
    ignored all along."""
    store = RedisStore(server.url, timeout_ms=TIMEOUT_MS)
    now = time.time()
    expired = Grant((parse_limit("500/hour"),), now - 10, "launch", "root", now - 3600)
    assert store.swap_grant("shop.example", None, expired.value())
    with server.client() as admin:
        admin.replicaof("127.0.0.1", str(free_port()))  # a primary that is not there: the data stays
    overlay = GrantOverlay(SETTINGS, store, 0.05)
    try:
        with caplog.at_level(logging.INFO, logger="mailflow"):
            overlay.start()
            time.sleep(0.6)  # ~12 refreshes
            assert limits_of(overlay, "shop.example") == ["100/hour"]
            with server.client() as admin:
                admin.replicaof("NO", "ONE")
            assert poll_until(lambda: store.grants() == {})
        lines = [r.getMessage() for r in caplog.records if "grant" in r.getMessage()]
        assert sum("cannot remove the expired grant" in line for line in lines) == 1, lines  # before: one a refresh
        assert "READONLY" in lines[0]
        assert any("expired grants removed again" in line for line in lines), lines
    finally:
        overlay.stop()
        store.close()
