"""The watcher: alerts exactly once per transition, shared state, webhook and e-mail delivery."""

from __future__ import annotations

import http.server
import json
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mailflow.config import RblSettings
from mailflow.rbl.alerts import Alerter
from mailflow.rbl.state import ip_step, zone_step
from mailflow.rbl.watch import apply_cycle, run_poll
from mailflow.store import Store, open_store
from tests.helpers.servers import free_port, wait_for_port
from tests.rbl.conftest import config_file, rbl_settings, rev, run_mailflow

IP = "192.0.2.50"


class Recorder(Alerter):
    def __init__(self, settings: RblSettings) -> None:
        super().__init__(settings)
        self.sent: list[dict[str, Any]] = []

    def send(self, alert: dict[str, Any]) -> None:
        self.sent.append(alert)
        super().send(alert)


def test_transitions_are_pure_and_hysteretic() -> None:
    assert ip_step(None, "clean", 100, 3).alert is None
    listed = ip_step("clean", "listed", 100, 3)
    assert listed == ip_step(None, "listed", 100, 3) and listed.alert == "listed"
    assert ip_step(listed.new_state, "listed", 200, 3).alert is None
    once = ip_step(listed.new_state, "clean", 300, 3)
    assert once.alert is None and once.new_state == "listed:100:1"
    assert ip_step(once.new_state, "listed", 301, 3).new_state == "listed:100:0"  # the streak resets
    twice = ip_step(once.new_state, "clean", 400, 3)
    assert ip_step(twice.new_state, "clean", 500, 3).alert == "delisted"
    assert ip_step("listed:1:0", "unknown", 5, 3).new_state == "listed:1:0"
    assert zone_step(None, True, 1).alert == "blind" and zone_step("blind:1", True, 2).alert is None
    assert zone_step("blind:1", False, 3).alert == "recovered" and zone_step("ok", False, 3).alert is None


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = open_store(store_url, timeout_ms=2000)
    yield s
    s.close()


def test_one_alert_per_transition(dns: Any, store: Store) -> None:
    settings = rbl_settings(dns, [IP], clean_polls_to_delist=3)
    alerter = Recorder(settings)

    def cycle() -> list[str]:
        return [a["event"] for a in apply_cycle(settings, store, alerter, run_poll(settings), int(time.time()))]

    assert cycle() == []  # clean from the start: nothing to say
    dns.records[rev(IP, "zen.test")] = {"A": ["127.0.0.2"], "TXT": ["spam seen from 192.0.2.50"]}
    store.add_sent({(int(time.time()) // 3600, "spammy.example"): 500, (int(time.time()) // 3600, "quiet.example"): 3})
    assert cycle() == ["listed"]
    listing = alerter.sent[-1]
    assert listing["reason"] == "spam seen from 192.0.2.50" and listing["delist_url"] == "https://check.test/"
    assert listing["suspects"][:2] == [{"account": "spammy.example", "sent": 500}, {"account": "quiet.example", "sent": 3}]
    assert cycle() == []  # still listed: no news
    del dns.records[rev(IP, "zen.test")]
    assert cycle() == [] and cycle() == []  # clean once, twice: not yet
    assert cycle() == ["delisted"]
    assert cycle() == []


def test_blind_and_recovered(dns: Any, store: Store) -> None:
    settings = rbl_settings(dns, [IP], ["flaky.test"])
    alerter = Recorder(settings)
    dns.wildcards["flaky.test"] = {"A": ["127.0.0.2"]}
    apply_cycle(settings, store, alerter, run_poll(settings), 1000)
    apply_cycle(settings, store, alerter, run_poll(settings), 1300)
    dns.wildcards.clear()
    dns.records[rev("127.0.0.2", "flaky.test")] = {"A": ["127.0.0.2"]}
    apply_cycle(settings, store, alerter, run_poll(settings), 1600)
    assert [(a["event"], a["zone"]) for a in alerter.sent] == [("blind", "flaky.test"), ("recovered", "flaky.test")]


def test_two_watchers_on_one_redis_alert_once(dns: Any, redis_url: str) -> None:
    settings = rbl_settings(dns, [IP])
    dns.records[rev(IP, "zen.test")] = {"A": ["127.0.0.2"]}
    stores = [open_store(redis_url), open_store(redis_url)]
    alerters = [Recorder(settings), Recorder(settings)]
    barrier = threading.Barrier(2)

    def watcher(i: int) -> None:
        result = run_poll(settings)
        barrier.wait(timeout=10)
        apply_cycle(settings, stores[i], alerters[i], result, int(time.time()))

    threads = [threading.Thread(target=watcher, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sum(len(a.sent) for a in alerters) == 1
    for s in stores:
        s.close()


class _Hook(http.server.BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Hook.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.skipif(shutil.which("smtp-sink") is None, reason="smtp-sink ships with Postfix (make test installs it)")
def test_webhook_and_email_alerts_are_delivered(dns: Any, tmp_path: Path) -> None:
    hook = http.server.HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    smtp_port = free_port()
    # smtp-sink drops root privileges; its dump folder must be reachable by that user.
    dumps = Path(tempfile.mkdtemp(prefix="mailflow-alert-mail-"))
    dumps.chmod(0o777)
    sink = subprocess.Popen(["smtp-sink", "-u", "postfix", "-d", f"{dumps}/%H%M%S.", f"127.0.0.1:{smtp_port}", "8"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(smtp_port)
        settings = rbl_settings(dns, [IP], alerts={
            "webhook": f"http://127.0.0.1:{hook.server_address[1]}/hook",
            "email_to": ["postmaster@provider.example"], "smtp_relay": f"127.0.0.1:{smtp_port}",
            "email_from": "mailflow@mx1.provider.example"})
        dns.records[rev(IP, "zen.test")] = {"A": ["127.0.0.4"], "TXT": ["exploited host"]}
        store = open_store(f"sqlite://{tmp_path}/s.db")
        apply_cycle(settings, store, Alerter(settings), run_poll(settings), int(time.time()))
        store.close()
        assert [(a["event"], a["ip"], a["codes"], a["reason"]) for a in _Hook.received] == [
            ("listed", IP, ["127.0.0.4"], "exploited host")]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not list(dumps.iterdir()):
            time.sleep(0.1)
        [mail] = list(dumps.iterdir())
        text = mail.read_text()
        assert "Subject: [mailflow] 192.0.2.50 listed on zen.test" in text and "exploited host" in text
        assert "X-Rcpt-Args: <postmaster@provider.example>" in text
    finally:
        hook.shutdown()
        hook.server_close()
        sink.kill()
        sink.wait(timeout=5)
        shutil.rmtree(dumps, ignore_errors=True)


def test_watch_logs_an_unwatched_ip_at_start_and_in_every_cycle(dnsbl: Any, tmp_path: Path) -> None:
    cfg = config_file(tmp_path, dnsbl, [IP, "2001:db8::1"], interval="1s")
    with cfg.open("a") as f:
        f.write(f'[store]\nurl = "sqlite://{tmp_path}/rbl.db"\n')
    run = run_mailflow("rbl", "watch", "--cycles", "2", "-c", str(cfg))
    assert run.returncode == 0, run.stderr
    lines = run.stderr.splitlines()
    [start] = [line for line in lines if "event=rbl_unwatched" in line]
    cycles = [line for line in lines if "event=rbl_cycle" in line]
    assert lines.index(start) < lines.index(cycles[0]) and len(cycles) == 2
    for line in (start, *cycles):
        assert " WARNING " in line and "2001:db8::1" in line and "no configured zone lists IPv6 addresses" in line
    for line in cycles:
        assert "state=UNKNOWN" in line and "unwatched=1" in line and "clean=1" in line
