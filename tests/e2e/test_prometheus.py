"""A real Prometheus scrapes a milter that a real Postfix drives, and the DNSBL watcher: the
counts it stores are the ones the test caused, through a reload under scrape too."""

from __future__ import annotations

import signal
import smtplib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from tests.helpers import postfix, prometheus
from tests.helpers.dns_server import dns_server
from tests.helpers.postfix import PrivatePostfix, empty_store_url, wait_for
from tests.helpers.prometheus import PrivatePrometheus
from tests.helpers.servers import REPO, MilterProcess, free_port, wait_for_port

pytestmark = [
    pytest.mark.postfix,
    pytest.mark.skipif(not postfix.available(), reason="needs root and Debian's postfix (make test installs it)"),
    pytest.mark.skipif(not prometheus.available(), reason="needs Debian's prometheus (make test installs it)"),
]

LIMIT = 4  # recipients per hour for each account
USERS = {"bob@shop.example": "secret", "ann@blog.example": "secret"}
MESSAGE = "From: {sender}\nTo: someone@dest.example\nSubject: metrics\n\nhello\n"


@pytest.fixture(params=["sqlite", "redis"])
def rig(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[PrivatePostfix, MilterProcess, PrivatePrometheus, int]]:
    store = empty_store_url(request.param, tmp_path, request)
    metrics_port = free_port()
    config: dict[str, Any] = {"store": {"url": store}, "ratelimit": {"limits": [f"{LIMIT}/hour"]},
                              "metrics": {"listen": f"127.0.0.1:{metrics_port}"}}
    milter = MilterProcess(tmp_path, config).start()
    try:
        wait_for_port(metrics_port, timeout=30)
        mta = PrivatePostfix(milter.port, sasl_users=USERS).start()
        try:
            with prometheus.prometheus(tmp_path, {"mailflow": metrics_port}) as prom:
                yield mta, milter, prom, metrics_port
        finally:
            mta.stop()
    finally:
        milter.stop(graceful=True)


def send(mta: PrivatePostfix, login: str, count: int) -> int:
    """`count` one-recipient messages; how many the milter refused at RCPT."""
    refused = 0
    with mta.smtp() as smtp:
        smtp.login(login, USERS[login])
        for i in range(count):
            try:
                smtp.sendmail(login, [f"r{i}@dest.example"], MESSAGE.format(sender=login))
            except smtplib.SMTPRecipientsRefused:
                refused += 1
    return refused


def test_prometheus_scrapes_the_counts_postfix_caused_through_a_reload(
        rig: tuple[PrivatePostfix, MilterProcess, PrivatePrometheus, int]) -> None:
    mta, milter, prom, metrics_port = rig
    prom.wait_for('up{job="mailflow"}', 1)
    assert send(mta, "bob@shop.example", LIMIT + 2) == 2  # the last two do not fit this hour
    prom.wait_for('mailflow_recipients_total{outcome="accepted"}', LIMIT)
    prom.wait_for('mailflow_recipients_total{outcome="refused"}', 2)
    assert prom.value('mailflow_ratelimit_refusals_total{stage="rcpt",reason="ratelimit"}') == 2
    assert prom.value('mailflow_decisions_total{stage="rcpt",action="tempfail",reason="ratelimit"}') == 2
    assert prom.value('sum(mailflow_decisions_total{stage="eom"})') == LIMIT
    assert prom.value("mailflow_policy_seconds_count") == LIMIT
    assert (prom.value("mailflow_store_roundtrip_seconds_count") or 0) >= LIMIT  # a debit per message at least
    assert prom.value("mailflow_store_errors_total") == 0
    assert prom.value("mailflow_store_up") == 1 and prom.value("mailflow_held_accounts") == 0
    assert prom.value('count(mailflow_build_info{version!=""})') == 1

    # A reload under scrape: a new worker, the same counts, no counter reset.
    assert milter.proc is not None
    milter.proc.send_signal(signal.SIGHUP)
    prom.wait_for("mailflow_config_generation", 2)
    assert send(mta, "ann@blog.example", 2) == 0
    prom.wait_for('mailflow_recipients_total{outcome="accepted"}', LIMIT + 2)
    assert prom.value('resets(mailflow_recipients_total{outcome="accepted"}[5m])') == 0
    assert prom.value('resets(mailflow_decisions_total{stage="eom",reason="ok"}[5m])') == 0
    assert prom.value('mailflow_recipients_total{outcome="refused"}') == 2

    # The Nagios check reads the same milter's /health.
    check = subprocess.run([sys.executable, "-m", "mailflow", "health", "--url",
                            f"http://127.0.0.1:{metrics_port}/health"], capture_output=True, text=True, timeout=30,
                           cwd=REPO)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.startswith("MAILFLOW OK - store reachable; config generation 2") and "| store_up=1" in check.stdout


def test_prometheus_scrapes_the_dnsbl_watcher(tmp_path: Path) -> None:
    """Listed per zone and blind zones, from `mailflow rbl watch`'s own listener."""
    from mailflow.rbl.zones import Zone

    def rev(ip: str, zone: str) -> str:
        return Zone(zone, {}).query_name(ip).lower()

    port = free_port()
    with dns_server() as dns:
        dns.records[rev("127.0.0.2", "zen.test")] = {"A": ["127.0.0.2"], "TXT": ["test point"]}
        dns.records[rev("192.0.2.4", "zen.test")] = {"A": ["127.0.0.4"], "TXT": ["listed"]}
        dns.wildcards["dead.test"] = {"A": ["127.0.0.2"]}  # lists the world, test points too: blind
        config = tmp_path / "rbl.toml"
        config.write_text(tomli_w.dumps({
            "store": {"url": f"sqlite://{tmp_path}/rbl.db"},
            "metrics": {"rbl_listen": f"127.0.0.1:{port}"},
            "rbl": {"ips": ["192.0.2.4", "192.0.2.5"], "nameservers": [f"127.0.0.1:{dns.server_address[1]}"],
                    "timeout_ms": 500, "interval": "1s", "use_default_zones": False,
                    "zones": [{"name": "zen.test", "codes": {"127.0.0.2": "SBL", "127.0.0.4": "XBL"}}, {"name": "dead.test", "codes": {"127.0.0.2": "all"}}]}}))
        with open(tmp_path / "watch.log", "wb") as log:
            watcher = subprocess.Popen([sys.executable, "-m", "mailflow", "rbl", "watch", "-c", str(config)],
                                       stdout=subprocess.DEVNULL, stderr=log, cwd=REPO)
        try:
            wait_for_port(port, timeout=30, proc=watcher)
            with prometheus.prometheus(tmp_path, {"mailflow-rbl": port}) as prom:
                prom.wait_for('mailflow_dnsbl_listed_ips{zone="zen.test"}', 1)
                prom.wait_for('mailflow_dnsbl_zone_blind{zone="dead.test"}', 1)
                assert prom.value('mailflow_dnsbl_zone_blind{zone="zen.test"}') == 0
                wait_for(lambda: (prom.value("time() - mailflow_dnsbl_last_poll_timestamp_seconds") or 99) < 10)
        finally:
            watcher.terminate()
            watcher.wait(timeout=15)
