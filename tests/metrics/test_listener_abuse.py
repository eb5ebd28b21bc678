"""The metrics listener against a hostile local process (any customer on a shared host can reach
127.0.0.1): idle connections cost no thread beyond a small cap, a request trickled a byte at a
time is cut at a whole-request deadline, and scrapes still answer meanwhile. A real listener on
loopback, served as a worker serves it."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from mailflow.metrics import worker
from mailflow.metrics.host import bind

pytestmark = pytest.mark.timing  # wall-clock bounds: run alone, after the parallel part (Makefile)


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    monkeypatch.setattr(worker, "HTTP_DEADLINE", 1.5)
    sock = bind(("127.0.0.1", 0))
    server = worker.Served(sock, CollectorRegistry(), None)
    try:
        yield int(sock.getsockname()[1])
    finally:
        server.close()


def _scrape(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return int(response.status)


def _threads_settle(expected_max: int, seconds: float = 3.0) -> int:
    deadline = time.monotonic() + seconds
    count = threading.active_count()
    while time.monotonic() < deadline and count > expected_max:
        time.sleep(0.05)
        count = threading.active_count()
    return count


def test_idle_connections_take_at_most_the_cap_of_threads(served: int) -> None:
    before = threading.active_count()
    idle = [socket.create_connection(("127.0.0.1", served), timeout=5) for _ in range(100)]
    try:
        time.sleep(0.5)  # let the server accept every one it will
        assert threading.active_count() - before <= worker.HTTP_MAX_CONNECTIONS
    finally:
        for conn in idle:
            conn.close()
    assert _threads_settle(before + 1) <= before + 1


def test_a_trickled_request_is_cut_at_the_deadline(served: int) -> None:
    conn = socket.create_connection(("127.0.0.1", served), timeout=5)
    started = time.monotonic()
    closed_after = None
    try:
        conn.sendall(b"GET /metrics HTTP/1.0\r\n")
        for _ in range(40):  # a header byte every 0.2 s: never the 5 s per-read timeout
            time.sleep(0.2)
            try:
                conn.sendall(b"X")
            except OSError:
                closed_after = time.monotonic() - started
                break
            conn.setblocking(False)
            try:
                if conn.recv(1) == b"":
                    closed_after = time.monotonic() - started
                    break
            except BlockingIOError:
                pass
            finally:
                conn.setblocking(True)
    finally:
        conn.close()
    assert closed_after is not None and closed_after < worker.HTTP_DEADLINE + 2


def test_scrapes_answer_while_idle_connections_hold_the_cap(served: int) -> None:
    idle = [socket.create_connection(("127.0.0.1", served), timeout=5) for _ in range(worker.HTTP_MAX_CONNECTIONS * 2)]
    try:
        deadline = time.monotonic() + worker.HTTP_DEADLINE + 3
        status = 0
        while time.monotonic() < deadline and status != 200:
            try:
                status = _scrape(served)
            except OSError:
                time.sleep(0.2)
        assert status == 200  # the idle ones were cut at the deadline, or refused at the cap
    finally:
        for conn in idle:
            conn.close()
