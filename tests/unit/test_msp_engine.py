"""Sendmail's MSP listener through the engine on a real SQLite store: the account is known only
at end of message, from the MSP's header (hostile review of issue 13, findings 1-5, 8, 10)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from mailflow.engine import Engine
from mailflow.model import Client, Verdict
from mailflow.suppression.entries import GLOBAL, scope_for
from tests.unit.test_identity_engine import (LOOPBACK, MSP, MSP_BOUNCE_HEADERS, MSP_HOST, make_engine, msp_received,
                                             transaction)

SUPPRESSION = {"hash_key_env": "MAILFLOW_SUPPRESSION_KEY", "trap_hits_before_hold": 3}
# The MSP's header for `sendmail -bs` (HELO web1), `-p smtp:evil.example`, `-oMrESMTP`.
BS = f"from web1 (www-data@localhost)\n\tby {MSP_HOST} (8.17.1.9/8.17.1.9/Submit) with ESMTP id 6AQ1;\n\tThu"
P_FLAG = (f"from evil.example (www-data@localhost)\n\tby {MSP_HOST} (8.17.1.9/8.17.1.9/Submit) with smtp id 6AQ2\n"
          "\tfor a@dest.example; Thu")
OMR = f"(from www-data@localhost)\n\tby {MSP_HOST} (8.17.1.9/8.17.1.9/Submit) with ESMTP id 6AQ3; Thu"


def suppressing_engine(tmp_path: Path) -> Engine:
    from mailflow.config import parse_config
    from mailflow.store.sqlite import SqliteStore

    config = parse_config({
        "accounts": {"msp_daemons": ["MSP-v4"], "local_names": [MSP_HOST], "map": {"www-data": "webhosting.example"}},
        "forgery": {"accounts": {"webhosting.example": {"domains": ["customer.example"]},
                                 "victim.example": {"domains": ["victim.example"]}}},
        "ratelimit": {"limits": ["100/hour"]},
        "suppression": SUPPRESSION,
    })
    engine = Engine(config, SqliteStore(str(tmp_path / "state.db")))
    assert engine.matcher is not None
    now = int(time.time())
    engine.store.add_suppressions(GLOBAL, [engine.matcher.make_entry("trap@traps.example", "trap", "test", now)])
    for account, address in (("victim.example", "optout@person.example"), ("webhosting.example", "mine@person.example")):
        engine.store.add_suppressions(scope_for(account), [engine.matcher.make_entry(address, "unsubscribe", "test", now)])
    return engine


@pytest.mark.parametrize("received", [BS, P_FLAG, OMR], ids=["sendmail-bs", "p-flag", "oMr"])
def test_every_form_of_the_msps_header_names_the_user(tmp_path: Path, received: str) -> None:
    """Finding 1: these forms named no user, so `sendmail -bs` through the MSP was refused
    (not_from_msp) and a user's null-sender mail passed as the MSP's own bounce."""
    engine = make_engine(tmp_path)
    _, eom, message = transaction(engine, MSP, "www-data@customer.example",
                                  [("Received", received), ("From", "info@customer.example")])
    assert eom is not None and eom.verdict is Verdict.CONTINUE
    assert message.identity is not None and (message.identity.identity, message.identity.account) == (
        "www-data", "webhosting.example")
    forged = [("Received", received), ("From", f"Mail Delivery Subsystem <MAILER-DAEMON@{MSP_HOST}>")]
    _, eom, _ = transaction(engine, MSP, "<>", forged, recipients=[f"postmaster@{MSP_HOST}"])
    assert eom is not None and eom.refuses and eom.reason == "from_domain"


def test_the_msps_report_to_a_foreign_address_is_refused(tmp_path: Path) -> None:
    """Finding 2: `-f target@gmail.example` + spam, refused; the MSP's report of it, carrying the
    spam to target@gmail.example, passed as the MSP's own bounce."""
    engine = make_engine(tmp_path)
    for recipients in (["target@gmail.example"], [f"postmaster@{MSP_HOST}", "target@gmail.example"]):
        _, eom, _ = transaction(engine, MSP, "<>", MSP_BOUNCE_HEADERS, recipients=recipients)
        assert eom is not None and eom.refuses and eom.reason == "backscatter"
        assert eom.reply is not None and eom.reply.code == "550"


def test_msp_mail_is_looked_up_against_the_users_account_not_the_envelope_domain(tmp_path: Path) -> None:
    """Findings 3 and 4: on the MSP listener RCPT used the account of the envelope's domain."""
    engine = suppressing_engine(tmp_path)
    received = ("Received", msp_received("www-data"))
    # 3: victim's opt-out list is neither read nor revealed; www-data's trap hits are its own.
    for _ in range(3):
        _, eom, message = transaction(engine, MSP, "x@victim.example", [received, ("From", "x@victim.example")],
                                      recipients=["trap@traps.example", "optout@person.example"])
        assert eom is not None and eom.refuses and eom.reason == "envelope_domain"
        assert message.suppressed == ["trap@traps.example"] and message.recipients == ["optout@person.example"]
    assert engine.store.held_accounts().keys() == {"webhosting.example"}
    # 4: an envelope the account owns but is not named after: the account's own list and hold apply.
    _, eom, message = transaction(engine, MSP, "www-data@customer.example", [received, ("From", "www-data@customer.example")],
                                  recipients=["mine@person.example", "ok@dest.example"])
    assert eom is not None and eom.verdict is Verdict.HOLD and eom.remove_recipients == ("mine@person.example",)
    _, eom, _ = transaction(engine, MSP, "www-data@customer.example", [received, ("From", "www-data@customer.example")],
                            recipients=["mine@person.example"])
    assert eom is not None and eom.refuses and eom.reason == "suppressed"
    assert eom.reply is not None and "victim" not in eom.reply.text


def test_msp_rcpt_makes_no_store_call(tmp_path: Path) -> None:
    """No lookup may use the provisional (envelope domain) account: RCPT only records."""
    engine = suppressing_engine(tmp_path)
    engine.store = None  # type: ignore[assignment]  # any store call would raise
    message, mail = engine.mail(MSP, "x@victim.example", None)
    assert not mail.refuses and engine.rcpt(MSP, message, "optout@person.example").verdict is Verdict.CONTINUE
    assert message.recipients == ["optout@person.example"] and message.levels is None and message.held is None


def test_an_unmapped_unix_user_is_its_own_account(tmp_path: Path) -> None:
    """Finding 5: user nobody with -f ceo@victim.example was charged to (and passed as) victim.example."""
    engine = make_engine(tmp_path)
    _, eom, message = transaction(engine, MSP, "ceo@victim.example",
                                  [("Received", msp_received("nobody")), ("From", "ceo@victim.example")])
    assert message.identity is not None and message.identity.account == "nobody"
    assert eom is not None and eom.refuses and eom.reason == "envelope_domain"
    # Its own host address, envelope and From:, to addresses here: cron's mail to the admins.
    cron = [("Received", msp_received("root")), ("From", f"Cron Daemon <root@{MSP_HOST}>")]
    for recipient in (f"root@{MSP_HOST}", "admin@customer.example"):
        _, eom, message = transaction(engine, MSP, f"root@{MSP_HOST}", cron, recipients=[recipient])
        assert eom is not None and eom.verdict is Verdict.CONTINUE, recipient
        assert message.identity is not None and message.identity.account == "root"
    # The same From: to the world is the host's name on someone's spam: refused.
    _, eom, _ = transaction(engine, MSP, f"root@{MSP_HOST}", cron, recipients=["a@dest.example"])
    assert eom is not None and eom.refuses and eom.reason == "from_domain"


@pytest.mark.parametrize("address", ["::ffff:127.0.0.1", "::ffff:127.1.2.3"])
def test_v4_mapped_loopback_is_this_host(tmp_path: Path, address: str) -> None:
    """Finding 10: ::ffff:127.0.0.1 was judged inbound and accepted unpoliced."""
    client = Client("localhost", address, 41000, "MTA-v4")
    assert client.on_this_host and not Client("x", "::ffff:192.0.2.1", 25).on_this_host
    mail, _, _ = transaction(make_engine(tmp_path), client, "x@attacker.example", [])
    assert mail.refuses and mail.reason == "local_smtp" and LOOPBACK.on_this_host
