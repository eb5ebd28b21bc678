"""Notices delivered for real: a webhook receiver on 127.0.0.1 that fails first (500, then a
timeout, then 200), the once-per-fleet claim on both stores (and what happens when the store is
down), e-mail to the admins and to a customer through an SMTP sink that wants AUTH."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest

from mailflow import events
from mailflow.config import parse_config
from mailflow.events import ACCOUNT_HELD, LIMIT_REFUSED, Event
from mailflow.notify.notifier import Notifier
from mailflow.store import open_store
from tests.helpers.servers import free_port
from tests.helpers.smtp_sink import AuthSink
from tests.helpers.webhook_receiver import SECRET, WebhookReceiver

REFUSED = Event(LIMIT_REFUSED, "shop.example", {"limit": "2/hour", "period": "hour", "window": 1795719600,
                                                "capacity": 2, "used": 2.0, "percent": 100, "retry_after": 1800})


def notify_config(secret_file: Path, url: str, **notify: Any) -> Any:
    return parse_config({"notify": {"webhook": url, "webhook_secret_file": str(secret_file),
                                    "webhook_backoff_ms": 100, "webhook_timeout_ms": 500, **notify}})


def test_retried_through_500_and_a_timeout_then_delivered_signed(secret_file: Path) -> None:
    receiver = WebhookReceiver(answers=["500", "timeout", "200"], hold_seconds=1.5)
    notifier = Notifier(notify_config(secret_file, receiver.url), None, host="mx1.provider.example").start()
    try:
        events.publish(REFUSED)
        deliveries = receiver.wait(3, timeout=10)
    finally:
        notifier.close(timeout=5)
        receiver.close()
    assert [d.answer for d in deliveries] == ["500", "timeout", "200"]
    assert len({d.body for d in deliveries}) == 1  # every attempt the same signed body, the same id
    # Backoff: 100 ms after the 500; 200 ms after the timeout, which itself took 500 ms from the
    # attempt's start (the whole attempt), a little before the receiver noted the request.
    assert deliveries[1].at - deliveries[0].at >= 0.1
    assert deliveries[2].at - deliveries[1].at >= 0.5 + 0.2 - 0.05
    [body] = receiver.events(SECRET)  # the signature checks out
    assert (body["event"], body["account"], body["host"], body["detail"]["limit"]) == (
        "limit_refused", "shop.example", "mx1.provider.example", "2/hour")
    headers = deliveries[2].headers
    assert headers["X-Mailflow-Event"] == "limit_refused" and headers["X-Mailflow-Delivery"] == body["id"]


@pytest.mark.parametrize("answers, attempts", [(["400"], 1), (["404"], 1), (["302"], 1), (["429", "200"], 2),
                                               (["408", "503", "200"], 3), (["500"], 3)])
def test_which_answers_are_retried(secret_file: Path, answers: list[str], attempts: int) -> None:
    receiver = WebhookReceiver(answers=answers)
    notifier = Notifier(notify_config(secret_file, receiver.url, webhook_attempts=3), None, host="mx1").start()
    try:
        events.publish(REFUSED)
        receiver.wait(attempts, timeout=10)
        time.sleep(0.5)  # 100 + 200 ms of backoff: any further attempt would be here by now
    finally:
        notifier.close(timeout=2)
        receiver.close()
    assert len(receiver.received) == attempts


def test_retries_stop_at_the_time_budget(secret_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    receiver = WebhookReceiver(answers=["500"])
    notifier = Notifier(notify_config(secret_file, receiver.url, webhook_attempts=50, webhook_backoff_ms=400,
                                      webhook_max_seconds=1), None, host="mx1").start()
    try:
        with caplog.at_level(logging.INFO, logger="mailflow"):
            events.publish(REFUSED)
            receiver.wait(2, timeout=5)
            time.sleep(1.0)
    finally:
        notifier.close(timeout=1)
        receiver.close()
    assert len(receiver.received) == 2  # at 0 and 0.4 s; the next (1.2 s) would be past the budget
    assert "webhook gave up on" in caplog.text and "after 2 attempts: HTTP 500" in caplog.text


def test_one_webhook_per_event_for_two_notifiers_on_one_store(secret_file: Path, store_url: str,
                                                               receiver: WebhookReceiver) -> None:
    """Two milters' notifiers see the same limit refusal: the claim in the store lets one send."""
    stores = [open_store(store_url), open_store(store_url)]
    config = notify_config(secret_file, receiver.url)
    notifiers = [Notifier(config, store, host=f"mx{i}") for i, store in enumerate(stores)]
    try:
        for notifier in notifiers:
            notifier.submit(REFUSED)
            notifier.submit(Event(LIMIT_REFUSED, "other.example", REFUSED.detail))
        for notifier in notifiers:
            notifier.start()
        receiver.wait(2)
        time.sleep(0.5)
    finally:
        for notifier in notifiers:
            notifier.close(timeout=2)
        for store in stores:
            store.close()
    assert sorted(body["account"] for body in receiver.events(SECRET)) == ["other.example", "shop.example"]
    assert sum(n.sent for n in notifiers) == 2


def test_a_store_that_is_down_does_not_silence_a_notice(secret_file: Path, receiver: WebhookReceiver,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    down = open_store(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    notifier = Notifier(notify_config(secret_file, receiver.url), down, host="mx1")
    with caplog.at_level(logging.INFO, logger="mailflow"):
        notifier.start()
        events.publish(REFUSED)
        events.publish(Event(LIMIT_REFUSED, "other.example", REFUSED.detail))
        receiver.wait(2)
        notifier.close(timeout=2)
    down.close()
    assert len(receiver.events(SECRET)) == 2
    assert caplog.text.count("store unavailable for claims") == 1  # once an outage, not once a notice
    assert "notices are sent anyway" in caplog.text and "dedup=store_down" in caplog.text


def test_admin_and_customer_e_mail_through_the_alert_channel(tmp_path: Path) -> None:
    password = tmp_path / "smtp.pw"
    password.write_text("sink-password\n")
    password.chmod(0o600)
    template = tmp_path / "notice.txt"
    template.write_text("Subject: Your account $account is held\n\nHello, $account is held ($reason).\n")
    sink = AuthSink("alerts@provider.example", "sink-password")
    config = parse_config({
        "rbl": {"alerts": {"smtp_relay": f"127.0.0.1:{sink.port}", "smtp_user": "alerts@provider.example",
                           "smtp_password_file": str(password), "email_from": "mailflow@mx1.provider.example"}},
        "notify": {"email_to": ["postmaster@provider.example"], "customer_template": str(template),
                   "accounts": {"shop.example": {"contact": "ops@shop.example"}}}})
    notifier = Notifier(config, None, host="mx1").start()
    try:
        events.publish(Event(ACCOUNT_HELD, "shop.example", {"reason": "3 spam-trap hits in 24 hours"}))
        events.publish(Event(ACCOUNT_HELD, "nocontact.example", {"reason": "held by an admin"}))
        deadline = time.monotonic() + 10
        while len(sink.received) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        notifier.close(timeout=5)
        sink.close()
    by_rcpt = {tuple(m.recipients): m for m in sink.received}
    assert set(by_rcpt) == {("<postmaster@provider.example>",), ("<ops@shop.example>",)} and len(sink.received) == 3
    customer = by_rcpt[("<ops@shop.example>",)].data.decode()
    assert "Subject: Your account shop.example is held" in customer
    assert "Hello, shop.example is held (3 spam-trap hits in 24 hours)." in customer
    admin = [m.data.decode() for m in sink.received if m.recipients == ["<postmaster@provider.example>"]]
    assert any("Subject: [mailflow] account shop.example is held: 3 spam-trap hits" in m for m in admin)
