"""Real Redis faults met by issue 15's background paths: the held-message recorder, the sent and
view counts, the grant overlay. Each outage outlasts what the path keeps in memory; what it
keeps is written once Redis is back (restarted empty too), and what it dropped is said in a
line, never per message."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mailflow import held
from mailflow.held import HeldMessage, HeldRecorder
from mailflow.store.redis import RedisStore
from tests.helpers.redis_faults import RedisProcess

TIMEOUT_MS = 200


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisProcess]:
    process = RedisProcess(tmp_path).start()
    yield process
    process.kill()


def record(n: int) -> HeldMessage:
    return HeldMessage("shop.example", f"4AB1C2D{n:03d}", int(time.time()), "account_held", "held", 1)


def wait_for(check: Callable[[], bool], seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


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
            assert wait_for(lambda: len(store.held_messages("shop.example")) == 20)
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
