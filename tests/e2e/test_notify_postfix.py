"""Notifications through a real Postfix, on both stores: an account with a 2/hour limit sends 5
messages -> one limit_near and exactly one limit_refused webhook; an account held by a spam-trap
hit -> account_held; `mailflow account release` -> account_released. Every body signed."""

from __future__ import annotations

import smtplib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import postfix
from tests.helpers.postfix import empty_store_url, running_rig, wait_for
from tests.helpers.servers import MilterProcess
from tests.helpers.webhook_receiver import SECRET, WebhookReceiver, write_secret

pytestmark = [
    pytest.mark.postfix,
    pytest.mark.skipif(not postfix.available(), reason="needs root and Debian's postfix (make test installs it)"),
]

USERS = {"bob@shop.example": "secret", "carol@trapped.example": "secret"}


def notify_config(store: str, tmp_path: Path, receiver: WebhookReceiver) -> dict[str, Any]:
    secret = write_secret(tmp_path)
    return {
        "store": {"url": store},
        "ratelimit": {"limits": ["2/hour"]},
        "suppression": {"hash_key_env": "MAILFLOW_SUPPRESSION_KEY", "trap_hits_before_hold": 1},
        "notify": {"webhook": receiver.url, "webhook_secret_file": str(secret), "webhook_backoff_ms": 100},
    }


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver()
    yield server
    server.close()


def cli(milter: MilterProcess, *args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "mailflow", *args, "-c", str(milter.config_path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def message(sender: str) -> str:
    return f"From: {sender}\nSubject: notify e2e\n\nhello\n"


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_limit_and_hold_notices_through_postfix(backend: str, tmp_path: Path, receiver: WebhookReceiver,
                                                request: pytest.FixtureRequest) -> None:
    store = empty_store_url(backend, tmp_path, request)
    with running_rig(tmp_path, notify_config(store, tmp_path, receiver), USERS) as (mta, milter):
        cli(milter, "suppress", "add", "--reason", "trap", "spamtrap@traps.example")
        refused = 0
        for i in range(5):
            with mta.smtp() as smtp:
                smtp.login("bob@shop.example", "secret")
                try:
                    smtp.sendmail("bob@shop.example", [f"r{i}@dest.example"], message("bob@shop.example"))
                except smtplib.SMTPRecipientsRefused as exc:
                    assert exc.recipients[f"r{i}@dest.example"][0] == 451
                    refused += 1
        assert refused == 3

        with mta.smtp() as smtp:  # one trap hit holds the account (trap_hits_before_hold = 1)
            smtp.login("carol@trapped.example", "secret")
            smtp.sendmail("carol@trapped.example", ["spamtrap@traps.example", "friend@dest.example"],
                          message("carol@trapped.example"))
        wait_for(lambda: len(mta.hold()) == 1)
        # The CLI sends its own notice before it exits; it releases the held message from this Postfix.
        with_queue = milter.config_path.with_name("cli.toml")
        with_queue.write_text(milter.config_path.read_text() + f'\n[accounts]\npostfix_config_dir = "{mta.etc}"\n')
        result = subprocess.run([sys.executable, "-m", "mailflow", "account", "release", "trapped.example",
                                 "-c", str(with_queue)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert "1 released" in result.stdout

        wait_for(lambda: len(receiver.received) >= 4)
        time.sleep(1.0)  # room for any duplicate to arrive
    bodies = receiver.events(SECRET)
    assert sorted((b["event"], b["account"]) for b in bodies) == [
        ("account_held", "trapped.example"), ("account_released", "trapped.example"),
        ("limit_near", "shop.example"), ("limit_refused", "shop.example")]
    by_kind = {b["event"]: b for b in bodies}
    assert by_kind["limit_refused"]["detail"]["limit"] == "2/hour"
    assert by_kind["limit_near"]["detail"]["percent"] == 100  # 80 % of 2 is reached at the second message
    assert by_kind["account_held"]["detail"]["by"] == "trap_hits"
    assert by_kind["account_released"]["detail"]["by"] == "admin"
    assert "event=notice kind=limit_refused account=shop.example" in milter.log()
