"""Whose mail is it, through the real milter daemon over the milter protocol, with the macros
Sendmail 8.17 and Postfix send (issue 13, findings 4, 5 and 6)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest

from miltertest import constants as C

from mailflow.milter.client import MilterClient, Response
from tests.helpers.servers import MilterProcess

HOST = "mx1.provider.example"
MSP_LISTENER = {"{daemon_name}": "MSP-v4"}
FORGED = f"(from www-data@localhost)\n\tby {HOST} (8.17.1.9/8.17.1.9/Submit) id 6AQFw43Y010977; Thu, 26 Nov 2026"


def config(store_url: str, **accounts: Any) -> dict[str, Any]:
    return {
        "store": {"url": store_url, "timeout_ms": 250},
        "accounts": {"msp_daemons": ["MSP-v4"], "local_names": [HOST], "map": {"www-data": "webhosting.example"},
                     **accounts},
        "ratelimit": {"limits": ["10/hour"]},
        "forgery": {"accounts": {"webhosting.example": {"domains": ["customer.example"]}}},
    }


@pytest.fixture
def milter(start_milter: Callable[..., MilterProcess], store_url: str) -> MilterProcess:
    return start_milter(config(store_url))


def session(milter: MilterProcess, client: tuple[str, str, int], sender: str, headers: Sequence[tuple[str, str]],
            mail_macros: dict[str, str] | None = None, eom_macros: dict[str, str] | None = None,
            rcpt: str = "rcpt@dest.example") -> tuple[Response, str]:
    """MAIL (its reply), then one RCPT, the headers and end of message (its SMTP reply)."""
    with MilterClient(milter.socket) as c:
        c.connect(*client)
        c.helo("localhost")
        mail = c.mail(sender, macros=mail_macros)
        if mail.action != "continue":
            return mail, ""
        assert c.rcpt(rcpt).action == "continue"
        for name, value in headers:
            c.header(name, value)
        c.eoh()
        return mail, c.eom(macros=eom_macros).smtp


def test_forged_msp_header_over_plain_loopback_smtp_is_refused(milter: MilterProcess) -> None:
    """Finding 4: `MAIL FROM:<x@attacker.example>` + a forged `Received: (from www-data@localhost)`
    + `From: ceo@webhosting.example` over plain SMTP to 127.0.0.1 was charged to webhosting.example."""
    for client in (("localhost", "127.0.0.1", 41000), ("localhost", "::1", 41000)):
        mail, _ = session(milter, client, "x@attacker.example",
                          [("Received", FORGED), ("From", "ceo@webhosting.example")], {"{daemon_name}": "MTA-v4"})
        assert mail.smtp.startswith("550 5.7.1 Unauthenticated SMTP from this host is refused by the mail policy; "
                                    "authenticate (SMTP AUTH) or submit with sendmail"), mail.smtp
    assert {(d["stage"], d["reason"], d["account"]) for d in milter.decisions()} == {("mail", "local_smtp", "attacker.example")}


def test_with_the_opt_in_the_forged_header_neither_chooses_the_account_nor_passes(
        start_milter: Callable[..., MilterProcess], store_url: str) -> None:
    milter = start_milter(config(store_url, local_smtp="sender_domain"))
    mail, eom = session(milter, ("localhost", "127.0.0.1", 41000), "x@attacker.example",
                        [("Received", FORGED), ("From", "ceo@webhosting.example")])
    assert mail.action == "continue" and eom.startswith("550 5.7.1 From: header domain webhosting.example")
    line = milter.decisions()[-1]
    assert (line["account"], line["identity"], line["reason"]) == ("attacker.example", "x@attacker.example", "from_domain")


def test_the_msp_user_bound_to_an_account_cannot_use_a_foreign_envelope(milter: MilterProcess) -> None:
    """Finding 4: `www-data -f ceo@bank.example` with an owned From: was delivered."""
    mail, eom = session(milter, ("localhost", "127.0.0.1", 41001), "ceo@bank.example",
                        [("Received", FORGED), ("From", "www-data@customer.example")], MSP_LISTENER)
    assert mail.action == "continue" and eom.startswith("550 5.7.1 Envelope sender domain bank.example"), eom
    line = milter.decisions()[-1]
    assert (line["identity"], line["account"], line["reason"]) == ("www-data", "webhosting.example", "envelope_domain")
    mail, eom = session(milter, ("localhost", "127.0.0.1", 41001), "www-data@customer.example",
                        [("Received", FORGED), ("From", "www-data@customer.example")], MSP_LISTENER)
    assert eom == "continue" and milter.decisions()[-1]["account"] == "webhosting.example"


def test_on_the_msp_listener_a_message_without_the_msp_header_is_refused(milter: MilterProcess) -> None:
    mail, eom = session(milter, ("localhost", "127.0.0.1", 41001), "www-data@customer.example",
                        [("From", "www-data@customer.example"), ("Received", FORGED)], MSP_LISTENER)
    assert eom.startswith("550 5.7.1 This listener takes only mail from the local submission program"), eom


def test_the_msps_bounce_passes_and_is_charged_to_local(milter: MilterProcess) -> None:
    """Finding 6: the MSP's DSN was refused (account `local` owns nothing): savemail panic."""
    bounce = [("Received", f"from localhost (localhost)\n\tby {HOST} (8.17.1.9/8.17.1.9/Submit) id 6AQFwG9a011093;"
                           "\n\tThu, 26 Nov 2026 15:58:16 GMT"),
              ("From", f"Mail Delivery Subsystem <MAILER-DAEMON@{HOST}>"), ("To", "reject@host.example"),
              ("Subject", "Returned mail: see transcript for details")]
    mail, eom = session(milter, ("localhost", "127.0.0.1", 41001), "<>", bounce, MSP_LISTENER, rcpt=f"postmaster@{HOST}")
    assert eom == "continue"
    line = milter.decisions()[-1]
    assert (line["source"], line["account"], line["sender"], line["action"]) == ("local", "local", "<>", "continue")
    # To an address elsewhere it would be backscatter (review finding 2).
    mail, eom = session(milter, ("localhost", "127.0.0.1", 41001), "<>", bounce, MSP_LISTENER, rcpt="t@gmail.example")
    assert eom.startswith("550 5.7.1 Delivery reports of the local submission program go only to addresses"), eom
    # On the MTA's port the same bounce is plain unauthenticated loopback SMTP.
    mail, _ = session(milter, ("localhost", "127.0.0.1", 41002), "<>", bounce, {"{daemon_name}": "MTA-v4"})
    assert mail.smtp.startswith("550 5.7.1 Unauthenticated SMTP")


def test_sendmail_bs_through_the_msp_names_the_user(milter: MilterProcess) -> None:
    """Review finding 1: `from HELO (USER@localhost) … with ESMTP` named no user: not_from_msp."""
    received = f"from web1 (www-data@localhost)\n\tby {HOST} (8.17.1.9/8.17.1.9/Submit) with ESMTP id 6AQ1;\n\tThu"
    mail, eom = session(milter, ("localhost", "127.0.0.1", 41001), f"www-data@{HOST}",
                        [("Received", received), ("From", "info@customer.example")], MSP_LISTENER)
    assert eom == "continue"
    assert (milter.decisions()[-1]["identity"], milter.decisions()[-1]["account"]) == ("www-data", "webhosting.example")


def test_v4_mapped_loopback_smtp_is_this_hosts(milter: MilterProcess) -> None:
    """Review finding 10: ::ffff:127.0.0.1 was judged inbound and accepted unpoliced."""
    mail, _ = session(milter, ("localhost", "::ffff:127.0.0.1", 41000), "x@attacker.example", [], {"{daemon_name}": "MTA-v4"})
    assert mail.smtp.startswith("550 5.7.1 Unauthenticated SMTP"), mail.smtp


def test_sendmail_bs_is_local_mail(milter: MilterProcess) -> None:
    """`sendmail -bs` (root): Sendmail sends {client_addr} 0 and {client_port} 0 and no listener."""
    mail, eom = session(milter, ("localhost", "127.0.0.1", 1), "cron@big.example", [("From", "cron@big.example")],
                        {"{client_addr}": "0", "{client_port}": "0"})
    assert mail.action == "continue" and eom == "continue"
    line = milter.decisions()[-1]
    assert (line["source"], line["account"], line["client"]) == ("local", "big.example", "0")


def test_a_trusted_host_without_ip_map_cannot_send_as_an_unhosted_domain(
        start_milter: Callable[..., MilterProcess], store_url: str) -> None:
    """Finding 5: a 10.x host sending as service@paypal.com was accepted as account "paypal.com"."""
    milter = start_milter(config(store_url, trusted_networks=["10.0.0.0/8", "192.0.2.0/24"]))
    mail, _ = session(milter, ("web", "192.0.2.10", 5000), "service@paypal.com", [("From", "service@paypal.com")])
    assert mail.smtp.startswith("550 5.7.1 Client 192.0.2.10 is trusted but has no [accounts.ip_map] entry"), mail.smtp
    mail, eom = session(milter, ("web", "192.0.2.10", 5000), "app@customer.example", [("From", "app@customer.example")])
    assert eom == "continue"


@pytest.mark.parametrize("mail_qid, eom_qid, logged", [
    ("6AQFw4dj010978", None, "6AQFw4dj010978"),  # Sendmail: `i` comes in mailflow's MAIL list only
    (None, "4XyZ1", "4XyZ1"),  # Postfix: at end of message
    ("EARLY", "4XyZ1", "4XyZ1"),  # both: end of message's
], ids=["sendmail", "postfix", "both"])
def test_the_queue_id_is_logged(start_milter: Callable[..., MilterProcess], store_url: str,
                                mail_qid: str | None, eom_qid: str | None, logged: str) -> None:
    milter = start_milter(config(store_url))
    with MilterClient(milter.socket) as c:
        assert c.macro_lists.get(C.SMFIC_MAIL, ()) == ("{auth_authen}", "{client_addr}", "{client_port}", "{daemon_name}", "i")
    mail_macros = {"{auth_authen}": "bob@shop.example", **({"i": mail_qid} if mail_qid else {})}
    _, eom = session(milter, ("mua", "198.51.100.20", 4000), "bob@shop.example", [("From", "bob@shop.example")],
                     mail_macros, {"i": eom_qid} if eom_qid else {})
    assert eom == "continue" and milter.decisions()[-1]["qid"] == logged
