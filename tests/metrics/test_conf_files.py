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

from mailflow.config import parse_config
from mailflow.feedback.follow import Follower
from mailflow.metrics.feedback import FeedbackCollector
from mailflow.metrics.rbl import RblCollector
from mailflow.metrics.reputation import MovesCollector
from mailflow.rbl.query import Observation, Poll, ZoneHealth
from mailflow.rbl.zones import Zone
from mailflow.store import open_store
from tests.helpers.prometheus import PROMTOOL
from tests.helpers.postfix import wait_for
from tests.helpers.servers import REPO
from tests.metrics.conftest import Running
from tests.metrics.test_recorder import send

RULES = REPO / "conf/prometheus/mailflow.rules.yml"
DASHBOARD = REPO / "conf/grafana/mailflow-dashboard.json"
NAME = re.compile(r"\bmailflow_[a-z0-9_]+")


def served_names(running: Running, tmp_path: Path) -> set[str]:
    """Every sample name the milter (on Redis: the replica's age too), the watcher and the log
    follower serve (a histogram's _bucket, _sum, _count)."""
    send(running, 1)
    wait_for(lambda: "mailflow_store_replica_age_seconds" in running.scrape(), timeout=10)
    names = {key.partition("{")[0] for key in running.scrape()}
    zone = Zone("zen.test", {"127.0.0.2": "SBL"})
    collector = RblCollector()
    collector.last = (Poll([Observation("192.0.2.4", zone, "listed")], [ZoneHealth(zone, False)]), 0.0)
    registry = CollectorRegistry()
    registry.register(collector)
    names |= set(NAME.findall(generate_latest(registry).decode()))
    return names | follower_names(tmp_path)


def follower_names(tmp_path: Path) -> set[str]:
    """`mailflow feedback follow`'s, from a follower started on an empty log (SQLite)."""
    (tmp_path / "mail.log").write_text("")
    config = parse_config({"store": {"url": f"sqlite://{tmp_path}/feedback.db"}})
    store = open_store(config.store.url)
    follower = Follower(config, store, str(tmp_path / "mail.log"))
    try:
        follower.start()
        registry = CollectorRegistry()
        registry.register(FeedbackCollector(follower))
        registry.register(MovesCollector())
        return set(NAME.findall(generate_latest(registry).decode()))
    finally:
        follower.close()
        store.close()


@pytest.mark.skipif(shutil.which(PROMTOOL) is None, reason="needs Debian's prometheus (make test installs it)")
def test_promtool_accepts_the_rules() -> None:
    run = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS" in run.stdout


FOLLOWER_TESTS = """
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:  # stuck: the log ahead, no batch; busy: a batch each minute; quiet: nothing to read
      - {series: 'mailflow_feedback_lag_bytes{instance="stuck",job="mailflow-feedback"}', values: '500+0x30'}
      - {series: 'mailflow_feedback_last_batch_timestamp_seconds{instance="stuck",job="mailflow-feedback"}', values: '0+0x30'}
      - {series: 'mailflow_feedback_lag_bytes{instance="busy",job="mailflow-feedback"}', values: '500+0x30'}
      - {series: 'mailflow_feedback_last_batch_timestamp_seconds{instance="busy",job="mailflow-feedback"}', values: '0+60x30'}
      - {series: 'mailflow_feedback_lag_bytes{instance="quiet",job="mailflow-feedback"}', values: '0+0x30'}
      - {series: 'mailflow_feedback_last_batch_timestamp_seconds{instance="quiet",job="mailflow-feedback"}', values: '0+0x30'}
      - {series: 'up{instance="stuck",job="mailflow-feedback"}', values: '1+0x30'}
      - {series: 'up{instance="gone",job="mailflow-feedback"}', values: '1 1 0+0x28'}
    alert_rule_test:
      - {eval_time: 14m, alertname: MailflowFeedbackFollowerStalled, exp_alerts: []}
      - eval_time: 20m
        alertname: MailflowFeedbackFollowerStalled
        exp_alerts:
          - exp_labels: {severity: warning, instance: stuck, job: mailflow-feedback}
            exp_annotations: {summary: "mailflow feedback follow on stuck: 500B of the log unread, no batch for 10 minutes"}
      - eval_time: 10m
        alertname: MailflowFeedbackFollowerDown
        exp_alerts:
          - exp_labels: {severity: warning, instance: gone, job: mailflow-feedback}
            exp_annotations: {summary: "mailflow feedback follow on gone does not answer scrapes"}
"""


@pytest.mark.skipif(shutil.which(PROMTOOL) is None, reason="needs Debian's prometheus (make test installs it)")
def test_promtool_fires_the_follower_alerts_only_when_it_stopped(tmp_path: Path) -> None:
    tests = yaml.safe_load(FOLLOWER_TESTS)
    rules = {rule.get("alert"): rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]}
    for case in tests["tests"][0]["alert_rule_test"]:  # promtool compares every annotation
        for alert in case["exp_alerts"]:
            alert["exp_annotations"]["description"] = rules[case["alertname"]]["annotations"]["description"]
    tests["rule_files"] = [str(RULES)]
    (tmp_path / "follower.test.yml").write_text(yaml.safe_dump(tests))
    run = subprocess.run([PROMTOOL, "test", "rules", str(tmp_path / "follower.test.yml")], capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr


def test_rules_and_dashboard_name_only_served_metrics(running_redis: Running, tmp_path: Path) -> None:
    served = served_names(running_redis, tmp_path)
    rules = [rule["expr"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    named = {name for expr in rules + panels for name in NAME.findall(expr)}
    assert named - served == set()
    # Every alert the brief asks for is there, and the dashboard shows what an admin looks at first.
    alerts = {rule["alert"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]}
    assert {"MailflowDown", "MailflowStoreErrors", "MailflowStoreLatencyHigh", "MailflowReplicaStale",
            "MailflowAccountHeld", "MailflowDnsblListed", "MailflowDnsblBlindZone", "MailflowFeedbackFollowerDown",
            "MailflowFeedbackFollowerStalled"} <= alerts
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
