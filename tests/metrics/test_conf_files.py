"""The shipped alerting rules pass promtool, and they and the Grafana dashboard name only
metrics mailflow serves."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from mailflow.metrics.rbl import RblCollector
from mailflow.rbl.query import Observation, Poll, ZoneHealth
from mailflow.rbl.zones import Zone
from tests.helpers.prometheus import PROMTOOL
from tests.helpers.postfix import wait_for
from tests.helpers.servers import REPO
from tests.metrics.conftest import Running
from tests.metrics.test_recorder import send

RULES = REPO / "conf/prometheus/mailflow.rules.yml"
DASHBOARD = REPO / "conf/grafana/mailflow-dashboard.json"
NAME = re.compile(r"\bmailflow_[a-z0-9_]+")


def served_names(running: Running) -> set[str]:
    """Every sample name the milter (on Redis: the replica's age too) and the watcher serve (a
    histogram's _bucket, _sum, _count)."""
    send(running, 1)
    wait_for(lambda: "mailflow_store_replica_age_seconds" in running.scrape(), timeout=10)
    names = {key.partition("{")[0] for key in running.scrape()}
    zone = Zone("zen.test", {"127.0.0.2": "SBL"})
    collector = RblCollector()
    collector.last = (Poll([Observation("192.0.2.4", zone, "listed")], [ZoneHealth(zone, False)]), 0.0)
    registry = CollectorRegistry()
    registry.register(collector)
    names |= set(NAME.findall(generate_latest(registry).decode()))
    return names


@pytest.mark.skipif(shutil.which(PROMTOOL) is None, reason="needs Debian's prometheus (make test installs it)")
def test_promtool_accepts_the_rules() -> None:
    run = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS" in run.stdout


def test_rules_and_dashboard_name_only_served_metrics(running_redis: Running) -> None:
    served = served_names(running_redis)
    rules = [rule["expr"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    named = {name for expr in rules + panels for name in NAME.findall(expr)}
    assert named - served == set()
    # Every alert the brief asks for is there, and the dashboard shows what an admin looks at first.
    alerts = {rule["alert"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]}
    assert {"MailflowDown", "MailflowStoreErrors", "MailflowStoreLatencyHigh", "MailflowReplicaStale",
            "MailflowAccountHeld", "MailflowDnsblListed", "MailflowDnsblBlindZone"} <= alerts
    assert {"mailflow_decisions_total", "mailflow_store_roundtrip_seconds_bucket", "mailflow_held_accounts",
            "mailflow_dnsbl_listed_ips", "mailflow_policy_seconds_bucket"} <= {n for e in panels for n in NAME.findall(e)}


def test_dashboard_is_grafana_json() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] == "mailflow" and dashboard["uid"] and dashboard["schemaVersion"] >= 30
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["type"] == "timeseries" and panel["targets"] and set(panel["gridPos"]) == {"h", "w", "x", "y"}
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"datasource", "instance"}


def test_the_rules_file_is_in_the_repository() -> None:
    assert Path(RULES).is_file() and Path(DASHBOARD).is_file()
