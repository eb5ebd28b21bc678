"""/health and `mailflow health` against a real Redis that fails: kill -9 and a restart with an
empty data set, SIGSTOP past timeout_ms, a restart that now asks for a password. 503 naming the
cause, Nagios CRITICAL (2), within the ping's bound, and back to 200 / OK once Redis answers."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mailflow.metrics import health
from mailflow.model import Client
from mailflow.store.redis import RedisStore
from tests.helpers.redis_faults import RedisProcess
from tests.helpers.servers import REPO
from tests.notify.test_channel_faults import bad_server
from tests.metrics.conftest import Running, started
from tests.metrics.test_health import get

pytestmark = pytest.mark.timing  # wall-clock bounds: run alone, after the parallel part (Makefile)

TIMEOUT_MS = 200


@pytest.fixture
def redis_running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[RedisProcess, Running]]:
    monkeypatch.setattr(health, "PING_REUSE", 0.0)  # each GET pings: the test sees each change at once
    server = RedisProcess(tmp_path).start()
    try:
        with started(RedisStore(server.url, timeout_ms=TIMEOUT_MS)) as run:
            yield server, run
    finally:
        server.kill()


def nagios(port: int) -> tuple[int, str]:
    done = subprocess.run([sys.executable, "-m", "mailflow", "health", "--url", f"http://127.0.0.1:{port}/health",
                           "--timeout", "5"], capture_output=True, text=True, timeout=30, cwd=REPO)
    return done.returncode, done.stdout


def timed_get(url: str) -> tuple[int, dict[str, Any], float]:
    started_at = time.monotonic()
    code, report = get(url)
    return code, report, time.monotonic() - started_at


def test_health_follows_a_killed_then_empty_redis(redis_running: tuple[RedisProcess, Running]) -> None:
    server, run = redis_running
    url = f"http://127.0.0.1:{run.port}/health"
    assert get(url)[0] == 200
    server.kill()
    code, report, took = timed_get(url)
    assert code == 503 and report["status"] == "critical" and took < 2
    assert report["problems"][0].startswith("store unreachable: redis: cannot connect")
    exit_code, line = nagios(run.port)
    assert exit_code == 2 and line.startswith("MAILFLOW CRITICAL - store unreachable: redis: cannot connect")
    assert "store_up=0" in line
    server.start()  # empty: nothing of the old data set
    code, report = get(url)
    assert code == 200 and report["status"] == "ok", report
    assert nagios(run.port)[0] == 0


def test_health_of_a_stopped_redis_is_critical_within_its_bound(redis_running: tuple[RedisProcess, Running]) -> None:
    server, run = redis_running
    url = f"http://127.0.0.1:{run.port}/health"
    server.pause()
    try:
        for _ in range(3):  # a hung ping never hangs the HTTP thread, nor piles up waits
            code, report, took = timed_get(url)
            assert code == 503 and took < 2 * TIMEOUT_MS / 1000 + 0.5 + 0.5
            assert report["problems"][0].startswith("store unreachable:")
    finally:
        server.resume()
    deadline = time.monotonic() + 5
    while get(url)[0] != 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert get(url)[0] == 200


def test_health_names_a_password_redis_now_asks_for(redis_running: tuple[RedisProcess, Running]) -> None:
    server, run = redis_running
    server.args = ["--requirepass", "new-pw-1"]
    server.restart()
    code, report = get(f"http://127.0.0.1:{run.port}/health")
    assert code == 503 and report["problems"] == ["store unreachable: redis: password required (NOAUTH): the store "
                                                  "URL gives none"]
    exit_code, line = nagios(run.port)
    assert exit_code == 2 and "password required" in line and "new-pw-1" not in line


def test_an_idle_milter_is_not_critical_for_ever_after_an_outage(
        redis_running: tuple[RedisProcess, Running], monkeypatch: pytest.MonkeyPatch) -> None:
    """Its last RCPT failed during the outage; Redis is back; no mail since. Critical while that
    failure is recent (the store may answer pings and still refuse writes: OOM, READONLY), then a
    warning naming it. Before the fix: 503 until the next message, however long that took."""
    monkeypatch.setattr(health, "FAILING_NOW", 1.0)
    server, run = redis_running
    url = f"http://127.0.0.1:{run.port}/health"
    client = Client(hostname="mua.example", address="198.51.100.20", port=40000)
    server.kill()
    message, _ = run.engine.mail(client, "bob@shop.example", "bob@shop.example")
    assert run.engine.rcpt(client, message, "r@dest.example").reason == "store_error"
    server.start()
    code, report = get(url)
    assert code == 503 and report["problems"][0] == "store calls are failing (on_error applies)"
    time.sleep(1.1)
    code, report = get(url)
    assert code == 200 and report["status"] == "warning" and not report["store"]["failing_now"], report
    assert report["problems"][0].startswith("a store call failed 1 s ago: redis: cannot connect")
    message, _ = run.engine.mail(client, "bob@shop.example", "bob@shop.example")
    assert not run.engine.rcpt(client, message, "r@dest.example").refuses  # the next call ends the outage
    assert get(url)[0] == 200


@pytest.mark.parametrize("how", ["trickle", "silent"])
def test_mailflow_health_is_unknown_within_its_timeout_when_the_endpoint_trickles_or_hangs(how: str) -> None:
    with bad_server(how, gap=0.05) as (url, _):
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "mailflow", "health", "--url", url, "--timeout", "1"],
                              capture_output=True, text=True, timeout=30, cwd=REPO)
        took = time.monotonic() - started
    assert done.returncode == 3 and done.stdout.startswith("MAILFLOW UNKNOWN - no answer from "), done.stdout
    assert took < 5, took  # a Python start under load, then 1 s; before the fix a trickle took as long as it lasted (8 s)
