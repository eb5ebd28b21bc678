"""Logs an admin can ship: JSON lines a log shipper parses as they are, key=value lines of one
shape, a syslog that is not there, and a why= an admin can act on for every refusal."""

from __future__ import annotations

import json
import logging
import re
import socket
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from mailflow.cli import main
from mailflow.config import parse_config
from mailflow.forgery.names import RULES
from mailflow.log import envelope_address, log, log_decision, setup_logging
from mailflow.model import Client
from mailflow.why import WHY
from tests.helpers.adversarial import SASL, Case, Rig, corpus

REPO = Path(__file__).resolve().parents[2]
# Small limits, a protected brand: the corpus meets rate limits, suppressions and forgery refusals.
OVERRIDES = {"ratelimit": {"limits": ["5/hour"]}}
KV_PAIR = re.compile(r'([a-z_0-9]+)=("(?:[^"\\]|\\.)*"|\S+)(?: |$)')
STDERR_PREFIX = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} mailflow\[\d+\] (INFO|WARNING|ERROR|DEBUG) ")


@pytest.fixture
def captured(capsys: pytest.CaptureFixture[str]) -> Iterator[pytest.CaptureFixture[str]]:
    """stderr as setup_logging's handler sees it (capsys's); the mailflow logger restored afterwards."""
    logger = logging.getLogger("mailflow")
    saved = logger.handlers[:], logger.level, logger.propagate
    yield capsys
    for handler in logger.handlers:
        if handler not in saved[0]:
            handler.close()  # a syslog handler holds a socket
    logger.handlers[:], logger.propagate = saved[0], saved[2]
    logger.setLevel(saved[1])


def drive(tmp_path: Path, log_format: str, stream: pytest.CaptureFixture[str]) -> list[str]:
    setup_logging(parse_config({"log": {"format": log_format}}).log)
    rig = Rig(f"sqlite://{tmp_path}/state.db", OVERRIDES)
    try:
        for case in corpus()[:40]:
            rig.judge(case)
        message, _ = rig.engine.mail(SASL, "<bob@shop.example>", "bob@shop.example", conn_id="c1", queue_id="4QID1")
        rig.engine.rcpt(SASL, message, "<someone@dest.example>", conn_id="c1")  # suppressed: refused at RCPT
        null, _ = rig.engine.mail(Client(address="203.0.113.9", port=4000), "", "bob@shop.example", conn_id="c2")
        rig.engine.rcpt(SASL, null, "<x@dest.example>", conn_id="c2")
        try:
            raise RuntimeError("boom redis://u:secret@h/0")
        except RuntimeError:
            log.exception("internal error in test")
    finally:
        rig.close()
    return stream.readouterr().err.splitlines()


def test_json_lines_are_one_object_each_with_time_level_and_every_field(tmp_path: Path,
                                                                        captured: pytest.CaptureFixture[str]) -> None:
    lines = drive(tmp_path, "json", captured)
    objects = [json.loads(line) for line in lines]  # every line, and nothing before its `{`
    assert all(line.startswith("{") for line in lines)
    for obj in objects:
        stamp = datetime.fromisoformat(obj["time"])
        assert stamp.utcoffset() == timedelta(0), obj["time"]
        assert obj["level"] in ("info", "warning", "error") and obj["logger"].startswith("mailflow")
        assert isinstance(obj["message"], str) and obj["message"]
    decisions = [obj for obj in objects if obj["logger"] == "mailflow.decision"]
    assert len(decisions) >= 40
    assert all(obj["sender"].startswith("<") and obj["sender"].endswith(">") for obj in decisions if "sender" in obj)
    assert any(obj["sender"] == "<>" for obj in decisions)
    refusals = [obj for obj in decisions if obj.get("action") in ("reject", "tempfail", "hold")]
    assert {obj["reason"] for obj in refusals} >= {"suppressed", "ratelimit"}
    assert all(obj["why"] == WHY[obj["reason"]] for obj in refusals)
    assert any(obj.get("qid") == "4QID1" and obj["stage"] == "rcpt" for obj in decisions)
    crash = [obj for obj in objects if obj["message"] == "internal error in test"]
    assert len(crash) == 1 and "RuntimeError" in crash[0]["exception"] and "secret" not in lines[-1]


def test_kv_lines_keep_their_shape(tmp_path: Path, captured: pytest.CaptureFixture[str]) -> None:
    lines = drive(tmp_path, "kv", captured)
    decisions = [line for line in lines if STDERR_PREFIX.match(line) and "stage=" in line]
    assert len(decisions) >= 40
    for line in decisions:
        body = STDERR_PREFIX.sub("", line)
        pairs = KV_PAIR.findall(body)
        assert " ".join(f"{k}={v}" for k, v in pairs) == body, line  # nothing but key=value pairs
        fields = {k: json.loads(v) if v.startswith('"') else v for k, v in pairs}
        assert fields["sender"].startswith("<") and fields["sender"].endswith(">"), line
        if fields["action"] in ("reject", "tempfail", "hold"):
            assert fields["why"] == WHY[fields["reason"]], line
    assert any("sender=<>" in line for line in decisions)
    assert any("qid=4QID1" in line and "stage=rcpt" in line for line in decisions)


def test_every_refusal_reason_in_the_code_has_an_explanation() -> None:
    source = "\n".join(path.read_text() for path in (REPO / "mailflow").rglob("*.py"))
    reasons = set(re.findall(r'Decision\(\s*Verdict\.(?:TEMPFAIL|REJECT|HOLD),\s*"(\w+)"', source))
    reasons |= set(re.findall(r'Refusal\([^()]*(?:\([^()]*\))?[^()]*,\s*"(\w+)"', source))
    reasons |= set(re.findall(r'error_decision\("(\w+)"\)', source))
    reasons |= set(re.findall(r'^\s+"([a-z_]+)",\s*$', (REPO / "mailflow/ratelimit/policy.py").read_text(), re.M))
    reasons |= set(RULES) | {"missing_unsubscribe"}
    assert {"store_error", "internal_error", "local_smtp", "trusted_unmapped", "ratelimit", "over_capacity"} <= reasons
    assert reasons - set(WHY) == set()
    assert {f"{what}_accepted" for what in ("store_error", "internal_error")} <= set(WHY)


def test_syslog_without_a_socket_warns_once_then_stderr(tmp_path: Path, captured: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no-syslog" / "log"
    settings = parse_config({"log": {"target": "syslog", "syslog_socket": str(missing)}}).log
    assert settings.syslog_socket == str(missing)
    setup_logging(settings)
    for i in range(5):
        log.info("line %d", i)
    err = captured.readouterr().err
    lines = err.splitlines()
    assert [line for line in lines if "warning" in line] == [
        f"mailflow: warning: log.target: syslog unavailable ({missing}: No such file or directory); logging to stderr"]
    assert len(lines) == 6 and "Traceback" not in err
    # check-config says so too (and the config still passes)
    path = tmp_path / "syslog.toml"
    path.write_text(f'[store]\nurl = "sqlite://{tmp_path}/state.db"\n'
                    f'[log]\ntarget = "syslog"\nsyslog_socket = "{missing}"\n')
    main(["check-config", "-c", str(path)])
    assert "log.target: syslog is unavailable" in captured.readouterr().err.splitlines()[-1]


def test_syslog_going_away_warns_once_per_outage_never_a_traceback(tmp_path: Path, captured: pytest.CaptureFixture[str]) -> None:
    path = str(tmp_path / "log")
    daemon = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    daemon.bind(path)
    daemon.settimeout(2)
    setup_logging(parse_config({"log": {"target": "syslog", "syslog_socket": path, "format": "json"}}).log)
    log.info("to syslog")
    received = daemon.recv(4096).decode()
    assert re.match(r"<\d+>mailflow\[\d+\]: \{", received)
    assert json.loads(received.split(": ", 1)[1].rstrip("\0"))["message"] == "to syslog"
    daemon.close()
    Path(path).unlink()
    for i in range(3):
        log.info("lost %d", i)
    err = captured.readouterr().err
    assert err.count("warning: syslog") == 1 and "Traceback" not in err
    assert all(f'"lost {i}"' in err for i in range(3))


@pytest.mark.parametrize("form", ["kv", "json"])
def test_a_sender_that_is_not_utf8_still_reaches_syslog(tmp_path: Path, form: str,
                                                        captured: pytest.CaptureFixture[str]) -> None:
    """The client's bytes arrive as lone surrogates: the decision line must reach syslog (escaped),
    never be dropped with an encoding error, or a client could keep its decisions out of the log."""
    path = str(tmp_path / "log")
    daemon = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    daemon.bind(path)
    daemon.settimeout(2)
    try:
        setup_logging(parse_config({"log": {"target": "syslog", "syslog_socket": path, "format": form}}).log)
        sender = b"x\xff@shop.example".decode("utf-8", "surrogateescape")
        log_decision(stage="mail", sender=envelope_address(sender), action="reject", reason="from_domain")
        received = daemon.recv(4096).decode("utf-8")
    finally:
        daemon.close()
    assert "\\udcff@shop.example" in received and "reason" in received
    assert "warning" not in captured.readouterr().err


def test_a_rate_limit_refusal_points_at_status_and_grants() -> None:
    """A new admin reading the log line should find the command that raises a limit for a day."""
    assert "mailflow ratelimit status" in WHY["ratelimit"] and "mailflow ratelimit grant" in WHY["ratelimit"]
