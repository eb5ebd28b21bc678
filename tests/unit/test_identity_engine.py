"""Whose mail is it, through the engine on a real SQLite store: no client chooses its account by
anything it writes (issue 13, findings 4, 5 and 6)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from mailflow.config import parse_config
from mailflow.engine import Engine
from mailflow.model import Client, Decision, Message
from mailflow.store.sqlite import SqliteStore

MSP_HOST = "mx1.provider.example"


def msp_received(user: str, qid: str = "6AQFw43Y010977") -> str:
    return (f"(from {user}@localhost)\n\tby {MSP_HOST} (8.17.1.9/8.17.1.9/Submit) id {qid}\n"
            "\tfor rcpt@dest.example; Thu, 26 Nov 2026 15:58:04 GMT")


# The MSP's own bounce, as Sendmail 8.17 hands it to the milter on the MSP listener.
MSP_BOUNCE_HEADERS = [
    ("Received", f"from localhost (localhost)\n\tby {MSP_HOST} (8.17.1.9/8.17.1.9/Submit) id 6AQFwG9a011093;\n"
                 "\tThu, 26 Nov 2026 15:58:16 GMT"),
    ("Date", "Thu, 26 Nov 2026 15:58:16 GMT"),
    ("From", f"Mail Delivery Subsystem <MAILER-DAEMON@{MSP_HOST}>"),
    ("To", "reject@host.example"),
    ("Subject", "Returned mail: see transcript for details"),
    ("Auto-Submitted", "auto-generated (failure)"),
]

LOOPBACK = Client("localhost", "127.0.0.1", 41000, "MTA-v4")
MSP = Client("localhost", "127.0.0.1", 41001, "MSP-v4")
PICKUP = Client("localhost", "127.0.0.1", 0)
SENDMAIL_BS = Client("localhost", "0", 0)


def make_engine(tmp_path: Path, **accounts: Any) -> Engine:
    config = parse_config({
        "accounts": {"msp_daemons": ["MSP-v4"], "local_names": [MSP_HOST],
                     "map": {"www-data": "webhosting.example"}, **accounts},
        "forgery": {"accounts": {"webhosting.example": {"domains": ["customer.example"]}}},
        "ratelimit": {"limits": ["100/hour"]},
    })
    return Engine(config, SqliteStore(str(tmp_path / "state.db")))


def transaction(engine: Engine, client: Client, sender: str, headers: Sequence[tuple[str, str]],
                login: str | None = None, recipients: Sequence[str] = ("rcpt@dest.example",),
                ) -> tuple[Decision, Decision | None, Message]:
    """MAIL, the RCPTs, the headers and end of message; eom is None when MAIL or a RCPT refused."""
    message, mail = engine.mail(client, sender, login)
    if mail.refuses:
        return mail, None, message
    if any(engine.rcpt(client, message, recipient).refuses for recipient in recipients):
        return mail, None, message
    for name, value in headers:
        engine.header(message, name, value)
    return mail, engine.eom(client, message, queue_id="Q1"), message


def test_plain_loopback_smtp_with_a_forged_msp_header_is_refused_at_mail(tmp_path: Path) -> None:
    """Finding 4: the forged header chose the account over plain SMTP to 127.0.0.1."""
    engine = make_engine(tmp_path)
    headers = [("Received", msp_received("www-data")), ("From", "ceo@webhosting.example")]
    for client in (LOOPBACK, Client("localhost", "::1", 41000)):
        mail, eom, _ = transaction(engine, client, "x@attacker.example", headers)
        assert mail.refuses and mail.reason == "local_smtp" and eom is None
        assert mail.reply is not None and (mail.reply.code, mail.reply.status) == ("550", "5.7.1")
        assert "authenticate (SMTP AUTH) or submit with sendmail" in mail.reply.text


def test_with_the_spoofable_opt_in_a_forged_header_still_changes_nothing(tmp_path: Path) -> None:
    engine = make_engine(tmp_path, local_smtp="sender_domain")
    headers = [("Received", msp_received("www-data")), ("From", "ceo@webhosting.example")]
    mail, eom, message = transaction(engine, LOOPBACK, "x@attacker.example", headers)
    assert not mail.refuses and eom is not None
    assert message.identity is not None and message.identity.account == "attacker.example"
    assert eom.refuses and eom.reason == "from_domain"


def test_the_msp_user_counts_only_on_the_msp_listener_and_only_from_the_first_header(tmp_path: Path) -> None:
    engine = make_engine(tmp_path, map={"www-data": "webhosting.example", "carol": "blog.example"})
    mail, eom, message = transaction(engine, MSP, "www-data@customer.example",
                                     [("Received", msp_received("www-data")), ("From", "www-data@customer.example")])
    assert eom is not None and not eom.refuses
    assert message.identity is not None and (message.identity.identity, message.identity.account) == (
        "www-data", "webhosting.example")
    # A second, forged Received: below the MSP's never names the user.
    _, eom, message = transaction(engine, MSP, "carol@blog.example", [
        ("Received", msp_received("carol")), ("Received", msp_received("www-data")), ("From", "carol@blog.example")])
    assert eom is not None and not eom.refuses
    assert message.identity is not None and (message.identity.identity, message.identity.account) == ("carol", "blog.example")


@pytest.mark.parametrize("headers", [
    [("From", "www-data@customer.example")],
    [("Subject", "x"), ("Received", msp_received("www-data")), ("From", "www-data@customer.example")],
    [("Received", "(from www-data@localhost) by h (8.17.1/8.17.1/Submit) id 3AB;"), ("From", "www-data@customer.example")],
], ids=["no-received", "not-first", "not-the-msp-form"])
def test_on_the_msp_listener_mail_that_did_not_come_through_the_msp_is_refused(
        tmp_path: Path, headers: list[tuple[str, str]]) -> None:
    mail, eom, _ = transaction(make_engine(tmp_path), MSP, "www-data@customer.example", headers)
    assert eom is not None and eom.refuses and eom.reason == "not_from_msp"
    assert eom.reply is not None and eom.reply.code == "550"


def test_the_envelope_is_rechecked_once_the_unix_user_settles_the_account(tmp_path: Path) -> None:
    """Finding 4: `www-data -f ceo@bank.example` with an owned From: was delivered."""
    engine = make_engine(tmp_path)
    mail, eom, message = transaction(engine, MSP, "ceo@bank.example",
                                     [("Received", msp_received("www-data")), ("From", "www-data@customer.example")])
    assert not mail.refuses  # at MAIL the account is still the sender's own domain
    assert eom is not None and eom.refuses and eom.reason == "envelope_domain"
    assert message.identity is not None and message.identity.account == "webhosting.example"


def test_a_unix_users_own_host_address_is_its_default_envelope_not_a_forgery(tmp_path: Path) -> None:
    """PHP's mail() without -f: the MSP writes `www-data@HOST`; the From: must still be owned."""
    engine = make_engine(tmp_path)
    received = ("Received", msp_received("www-data"))
    mail, eom, message = transaction(engine, MSP, f"www-data@{MSP_HOST}",
                                     [received, ("From", "shop@customer.example")])
    assert not mail.refuses and eom is not None and not eom.refuses
    assert message.identity is not None and message.identity.account == "webhosting.example"
    # Another user's address on this host, or the From: of a domain the account does not own: refused.
    for sender in (f"root@{MSP_HOST}", "ceo@bank.example"):
        foreign = transaction(engine, MSP, sender, [received, ("From", "shop@customer.example")])[1]
        assert foreign is not None and foreign.refuses and foreign.reason == "envelope_domain"
    refused = transaction(engine, MSP, f"www-data@{MSP_HOST}", [received, ("From", "ceo@bank.example")])[1]
    assert refused is not None and refused.refuses and refused.reason == "from_domain"


def test_the_msps_own_bounce_passes_charged_to_local(tmp_path: Path) -> None:
    """Finding 6: the MSP's DSN fell to account `local`, which owns nothing: 550, savemail panic."""
    engine = make_engine(tmp_path)
    for recipient in (f"postmaster@{MSP_HOST}", "www-data@customer.example", "a@webhosting.example"):
        mail, eom, message = transaction(engine, MSP, "<>", MSP_BOUNCE_HEADERS, recipients=[recipient])
        assert eom is not None and not eom.refuses and eom.reason == "ok", recipient
        assert message.identity is not None and message.identity.account == "local"


@pytest.mark.parametrize("client, sender, author", [
    (MSP, "<>", "MAILER-DAEMON@shop.example"),  # not one of this host's names
    (MSP, "<>", "ceo@mx1.provider.example"),  # not the MTA's own mailbox
    (PICKUP, "<>", "MAILER-DAEMON@bank.example"),
    (MSP, "<>", f"MAILER-DAEMON@{MSP_HOST}"),  # a user's `sendmail -f '<>'`: the MSP names the user
    (PICKUP, "<>", f"MAILER-DAEMON@{MSP_HOST}"),  # finding 8: Postfix never shows a milter its bounces
    (SENDMAIL_BS, "<>", f"MAILER-DAEMON@{MSP_HOST}"),  # nor does Sendmail's MTA
], ids=["foreign-host", "not-mailer-daemon", "pickup-foreign", "user-submitted", "pickup", "sendmail-bs"])
def test_other_null_sender_mail_must_still_be_owned(tmp_path: Path, client: Client, sender: str, author: str) -> None:
    received = [("Received", msp_received("www-data"))] if client is MSP else []
    _, eom, _ = transaction(make_engine(tmp_path), client, sender, [*received, ("From", author)])
    assert eom is not None and eom.refuses and eom.reason == "from_domain"


def test_a_null_sender_on_the_mta_port_is_refused_like_any_unauthenticated_local_smtp(tmp_path: Path) -> None:
    mail, _, _ = transaction(make_engine(tmp_path), LOOPBACK, "<>", MSP_BOUNCE_HEADERS[2:])
    assert mail.refuses and mail.reason == "local_smtp"


def test_sendmail_bs_is_local_mail_charged_to_the_sender(tmp_path: Path) -> None:
    engine = make_engine(tmp_path)
    mail, eom, message = transaction(engine, SENDMAIL_BS, "cron@big.example", [("From", "cron@big.example")])
    assert not mail.refuses and eom is not None and not eom.refuses
    assert message.identity is not None and (message.identity.source, message.identity.account) == ("local", "big.example")


def test_a_trusted_host_without_ip_map_sends_only_as_a_hosted_domain(tmp_path: Path) -> None:
    """Finding 5: a 10.x host sending as service@paypal.com was accepted as account "paypal.com"."""
    engine = make_engine(tmp_path, trusted_networks=["10.0.0.0/8"])
    web = Client("web", "10.1.2.3", 5000)
    mail, _, _ = transaction(engine, web, "service@paypal.com", [("From", "service@paypal.com")])
    assert mail.refuses and mail.reason == "trusted_unmapped" and mail.reply is not None
    assert (mail.reply.code, mail.reply.status) == ("550", "5.7.1") and "ip_map" in mail.reply.text
    # Hosted here: a domain an account owns (config), an account named after a domain, a store domain.
    engine.store.add_domain("cust42", "store-hosted.example")
    engine.ownership.refresh()
    for sender in ("app@customer.example", "app@webhosting.example", "app@store-hosted.example"):
        mail, eom, message = transaction(engine, web, sender, [("From", sender)])
        assert not mail.refuses and eom is not None and not eom.refuses, sender
