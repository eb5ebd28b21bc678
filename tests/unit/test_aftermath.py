"""The engine's one call after each decision (mailflow/aftermath.py): counts for the views and the
DNSBL watcher, the metrics, the hold record and the log line, all from that call; SentCounter
counts exactly under many threads and keeps a failed flush. Real SQLite store."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path

import pytest

from mailflow import metrics, sent
from mailflow.aftermath import Aftermath
from mailflow.config import parse_config
from mailflow.decisions import NOT_FROM_MSP
from mailflow.engine import Engine
from mailflow.metrics.prom import PromRecorder
from mailflow.model import PASS, Client, Decision, Identity, Message, Reply, Verdict
from mailflow.ratelimit.grants import GrantOverlay
from mailflow.sent import SentCounter
from mailflow.settings import RatePolicy
from mailflow.store.base import StoreError
from mailflow.store.sqlite import SqliteStore

CLIENT = Client("client.example", "198.51.100.20", 40000)
NOW = datetime(2026, 11, 26, 12, 0, tzinfo=timezone.utc)
HOUR = int(time.time()) // 3600


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> PromRecorder:
    recorder = PromRecorder()
    monkeypatch.setattr(metrics, "RECORDER", recorder)
    return recorder


def message(recipients: int, queue_id: str = "") -> Message:
    return Message(sender="news@shop.example", queue_id=queue_id,
                   identity=Identity("sasl", "news@shop.example", "shop.example"), recipients=[f"r{n}@dest.example" for n in range(recipients)])


def scraped(recorder: PromRecorder) -> dict[str, float]:
    return {sample.name + str(sorted(sample.labels.items())): sample.value
            for family in recorder.collect() for sample in family.samples}


def test_a_message_that_goes_on_is_counted_sent_in_every_book(store: SqliteStore, recorder: PromRecorder,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    books = Aftermath(store, lambda: NOW, monitor=False)
    with caplog.at_level(logging.INFO, logger="mailflow.decision"):
        books.decided("eom", CLIENT, message(3), PASS, PASS, "c1", "4AB1C2D3E4", cost=3)
    books.close()
    assert store.account_counts(["shop.example"], [HOUR]) == {"shop.example": {"sent": 1, "rcpts": 3, "src:sasl": 1}}
    assert store.top_senders([HOUR], 10) == [("shop.example", 3)]
    assert store.held_messages("shop.example") == []
    samples = scraped(recorder)
    assert samples["mailflow_recipients_total[('outcome', 'accepted')]"] == 3
    assert samples["mailflow_decisions_total[('action', 'continue'), ('reason', 'ok'), ('stage', 'eom')]"] == 1
    assert "qid=4AB1C2D3E4" in caplog.text and "cost=3" in caplog.text and "account=shop.example" in caplog.text


def test_a_held_message_is_recorded_with_the_queue_id_it_got(store: SqliteStore) -> None:
    books = Aftermath(store, lambda: NOW, monitor=False)
    hold = Decision(Verdict.HOLD, "lookalike", Reply("250", "2.7.0", "From: looks like a brand"))
    books.decided("eom", CLIENT, message(2, queue_id="4AB1C2D3E4"), hold, hold, cost=2)  # Sendmail: the id at MAIL
    books.close()
    [held] = store.held_messages("shop.example")
    assert (held.queue_id, held.reason, held.why, held.recipients, held.at) == (
        "4AB1C2D3E4", "lookalike", "From: looks like a brand", 2, int(NOW.timestamp()))
    assert store.top_senders([HOUR], 10) == [("shop.example", 2)]
    assert store.account_counts(["shop.example"], [HOUR])["shop.example"] == {"held": 1, "src:sasl": 1}


def test_a_refusal_is_counted_refused_never_sent(store: SqliteStore) -> None:
    books = Aftermath(store, lambda: NOW, monitor=False)
    books.decided("eom", CLIENT, message(2), NOT_FROM_MSP, NOT_FROM_MSP)  # refused before any charge: no cost
    books.decided("mail", CLIENT, Message(sender="x@elsewhere.example"), NOT_FROM_MSP, NOT_FROM_MSP)  # no account
    books.close()
    assert store.account_counts(["shop.example"], [HOUR]) == {
        "shop.example": {"refused:not_from_msp": 1, "src:sasl": 1}}
    assert store.top_senders([HOUR], 10) == []


def test_monitor_mode_counts_what_went_and_logs_what_was_decided(store: SqliteStore,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    books = Aftermath(store, lambda: NOW, monitor=True)
    sent = message(2)
    sent.refused.append("late@dest.example")  # refused at RCPT in monitor mode: it went all the same
    refusal = Decision(Verdict.TEMPFAIL, "ratelimit", Reply("451", "4.7.1", "slow down"))
    with caplog.at_level(logging.INFO, logger="mailflow.decision"):
        books.decided("eom", CLIENT, sent, refusal, Decision(Verdict.CONTINUE, "ratelimit"), cost=2)
    books.close()
    assert store.account_counts(["shop.example"], [HOUR])["shop.example"] == {"sent": 1, "rcpts": 3, "src:sasl": 1}
    assert "mode=monitor" in caplog.text and "action=tempfail" in caplog.text


def test_the_rate_policy_is_looked_up_once_per_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    lookup = GrantOverlay.policy_for

    def counted(self: GrantOverlay, account: str) -> RatePolicy:
        calls.append(account)
        return lookup(self, account)

    monkeypatch.setattr(GrantOverlay, "policy_for", counted)
    monkeypatch.setenv("MAILFLOW_TEST_KEY", "k" * 32)
    config = parse_config({"ratelimit": {"limits": ["100/hour"]}, "suppression": {"hash_key_env": "MAILFLOW_TEST_KEY"}})
    store = SqliteStore(str(tmp_path / "s.db"))
    engine = Engine(config, store)
    sent, _ = engine.mail(CLIENT, "news@shop.example", "news@shop.example")
    for n in range(3):
        assert not engine.rcpt(CLIENT, sent, f"r{n}@dest.example").refuses
    engine.header(sent, "From", "news@shop.example")
    assert engine.eom(CLIENT, sent).verdict is Verdict.CONTINUE
    assert calls == ["shop.example"]
    engine.close()
    store.close()


class FailingOnce(SqliteStore):
    """A store whose first count writes fail, as a store that is down for a moment."""

    failures = 2

    def add_sent(self, counts: dict[tuple[int, str], int]) -> None:
        self._maybe_fail()
        super().add_sent(counts)

    def add_counts(self, counts: Mapping[tuple[int, str, str], int]) -> None:
        self._maybe_fail()
        super().add_counts(counts)

    def _maybe_fail(self) -> None:
        if self.failures:
            self.failures -= 1
            raise StoreError("down for a moment")


def test_a_failed_flush_keeps_both_kinds_of_count_for_the_next(tmp_path: Path) -> None:
    store = FailingOnce(str(tmp_path / "s.db"))
    counter = SentCounter(store, flush_every=3600)
    counter.note("shop.example", "sasl", "eom", PASS, 2, sent=2)
    counter.flush()  # both writes fail: both kept
    assert store.top_senders([HOUR], 10) == [] and store.active_accounts([HOUR]) == {}
    counter.flush()
    assert store.top_senders([HOUR], 10) == [("shop.example", 2)]
    assert store.account_counts(["shop.example"], [HOUR]) == {"shop.example": {"sent": 1, "rcpts": 2, "src:sasl": 1}}
    store.close()


def test_counts_from_many_threads_are_exact(store: SqliteStore) -> None:
    counter = SentCounter(store, flush_every=3600)
    threads, per_thread = 8, 2000

    def count() -> None:
        for _ in range(per_thread):
            counter.note("shop.example", "sasl", "eom", PASS, 1, sent=1)

    workers = [threading.Thread(target=count) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    counter.flush()
    total = threads * per_thread
    assert store.top_senders([HOUR], 10) == [("shop.example", total)]
    assert store.account_counts(["shop.example"], [HOUR]) == {
        "shop.example": {"sent": total, "rcpts": total, "src:sasl": total}}


def test_counts_kept_through_an_outage_are_bounded_oldest_hour_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """A customer inventing sender domains while the store is down: memory stays bounded."""
    monkeypatch.setattr(sent, "PENDING_MAX", 50)
    store = FailingOnce(str(tmp_path / "s.db"))
    store.failures = 10**6
    now = [HOUR * 3600.0]
    counter = SentCounter(store, flush_every=3600, clock=lambda: now[0])
    for n in range(40):
        counter.add(f"old{n}.example", 1)
    now[0] += 3600  # the next hour
    for n in range(40):
        counter.add(f"new{n}.example", 1)
    with caplog.at_level(logging.ERROR, logger="mailflow"):
        counter.flush()
    kept = counter._counts
    assert len(kept) == 50 and all(account.startswith("new") or hour == HOUR for hour, account in kept)
    assert sum(account.startswith("new") for _, account in kept) == 40  # the oldest hour went first
    assert "sent counts: 30 of the oldest dropped (more than 50 kept while the store fails)" in caplog.text
    counter.stop()
    store.close()


class SlowWrites(SqliteStore):
    """A store whose count write takes until `release` is set (a timer's flush mid-write)."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.writing, self.release = threading.Event(), threading.Event()

    def add_sent(self, counts: dict[tuple[int, str], int]) -> None:
        self.writing.set()
        self.release.wait(10)
        super().add_sent(counts)


def test_stop_waits_for_a_flush_already_writing(tmp_path: Path) -> None:
    """Found in review: stop() returned while the timer's flush still wrote, and the caller then
    closed the store under it."""
    store = SlowWrites(str(tmp_path / "s.db"))
    counter = SentCounter(store, flush_every=3600)
    counter.add("shop.example", 1)
    timer_flush = threading.Thread(target=counter.flush)
    timer_flush.start()
    assert store.writing.wait(10)
    stopper = threading.Thread(target=counter.stop)
    stopper.start()
    stopper.join(0.3)
    assert stopper.is_alive()  # waits for the write in progress
    store.release.set()
    stopper.join(10)
    timer_flush.join(10)
    assert not stopper.is_alive() and store.top_senders([HOUR], 10) == [("shop.example", 1)]
    store.close()
