"""/health and `mailflow health`: states, HTTP codes, Nagios exit codes, bounded waits."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from mailflow.metrics.check import judge
from mailflow.metrics.health import Health
from mailflow.store.base import StoreError
from mailflow.store.health import StoreHealth
from mailflow.store.sqlite import SqliteStore
from tests.helpers.servers import REPO
from tests.metrics.conftest import Running


def get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.load(exc)


def test_health_is_ok_then_warns_after_a_store_error(running: Running) -> None:
    url = f"http://127.0.0.1:{running.port}/health"
    code, report = get(url)
    assert code == 200 and report["status"] == "ok" and report["problems"] == []
    assert report["store"] == {"reachable": True, "failing_now": False, "last_error": None}
    assert report["config"]["generation"] == 1 and report["config"]["age_seconds"] >= 0
    running.engine.store_health.failed("redis: timed out after 250 ms")
    code, report = get(url)  # failing now: the next call has not answered yet
    assert code == 503 and report["status"] == "critical"
    assert report["store"]["last_error"]["text"] == "redis: timed out after 250 ms"
    running.engine.store_health.succeeded()
    code, report = get(url)
    assert code == 200 and report["status"] == "warning"
    assert report["problems"][0].startswith("a store call failed 0 s ago: redis: timed out")


def test_unknown_paths_are_404(running: Running) -> None:
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(f"http://127.0.0.1:{running.port}/admin", timeout=5)
    assert raised.value.code == 404
    raised.value.close()


class HangingStore(SqliteStore):
    """A store whose ping never answers in time (a hung server)."""

    def ping(self) -> None:
        time.sleep(5)


class FailingStore(SqliteStore):
    def ping(self) -> None:
        raise StoreError("redis: connection refused")


def test_a_hung_store_is_critical_within_the_bound(tmp_path: Path) -> None:
    store = HangingStore(str(tmp_path / "s.db"))
    health = Health(store, StoreHealth("tempfail"), timeout_ms=100, config_path=None, generation=1)
    started = time.monotonic()
    report = health.report()
    assert time.monotonic() - started < 1.5
    assert report["status"] == "critical" and report["problems"] == ["store unreachable: no answer to a ping within 0.7 s"]
    store.close()


def test_an_unreachable_store_is_critical(tmp_path: Path) -> None:
    store = FailingStore(str(tmp_path / "s.db"))
    report = Health(store, StoreHealth("tempfail"), 100, None, 1).report()
    assert report["status"] == "critical" and report["problems"] == ["store unreachable: redis: connection refused"]
    store.close()


def test_a_stale_replica_warns(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "s.db"))
    ages: list[float | None] = [None]
    health = Health(store, StoreHealth("tempfail"), 100, None, 1, lambda: ages[0], replica_stale_after=5.0)
    assert health.report()["status"] == "ok"  # not started: no RCPT looked up yet
    ages[0] = float("inf")
    assert health.report()["problems"] == ["suppression replica not built yet: every RCPT asks Redis"]
    ages[0] = 12.0
    report = health.report()
    assert report["status"] == "warning" and report["replica"] == {"started": True, "fresh": False, "age_seconds": 12.0}
    store.close()


def test_judge_makes_a_nagios_line() -> None:
    report = {"status": "warning", "problems": ["suppression replica stale (12 s since its last refresh)"],
              "store": {"reachable": True, "last_error": None}, "replica": {"age_seconds": 12.0},
              "config": {"generation": 3, "age_seconds": 60}}
    assert judge(report) == (1, "suppression replica stale (12 s since its last refresh); config generation 3, "
                                "loaded 60 s ago", "store_up=1;;1: config_age=60s generation=3 replica_age=12.0s")


class _Stub(BaseHTTPRequestHandler):
    answer: tuple[int, bytes] = (200, b"{}")

    def do_GET(self) -> None:  # noqa: N802
        code, body = self.answer
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


@pytest.fixture
def stub() -> Iterator[HTTPServer]:
    server = HTTPServer(("127.0.0.1", 0), _Stub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def health_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailflow", "health", *args], capture_output=True, text=True,
                          timeout=30, cwd=REPO)


@pytest.mark.parametrize(("code", "status", "exit_code"), [(200, "ok", 0), (200, "warning", 1), (503, "critical", 2)])
def test_health_cli_exit_codes(stub: HTTPServer, code: int, status: str, exit_code: int) -> None:
    _Stub.answer = (code, json.dumps({"status": status, "problems": [], "store": {"reachable": status != "critical"},
                                      "config": {"generation": 1, "age_seconds": 5}}).encode())
    run = health_cli("--url", f"http://127.0.0.1:{stub.server_address[1]}/health")
    assert run.returncode == exit_code and run.stderr == ""
    assert run.stdout.startswith(f"MAILFLOW {status.upper()} - ") and " | store_up=" in run.stdout
    assert run.stdout.count("\n") == 1


@pytest.mark.parametrize("args", [("--url", "ftp://127.0.0.1/health"), ("--bogus",), ("-c",), ("--timeout", "x"),
                                  ("-c", "/nonexistent.toml"), ("--url", "http://127.0.0.1:1/health")])
def test_health_cli_bad_input_is_unknown_not_critical(args: tuple[str, ...]) -> None:
    run = health_cli(*args)
    assert run.returncode == 3 and run.stdout.startswith("MAILFLOW UNKNOWN - ") and run.stdout.count("\n") == 1


def test_health_cli_answer_that_is_not_mailflows_is_unknown(stub: HTTPServer) -> None:
    _Stub.answer = (200, b"<html>hello</html>")
    run = health_cli("--url", f"http://127.0.0.1:{stub.server_address[1]}/health")
    assert run.returncode == 3 and "no health report" in run.stdout


def test_health_cli_without_metrics_listen_is_unknown(tmp_path: Path) -> None:
    cfg = tmp_path / "m.toml"
    cfg.write_text(f'[store]\nurl = "sqlite://{tmp_path}/s.db"\n')
    run = health_cli("-c", str(cfg))
    assert run.returncode == 3 and "metrics.listen is not set" in run.stdout
