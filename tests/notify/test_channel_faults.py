"""A webhook endpoint or SMTP relay that misbehaves at the socket level: it trickles its answer
a byte at a time, accepts and never answers, or is not there. Each webhook attempt ends within
webhook_timeout_ms (the whole attempt, not each read), each e-mail within 3 times the channel's
timeout, so the notifier's one thread is never held by a peer."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from mailflow import events
from mailflow.notify.mail import DEADLINE_FACTOR, MailChannel
from mailflow.notify.notifier import Notifier
from mailflow.notify.webhook import Outcome, Webhook
from mailflow.settings import RblSettings
from tests.helpers.servers import free_port
from tests.helpers.webhook_receiver import SECRET
from tests.notify.test_delivery import REFUSED, notify_config

pytestmark = pytest.mark.timing  # wall-clock bounds: run alone, after the parallel part (Makefile)

SERVE_SECONDS = 8.0  # the bad server gives up on its own after this: bounds every test


@contextmanager
def bad_server(how: str, gap: float = 0.2) -> Iterator[tuple[str, list[float]]]:
    """A TCP endpoint on 127.0.0.1 that, per `how`: "trickle" (reads a request, then answers a
    200 status line and headers one byte every `gap` s), "silent" (reads, never a byte), or
    "smtp-trickle" (a greeting of continuation lines, one byte every `gap` s, never ending)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stop = threading.Event()
    accepted: list[float] = []

    def handle(conn: socket.socket) -> None:
        started = time.monotonic()
        with conn:
            conn.settimeout(1)
            try:
                if how == "smtp-trickle":
                    answer = b"220-mail.example slow\r\n" * 1000
                else:
                    conn.recv(65536)
                    answer = b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 2000 if how == "trickle" else b""
                for byte in answer:
                    if stop.is_set() or time.monotonic() - started > SERVE_SECONDS:
                        return
                    conn.sendall(bytes([byte]))
                    stop.wait(gap)
                stop.wait(max(0.0, SERVE_SECONDS - (time.monotonic() - started)))
            except OSError:
                return

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            accepted.append(time.monotonic())
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/hook", accepted  # its port: urlsplit(...).port
    finally:
        stop.set()
        thread.join(timeout=2)
        listener.close()


def test_a_trickling_receiver_is_cut_at_the_attempts_deadline() -> None:
    with bad_server("trickle") as (url, _):
        started = time.monotonic()
        outcome = Webhook(url, SECRET, timeout=0.6).post(b"{}", "id-1", "limit_refused")
        took = time.monotonic() - started
    assert took < 2.0, took  # before the fix: as long as the receiver kept trickling (8 s here)
    assert not outcome.delivered and outcome.retry
    assert "within 0.6s" in outcome.why


def test_a_receiver_that_never_answers_and_one_that_is_down() -> None:
    with bad_server("silent") as (url, _):
        outcome, took = _timed_post(url)
    assert took < 2.0 and not outcome.delivered and outcome.retry
    outcome, took = _timed_post(f"http://127.0.0.1:{free_port()}/hook")  # nothing listens: refused
    assert took < 2.0 and not outcome.delivered and outcome.retry and "refused" in outcome.why.lower()


def _timed_post(url: str) -> tuple[Outcome, float]:
    started = time.monotonic()
    outcome = Webhook(url, SECRET, timeout=0.6).post(b"{}", "id-1", "limit_refused")
    return outcome, time.monotonic() - started


def test_a_trickling_receiver_does_not_hold_the_notifier(secret_file: Path) -> None:
    """Attempts keep their backoff schedule, and close() returns within its bound."""
    with bad_server("trickle") as (url, accepted):
        config = notify_config(secret_file, url, webhook_timeout_ms=500, webhook_backoff_ms=100, webhook_attempts=3)
        notifier = Notifier(config, None, host="mx1").start()
        try:
            events.publish(REFUSED)
            deadline = time.monotonic() + 6
            while len(accepted) < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            started = time.monotonic()
            notifier.close(timeout=1)
            closed_in = time.monotonic() - started
    assert len(accepted) == 3, accepted  # three attempts in ~2 s; before the fix, one in 8 s
    assert accepted[-1] - accepted[0] < 4.0
    assert closed_in < 2.5


@pytest.mark.parametrize("how", ["smtp-trickle", "silent", "down"])
def test_an_smtp_relay_that_trickles_hangs_or_is_down_costs_a_bounded_time(
        how: str, caplog: pytest.LogCaptureFixture) -> None:
    """E-mail notices and DNSBL alerts share this channel; the notifier has one thread."""
    with bad_server(how if how != "down" else "silent", gap=0.05) as (url, _):
        port = urlsplit(url).port if how != "down" else free_port()
        assert port is not None
        channel = MailChannel(RblSettings(smtp_relay=("127.0.0.1", port), email_from="mailflow@mx1.example"),
                              timeout=0.3)
        started = time.monotonic()
        with caplog.at_level(logging.ERROR, logger="mailflow"):
            sent = channel.send(["postmaster@provider.example"], "limit refused", "body", what="notice e-mail")
        took = time.monotonic() - started
    assert not sent and took < 0.3 * DEADLINE_FACTOR + 0.7, took  # before the fix, a trickle: 8 s here
    # The channel's own lines (another test's leftover thread may log meanwhile): exactly one.
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("notice e-mail")]
    assert line.startswith(f"notice e-mail through 127.0.0.1:{port} failed for limit refused: ")
    if how == "smtp-trickle":
        assert line.endswith("no whole exchange within 0.9s")
