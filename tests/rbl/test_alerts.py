"""Alert e-mail gets past mailflow's own refusal of unauthenticated loopback SMTP: SMTP AUTH
(STARTTLS when offered) through smtp_relay, or local submission through sendmail (review P1.3).
The relay is a loopback sink (tests/helpers/smtp_sink.py), never a real mail host."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mailflow.config import ConfigError, RblSettings, parse_config
from mailflow.rbl.alerts import Alerter
from tests.helpers.smtp_sink import AuthSink

ALERT = {"event": "listed", "ip": "192.0.2.50", "zone": "zen.test", "codes": ["127.0.0.4"], "reason": "exploited host"}
PASSWORD = "s3cret pass/#?@"


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "smtp.pw"
    path.write_text(PASSWORD + "\n")
    path.chmod(0o600)
    return path


def settings(**alerts: Any) -> RblSettings:
    return parse_config({"rbl": {"alerts": {"email_to": ["postmaster@provider.example"],
                                            "email_from": "mailflow@mx1.provider.example", **alerts}}}).rbl


@pytest.fixture
def sink() -> Iterator[AuthSink]:
    server = AuthSink("alerts@provider.example", PASSWORD)
    yield server
    server.close()


def test_without_auth_the_relay_refuses_and_the_failure_is_logged(sink: AuthSink,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="mailflow"):
        Alerter(settings(smtp_relay=f"127.0.0.1:{sink.port}"), timeout=5).send(ALERT)
    assert sink.received == []
    assert "alert e-mail through 127.0.0.1" in caplog.text and "Unauthenticated SMTP" in caplog.text


def test_smtp_auth_gets_the_alert_through(sink: AuthSink, password_file: Path) -> None:
    Alerter(settings(smtp_relay=f"127.0.0.1:{sink.port}", smtp_user="alerts@provider.example",
                     smtp_password_file=str(password_file)), timeout=5).send(ALERT)
    [mail] = sink.received
    assert (mail.login, mail.sender, mail.recipients) == (
        "alerts@provider.example", "<mailflow@mx1.provider.example>", ["<postmaster@provider.example>"])
    assert b"Subject: [mailflow] 192.0.2.50 listed on zen.test" in mail.data and b"exploited host" in mail.data


def test_starttls_is_used_when_offered(tmp_path: Path, password_file: Path) -> None:
    sink = AuthSink("alerts@provider.example", PASSWORD, tls_dir=tmp_path)
    try:
        Alerter(settings(smtp_relay=f"127.0.0.1:{sink.port}", smtp_user="alerts@provider.example",
                         smtp_password_file=str(password_file)), timeout=5).send(ALERT)
    finally:
        sink.close()
    [mail] = sink.received
    assert mail.tls and mail.login == "alerts@provider.example"


def _stub_sendmail(tmp_path: Path, exit_code: int = 0) -> Path:
    """Records its arguments and the message, as a local sendmail would take them."""
    stub = tmp_path / "sendmail"
    stub.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{tmp_path}/args"\ncat > "{tmp_path}/message"\n'
                    f'[ {exit_code} -eq 0 ] || echo "sendmail: fatal: no such user" >&2\nexit {exit_code}\n')
    stub.chmod(0o755)
    return stub


def test_sendmail_submits_the_alert_locally(tmp_path: Path) -> None:
    Alerter(settings(sendmail=str(_stub_sendmail(tmp_path))), timeout=5).send(ALERT)
    assert (tmp_path / "args").read_text().splitlines() == [
        "-oi", "-f", "mailflow@mx1.provider.example", "--", "postmaster@provider.example"]
    message = (tmp_path / "message").read_text()
    assert "Subject: [mailflow] 192.0.2.50 listed on zen.test" in message and "To: postmaster@provider.example" in message


def test_a_failing_sendmail_is_logged_with_what_it_said(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="mailflow"):
        Alerter(settings(sendmail=str(_stub_sendmail(tmp_path, 75))), timeout=5).send(ALERT)
    assert "exit 75: sendmail: fatal: no such user" in caplog.text


@pytest.mark.parametrize("alerts, needle", [
    ({"smtp_relay": "127.0.0.1:25", "smtp_user": "u"}, "needs both smtp_user and smtp_password_file"),
    ({"smtp_relay": "127.0.0.1:25", "smtp_user": "u", "smtp_password_file": "pw"}, "not an absolute path"),
    ({"smtp_relay": "127.0.0.1:25", "sendmail": "/usr/sbin/sendmail"}, "exactly one of smtp_relay or sendmail"),
    ({}, "exactly one of smtp_relay or sendmail"),
    ({"sendmail": "/nonexistent/sendmail"}, "not an executable file"),
])
def test_alert_transport_mistakes_are_named(alerts: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        settings(**alerts)


def test_a_password_file_others_can_read_is_refused(password_file: Path) -> None:
    os.chmod(password_file, 0o644)
    with pytest.raises(ConfigError, match="SMTP password file .* is mode 0644: readable by others"):
        settings(smtp_relay="127.0.0.1:25", smtp_user="u", smtp_password_file=str(password_file))
    assert PASSWORD not in repr(RblSettings(smtp_password=PASSWORD))
