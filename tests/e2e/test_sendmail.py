"""End to end through a real Sendmail 8.17 (Debian 12's packages, unpacked, not installed):
SMTP AUTH, the MSP as a Unix user, the rate limit, forgery refusals, the MSP's own bounces and
`sendmail -bs`, each judged by the real mailflow milter and seen at a sink."""

from __future__ import annotations

import re
import smtplib
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.sendmail import HOSTNAME, Delivered, PrivateSendmail, shipped_msp_listener, unpack_packages
from tests.helpers.servers import MilterProcess

SASL_USERS = {"alice@shop.example": "secret", "carol@tiny.example": "secret"}
MESSAGE = "From: {author}\nTo: someone@dest.example\nSubject: {subject}\n\nhello\n"
# What the MSP writes first; any local process can write it too.
FORGED_RECEIVED = (f"Received: (from www-data@localhost)\n\tby {HOSTNAME} (8.17.1.9/8.17.1.9/Submit) id 5AQ1x;\n"
                   "\tThu, 26 Nov 2026 10:00:00 GMT\n")


def milter_config(store: str, local_smtp: str) -> dict[str, Any]:
    return {
        "forgery": {"accounts": {"webhosting.example": {"domains": ["customer.example"]},
                                 "victim.example": {"domains": ["victim.example"]}}},
        "suppression": {"hash_key_env": "MAILFLOW_SUPPRESSION_KEY", "trap_hits_before_hold": 1},
        "store": {"url": store},
        "accounts": {
            "identify": ["sasl", "local"],
            "trusted_networks": [],
            "msp_daemons": [shipped_msp_listener()],
            "local_smtp": local_smtp,
            "map": {"www-data": "webhosting.example"},
            "local_names": [HOSTNAME],  # Sendmail's name here; the milter's host has its own
        },
        "ratelimit": {"limits": ["100/hour"],
                      "accounts": {"tiny.example": {"limits": ["2/hour"], "unit": "message"}}},
    }


@pytest.fixture(scope="module")
def packages() -> None:
    why = unpack_packages()
    if why is not None:  # the only reason to skip: Debian's packages could not be fetched
        pytest.skip(f"Sendmail's Debian packages could not be fetched: {why}")


@contextmanager
def running(workdir: Path, local_smtp: str, msp_user: str = "www-data") -> Iterator[tuple[PrivateSendmail, MilterProcess]]:
    milter = MilterProcess(workdir, milter_config(f"sqlite://{workdir}/state.db", local_smtp)).start()
    try:
        mta = PrivateSendmail(milter.port, SASL_USERS, msp_user=msp_user).start()
        try:
            yield mta, milter
        finally:
            log = mta.log()
            mta.stop()
        # Whatever a test did, Sendmail never lost a message it could not bounce.
        assert "savemail panic" not in log, log
    finally:
        milter.stop()


@pytest.fixture(scope="module")
def rig(packages: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PrivateSendmail, MilterProcess]]:
    with running(tmp_path_factory.mktemp("sendmail-refuse"), "refuse") as started:
        yield started


def attempt(send: Callable[[], object]) -> tuple[int, str]:
    """(250, '') when the message was accepted, else the refusal's code and text."""
    try:
        send()
    except smtplib.SMTPRecipientsRefused as exc:
        code, text = next(iter(exc.recipients.values()))
        return code, text.decode()
    except smtplib.SMTPResponseException as exc:  # sender refused, data refused
        error = exc.smtp_error
        return exc.smtp_code, error.decode() if isinstance(error, bytes) else error
    return 250, ""


def decisions(milter: MilterProcess, **fields: str) -> list[dict[str, str]]:
    return [d for d in milter.decisions() if all(d.get(k) == v for k, v in fields.items())]


def to_postmaster(message: Delivered) -> bool:
    """To this host's postmaster: the rig's MTA relays it to the sink as postmaster@[127.0.0.1]."""
    return any(recipient.startswith("<postmaster@") for recipient in message.recipients)


def sent_to(recipient: str) -> Callable[[Delivered], bool]:
    return lambda message: message.to(recipient)


def test_smtp_auth_is_delivered_and_logged_with_sendmails_queue_id(rig: tuple[PrivateSendmail, MilterProcess]) -> None:
    mta, milter = rig
    with mta.smtp() as smtp:
        smtp.login("alice@shop.example", "secret")
        smtp.sendmail("alice@shop.example", ["auth@dest.example"],
                      MESSAGE.format(author="alice@shop.example", subject="auth"))
    mta.wait_delivered(sent_to("auth@dest.example"))
    [qid] = re.findall(r"(\w+): to=<auth@dest\.example>, .*stat=Sent", mta.log())  # Sendmail's queue id
    [line] = decisions(milter, stage="eom", qid=qid)
    assert (line["account"], line["source"], line["identity"], line["action"]) == (
        "shop.example", "sasl", "alice@shop.example", "continue")


def test_msp_submission_as_a_unix_user_is_charged_to_its_mapped_account(rig: tuple[PrivateSendmail, MilterProcess]) -> None:
    mta, milter = rig
    result = mta.submit(MESSAGE.format(author="info@webhosting.example", subject="msp").replace(
        "someone@dest.example", "msp@dest.example"), "-f", "info@webhosting.example")
    assert result.returncode == 0, result.stderr
    mta.wait_delivered(sent_to("msp@dest.example"))
    [line] = decisions(milter, stage="eom", sender="<info@webhosting.example>")
    assert (line["account"], line["identity"], line["action"]) == ("webhosting.example", "www-data", "continue")
    assert re.search(rf"from=<info@webhosting\.example>.*daemon={shipped_msp_listener()},", mta.log())


def test_the_third_message_over_a_two_an_hour_limit_is_deferred(rig: tuple[PrivateSendmail, MilterProcess]) -> None:
    mta, milter = rig
    outcomes = []
    for n in range(3):
        with mta.smtp() as smtp:
            smtp.login("carol@tiny.example", "secret")
            outcomes.append(attempt(lambda: smtp.sendmail(
                "carol@tiny.example", [f"tiny{n}@dest.example"],
                MESSAGE.format(author="carol@tiny.example", subject=f"tiny {n}"))))
    assert outcomes[:2] == [(250, ""), (250, "")]
    code, text = outcomes[2]
    assert code == 451 and text.startswith("4.7.1"), outcomes
    mta.wait_delivered(lambda m: m.sender == "<carol@tiny.example>", count=2)
    assert not [m for m in mta.delivered() if m.to("tiny2@dest.example")]


def test_an_auth_user_cannot_send_as_another_domain(rig: tuple[PrivateSendmail, MilterProcess]) -> None:
    mta, milter = rig
    with mta.smtp() as smtp:
        smtp.login("alice@shop.example", "secret")
        code, text = attempt(lambda: smtp.sendmail("alice@shop.example", ["forged@dest.example"],
                                                   MESSAGE.format(author="ceo@bank.example", subject="forged")))
    assert code == 550 and text.startswith("5.7.1"), (code, text)
    assert not [m for m in mta.delivered() if m.to("forged@dest.example")]


def test_the_msps_bounce_of_a_refused_submission_is_delivered(rig: tuple[PrivateSendmail, MilterProcess]) -> None:
    mta, milter = rig
    result = mta.submit(MESSAGE.format(author="ceo@bank.example", subject="refused").replace(
        "someone@dest.example", "bounced@dest.example"), "-f", "shop@webhosting.example")
    # The MTA refuses it (From: not owned by webhosting.example); the MSP then sends a DSN
    # (MAIL FROM:<>, From: MAILER-DAEMON@this host) to the sender, through the same listener.
    [dsn] = mta.wait_delivered(lambda m: m.sender == "<>" and m.to("shop@webhosting.example"))
    assert f"MAILER-DAEMON@{HOSTNAME}" in dsn.text
    assert not [m for m in mta.delivered() if m.to("bounced@dest.example")]
    refused = decisions(milter, stage="eom", sender="<shop@webhosting.example>")
    assert [d["action"] for d in refused] == ["reject"], (refused, result)
    bounces = decisions(milter, stage="eom", sender="<>")
    assert bounces and all(d["action"] == "continue" for d in bounces), bounces
    assert "savemail panic" not in mta.log()


def test_a_unix_user_cannot_choose_a_foreign_envelope_sender(rig: tuple[PrivateSendmail, MilterProcess]) -> None:
    mta, milter = rig
    mta.submit(MESSAGE.format(author="info@webhosting.example", subject="bank envelope").replace(
        "someone@dest.example", "bank-envelope@dest.example"), "-f", "ceo@bank.example")
    # The MSP's DSN would carry the refused message to ceo@bank.example (backscatter: review
    # finding 2): refused too, so the MSP reports to this host's postmaster, and loses nothing.
    [report] = mta.wait_delivered(lambda m: m.sender == "<>" and to_postmaster(m))
    assert "ceo@bank.example" in report.text
    assert not [m for m in mta.delivered() if m.to("bank-envelope@dest.example") or m.to("ceo@bank.example")]
    [line] = decisions(milter, stage="eom", sender="<ceo@bank.example>")
    assert (line["account"], line["identity"], line["action"]) == ("webhosting.example", "www-data", "reject"), line
    assert [d["reason"] for d in decisions(milter, stage="eom", sender="<>", action="reject")] == ["backscatter"]


FAKE_BOUNCE = f"From: Mail Delivery Subsystem <MAILER-DAEMON@{HOSTNAME}>\nTo: {{to}}\nSubject: fake bounce\n\nBUY\n"


def test_sendmail_bs_through_the_msp_is_the_users_mail_and_no_user_passes_as_its_bounce(
        rig: tuple[PrivateSendmail, MilterProcess]) -> None:
    """Review finding 1: `-bs`, `-p` and `-oMr` change the MSP's header; it named no user, so
    ordinary `sendmail -bs` was refused and a user's null-sender mail passed as the MSP's bounce."""
    mta, milter = rig
    body = MESSAGE.format(author="info@customer.example", subject="symfony").replace("someone@", "bs-msp@")
    replies = mta.bs(["EHLO web1", f"MAIL FROM:<www-data@{HOSTNAME}>", "RCPT TO:<bs-msp@dest.example>", "DATA",
                      body.replace("\n", "\r\n") + ".", "QUIT"], user="www-data")
    assert replies[-2].startswith("250"), replies
    mta.wait_delivered(sent_to("bs-msp@dest.example"))
    [line] = decisions(milter, stage="eom", sender=f"<www-data@{HOSTNAME}>")
    assert (line["identity"], line["account"], line["action"]) == ("www-data", "webhosting.example", "continue"), line
    fake = FAKE_BOUNCE.format(to="fake-bs@dest.example").replace("\n", "\r\n")
    mta.bs(["EHLO web1", "MAIL FROM:<>", "RCPT TO:<fake-bs@dest.example>", "DATA", fake + ".", "QUIT"], user="www-data")
    for flags, to in ((("-p", "smtp:evil.example"), "fake-p@dest.example"), (("-oMrESMTP",), "fake-omr@dest.example")):
        mta.submit(FAKE_BOUNCE.format(to=to), "-f", "<>", *flags)
    refused = [d for d in decisions(milter, stage="eom", sender="<>", identity="www-data")]
    assert len(refused) == 3 and all(d["reason"] == "from_domain" for d in refused), refused
    assert not [m for m in mta.delivered() if "BUY" in m.text and not to_postmaster(m)]


def test_an_msp_users_own_opt_outs_apply_whatever_envelope_domain_it_owns(rig: tuple[PrivateSendmail, MilterProcess]) -> None:
    """Review finding 4: RCPT looked up customer.example's lists, not webhosting.example's."""
    mta, milter = rig
    cli(milter, "suppress", "add", "--account", "webhosting.example", "optout@person.example")
    message = MESSAGE.format(author="info@customer.example", subject="opted out").replace(
        "someone@dest.example", "optout@person.example, kept@dest.example")
    assert mta.submit(message, "-f", "www-data@customer.example").returncode == 0
    mta.wait_delivered(sent_to("kept@dest.example"))
    assert not [m for m in mta.delivered() if m.to("optout@person.example")]
    [line] = decisions(milter, stage="eom", sender="<www-data@customer.example>")
    assert (line["account"], line["removed"], line["action"]) == ("webhosting.example", "<optout@person.example>", "continue")


def test_an_unmapped_unix_user_is_its_own_account(packages: None, tmp_path: Path) -> None:
    """Review findings 3 and 5: an unmapped user (nobody in the review; backup here) chose
    victim.example with -f, and its spam-trap hits held victim.example. Its own host address to
    this host's admins passes (cron)."""
    with running(tmp_path, "refuse", msp_user="backup") as (mta, milter):
        cli(milter, "suppress", "add", "--reason", "trap", "trap@traps.example")
        cron = f"From: Cron Daemon <backup@{HOSTNAME}>\nTo: postmaster@{HOSTNAME}\nSubject: cron\n\nhi\n"
        assert mta.submit(cron).returncode == 0
        mta.wait_delivered(lambda m: to_postmaster(m) and "Subject: cron" in m.text)
        victim = MESSAGE.format(author="ceo@victim.example", subject="victim")
        mta.submit(victim.replace("someone@dest.example", "trap@traps.example"), "-f", "x@victim.example")
        mta.wait_delivered(lambda m: m.sender == "<>" and m.to("x@victim.example"))  # hosted here: reported
        [line] = decisions(milter, stage="eom", sender="<x@victim.example>")
        assert (line["identity"], line["account"], line["reason"]) == ("backup", "backup", "suppressed"), line
        assert "account_held account=backup" in milter.log() and "account=victim.example" not in milter.log()


def cli(milter: MilterProcess, *args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "mailflow", *args, "-c", str(milter.config_path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def forged_local_smtp(mta: PrivateSendmail, recipient: str) -> tuple[int, str]:
    """Plain SMTP to the MTA port from 127.0.0.1, dressed up as the MSP's www-data."""
    message = FORGED_RECEIVED + MESSAGE.format(author="ceo@webhosting.example", subject="forged received")
    with mta.smtp() as smtp:
        return attempt(lambda: smtp.sendmail("x@attacker.example", [recipient], message))


def test_a_forged_received_header_over_plain_smtp_is_refused_by_default(rig: tuple[PrivateSendmail, MilterProcess]) -> None:
    mta, milter = rig
    code, text = forged_local_smtp(mta, "forged-received@dest.example")
    # Refused at MAIL, before any header, with a reply that says what to do instead.
    assert code == 550 and text.startswith("5.7.1") and "authenticate" in text.lower(), (code, text)
    assert not decisions(milter, account="webhosting.example", sender="<x@attacker.example>")
    assert not [m for m in mta.delivered() if m.to("forged-received@dest.example")]


def test_a_forged_received_header_never_charges_its_account_when_attributing_by_sender_domain(
        packages: None, tmp_path: Path) -> None:
    with running(tmp_path, "sender_domain") as (mta, milter):
        code, text = forged_local_smtp(mta, "forged-received@dest.example")
        assert code == 550 and text.startswith("5.7.1"), (code, text)
        [line] = decisions(milter, sender="<x@attacker.example>")
        # Charged by its envelope, and From: is not that account's: a forgery refusal.
        assert (line["account"], line["action"]) == ("attacker.example", "reject") and line.get("forgery"), line
        assert not decisions(milter, account="webhosting.example")
        assert not mta.delivered()


def test_smtp_to_the_msp_listener_without_the_msps_header_is_refused(rig: tuple[PrivateSendmail, MilterProcess]) -> None:
    mta, milter = rig
    with mta.smtp(mta.msp_port) as smtp:
        code, text = attempt(lambda: smtp.sendmail("x@attacker.example", ["msp-listener@dest.example"],
                                                   MESSAGE.format(author="ceo@webhosting.example", subject="no header")))
    assert code == 550 and text.startswith("5.7.1"), (code, text)
    assert not decisions(milter, account="webhosting.example", sender="<x@attacker.example>")


def test_sendmail_bs_is_judged_as_local_mail(rig: tuple[PrivateSendmail, MilterProcess]) -> None:
    mta, milter = rig
    replies = mta.bs(["EHLO localhost", "MAIL FROM:<cron@webhosting.example>", "RCPT TO:<bs@dest.example>", "DATA",
                      MESSAGE.format(author="cron@webhosting.example", subject="bs").replace("\n", "\r\n") + ".",
                      "QUIT"])
    accepted = re.match(r"250 2\.0\.0 (\w+) Message accepted", replies[-2])
    assert replies[0].startswith("220") and accepted, replies
    mta.wait_delivered(sent_to("bs@dest.example"))
    [line] = decisions(milter, stage="eom", qid=accepted.group(1))
    assert (line["source"], line["account"], line["action"]) == ("local", "webhosting.example", "continue"), line
