"""The notifier's own rules: the publisher never waits, the schema, the signature, the backoff,
customer templates, the engine's once-per-window memory, and [notify] validation."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from mailflow import events
from mailflow.config import ConfigError, parse_config
from mailflow.events import GRANT_GIVEN, LIMIT_NEAR, LIMIT_REFUSED, Event
from mailflow.notify import customers, payload
from mailflow.notify.notifier import Notifier
from mailflow.notify.webhook import backoff
from mailflow.ratelimit.limits import parse_limit
from mailflow.ratelimit.notices import LimitNotices, notice_window
from tests.helpers.webhook_receiver import SECRET, WebhookReceiver

EVENT = Event(LIMIT_REFUSED, "shop.example", {"limit": "600/hour", "period": "hour", "window": 1795719600,
                                              "capacity": 600, "used": 600.0, "percent": 100}, at=1795720645.25)


def config(secret_file: Path, **notify: Any) -> Any:
    return parse_config({"notify": {"webhook_secret_file": str(secret_file), **notify}})


def test_the_payload_schema() -> None:
    body = payload.body(EVENT, "abc123", "mx1.provider.example")
    assert json.loads(body) == {
        "version": 1, "id": "abc123", "event": "limit_refused", "account": "shop.example",
        "detail": {"limit": "600/hour", "period": "hour", "window": 1795719600, "capacity": 600, "used": 600.0,
                   "percent": 100},
        "at": "2026-11-26T19:17:25Z", "at_unix": 1795720645, "host": "mx1.provider.example"}


def test_the_signature_is_hmac_sha256_of_the_raw_body_and_verifiable() -> None:
    import hashlib
    import hmac

    body = payload.body(EVENT, "abc123", "mx1")
    header = payload.signature(SECRET, body)
    assert header == "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    assert payload.verify(SECRET, body, header)
    assert not payload.verify(SECRET, body.replace(b"shop", b"shoq"), header)
    assert not payload.verify(b"another secret of enough length", body, header)


def test_a_claimed_events_id_is_the_same_on_every_milter_and_others_are_unique() -> None:
    assert payload.event_id(EVENT) == payload.event_id(Event(EVENT.kind, EVENT.account, EVENT.detail, at=EVENT.at + 5))
    held = Event(events.ACCOUNT_HELD, "shop.example", {"reason": "x"})
    assert payload.claim_key(held) is None and payload.event_id(held) != payload.event_id(held)
    assert payload.claim_key(EVENT) == "limit_refused:hour:1795719600"
    expired = Event(events.GRANT_ENDED, "shop.example", {"limits": "5000/day", "until": 1795720000, "how": "expired"})
    assert payload.claim_key(expired) == "grant_ended:expired:1795720000"  # each milter's refresh sees it
    revoked = Event(events.GRANT_ENDED, "shop.example", {"limits": "5000/day", "until": 1795720000, "how": "revoked"})
    assert payload.claim_key(revoked) is None


def test_the_backoff_doubles() -> None:
    assert [backoff(n, 1.0) for n in range(1, 6)] == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert backoff(100, 0.5) > 0  # no overflow however many attempts a config allows


def test_the_publisher_never_waits_and_drops_are_counted_and_logged_once(
        secret_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The webhook hangs (its receiver holds every answer), the queue is 10 long: 5000 events are
    published in well under a second, 10 wait, the rest are dropped with one log line."""
    hanging = WebhookReceiver(answers=["timeout"], hold_seconds=3)
    notifier = Notifier(config(secret_file, webhook=hanging.url, queue_size=10, webhook_timeout_ms=2000,
                               webhook_attempts=1), None, host="mx1").start()
    try:
        hanging.wait(0)
        with caplog.at_level(logging.WARNING, logger="mailflow"):
            started = time.monotonic()
            for i in range(5000):
                events.publish(Event(events.ACCOUNT_HELD, f"a{i}.example", {"reason": "test"}))
            took = time.monotonic() - started
        assert took < 1.0, took
        assert 5000 - 11 <= notifier.dropped <= 5000 - 10
        assert len([r for r in caplog.records if "queue full" in r.getMessage()]) == 1
    finally:
        notifier.close(timeout=0.1)
        hanging.close()


def test_an_event_published_by_a_thread_reaches_the_log(secret_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    notifier = Notifier(parse_config({}), None, host="mx1").start()
    with caplog.at_level(logging.INFO, logger="mailflow"):
        thread = threading.Thread(target=events.publish, args=(EVENT,))
        thread.start()
        thread.join()
        notifier.close(timeout=5)
    [line] = [r.getMessage() for r in caplog.records if "event=notice" in r.getMessage()]
    assert "kind=limit_refused account=shop.example" in line and "limit=600/hour" in line and "channels=log" in line


def test_a_customer_template_fills_placeholders_and_keeps_values_out_of_headers() -> None:
    template = "Subject: $account: $summary\n\nDear customer of $host,\n$summary ($limit, $percent%).\n$nothing\n"
    hostile = Event(LIMIT_NEAR, "shop.example\nBcc: x@evil.example", {"limit": "600/hour", "percent": 80})
    subject, body = customers.render(template, hostile, "id1", "mx1")
    assert "\n" not in subject and subject.startswith("shop.example Bcc: x@evil.example: account")
    assert "(600/hour, 80%)" in body and "$nothing" in body and "Dear customer of mx1" in body
    subject, body = customers.render("", EVENT, "id1", "mx1")  # the built-in template
    assert subject == "[mx1] account shop.example reached its limit 600/hour; more mail is deferred"
    assert "Notice: id1" in body
    # times as people read them, not unix seconds (found by a new admin: "window: 1795719600")
    assert "window: 2026-11-26T19:00:00Z" in body and "1795719600" not in body
    grant = Event(GRANT_GIVEN, "shop.example", {"limits": "2000/hour", "until": 1795806000, "how": "extended"})
    subject, body = customers.render("Subject: $summary\n\nuntil $until\n$details", grant, "id2", "mx1")
    assert subject == "account shop.example grant extended 2000/hour until 2026-11-27T19:00:00Z"
    assert "until 2026-11-27T19:00:00Z" in body and "until: 2026-11-27T19:00:00Z" in body


def test_limit_notices_once_per_account_limit_and_window() -> None:
    published: list[Event] = []
    stop = events.subscribe(published.append)
    now = [1795720645.0]
    notices = LimitNotices(80, clock=lambda: now[0])
    hour, day = parse_limit("10/hour"), parse_limit("100/day")
    try:
        notices.debited("a.example", [hour, day], [7.0, 7.0])  # 70 %: nothing
        notices.debited("a.example", [hour, day], [8.0, 8.0])  # 80 % of the hour: near
        notices.debited("a.example", [hour, day], [9.0, 9.0])  # still this window: nothing more
        notices.refused("a.example", [hour, day], [10.0, 10.0], 1)
        notices.refused("a.example", [hour, day], [10.0, 10.0], 1)
        notices.refused("b.example", [hour, day], [10.0, 10.0], 1)
        now[0] += 3600  # the next hour
        notices.refused("a.example", [hour, day], [10.0, 10.0], 1)
    finally:
        stop()
    assert [(e.kind, e.account, e.detail["limit"]) for e in published] == [
        (LIMIT_NEAR, "a.example", "10/hour"), (LIMIT_REFUSED, "a.example", "10/hour"),
        (LIMIT_REFUSED, "b.example", "10/hour"), (LIMIT_REFUSED, "a.example", "10/hour")]
    assert published[0].detail["percent"] == 80 and published[1].detail["retry_after"] == 360
    assert notice_window(parse_limit("5/minute"), 1795720645) == 1795719600  # minute limits: hourly notices
    assert notice_window(day, 1795720645) == 1795651200  # the UTC day


@pytest.mark.parametrize("notify, needle", [
    ({"webhook": "http://127.0.0.1:9/h"}, "needs webhook_secret_file"),
    ({"webhook": "ftp://x/h", "webhook_secret_file": "SECRET"}, "not an http:// or https:// URL"),
    ({"webhook": "http://[::1/h", "webhook_secret_file": "SECRET"}, "not an http:// or https:// URL"),
    ({"webhook": "http://host:port/h", "webhook_secret_file": "SECRET"}, "not an http:// or https:// URL"),
    ({"near_limit": 101}, "0-100"),
    ({"email_events": ["limit_refused", "nope"]}, r"email_events\[1\]: 'nope' is not one of"),
    ({"email_to": ["postmaster@provider.example"]}, "through the \\[rbl.alerts\\] channel"),
    ({"accounts": {"shop.example": {"contact": "ops@shop.example"}}}, "notify.accounts: e-mail notices"),
    ({"bogus": 1}, "notify.bogus: unknown key"),
    ({"accounts": {"shop.example": {"contact": "ops@shop.example\nBcc: x@evil.example"}}},
     "notify.contacts: shop.example: .* is not an e-mail address"),
    ({"email_to": ["postmaster"]}, r"notify.email_to\[0\]: 'postmaster' is not an e-mail address"),
])
def test_notify_mistakes_are_named(secret_file: Path, notify: dict[str, Any], needle: str) -> None:
    if notify.get("webhook_secret_file") == "SECRET":
        notify["webhook_secret_file"] = str(secret_file)
    with pytest.raises(ConfigError, match=needle):
        parse_config({"notify": notify})


def test_a_webhook_secret_others_can_read_is_refused(secret_file: Path) -> None:
    secret_file.chmod(0o644)
    with pytest.raises(ConfigError, match="webhook secret file .* is mode 0644: readable by others"):
        config(secret_file, webhook="http://127.0.0.1:9/h")
    secret_file.chmod(0o600)
    assert SECRET not in repr(config(secret_file, webhook="http://127.0.0.1:9/h").notify).encode()


def test_a_broken_template_is_a_config_error(tmp_path: Path) -> None:
    template = tmp_path / "notice.txt"
    template.write_text("Costs $5 a month\n")
    with pytest.raises(ConfigError, match="a `\\$` that starts no placeholder"):
        parse_config({"notify": {"customer_template": str(template)}})
