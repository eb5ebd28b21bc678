"""feedback/tally.py: deliveries counted per (hour, account) against the account the milter
charged, through accounts.py's identity rules; classification; the bounded memory. Real log lines
from tests/fixtures/feedback/ (see test_logline.py) plus lines written in the same shapes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mailflow.config import parse_config
from mailflow.feedback.model import (BOUNCE_ADDRESS, BOUNCE_MAILBOX, BOUNCE_OTHER, BOUNCE_POLICY, DEFERRED, DELIVERED,
                                     EVIDENCE_MAX, HARD_BOUNCES, TEXT_MAX, UNKNOWN_RECIPIENT, Outcome)
from mailflow.feedback.tally import Tally, classify, digest
from mailflow.logstamp import parse_timestamp

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "feedback"
POSTFIX = (FIXTURES / "postfix.log").read_text().splitlines()
SENDMAIL = (FIXTURES / "sendmail.log").read_text().splitlines()
NOW = 1_795_000_000.0  # 2026-11-18: the fixture's "Nov 27" is 2025's
HOUR = int(parse_timestamp("Nov 27 04:05:00", 2025) or 0) // 3600


def tally(accounts: dict[str, Any] | None = None, **kwargs: Any) -> Tally:
    return Tally(parse_config({"accounts": accounts or {}}), now=lambda: NOW, **kwargs)


def fed(t: Tally, lines: list[str]) -> Tally:
    for line in lines:
        t.add_line(line)
    return t


def per_account(t: Tally) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for (_, account, name), n in t.take().counts.items():
        out.setdefault(account, {})[name] = out.get(account, {}).get(name, 0) + n
    return out


def line(qid: str, rcpt: str, dsn: str, status: str, text: str = "x", stamp: str = "Nov 27 04:05:00") -> str:
    return (f"{stamp} mta postfix/smtp[1]: {qid}: to=<{rcpt}>, relay=mx.dest.example[203.0.113.5]:25, delay=1, "
            f"delays=0/0/0/1, dsn={dsn}, status={status} ({text})")


def smtpd(qid: str, ip: str = "192.0.2.10", login: str = "", sender: str = "a@shop.example") -> list[str]:
    sasl = f", sasl_method=PLAIN, sasl_username={login}" if login else ""
    return [f"Nov 27 04:04:59 mta postfix/smtpd[2]: {qid}: client=web1.example[{ip}]:40000{sasl}",
            f"Nov 27 04:04:59 mta postfix/qmgr[3]: {qid}: from=<{sender}>, size=100, nrcpt=1 (queue active)"]


def test_a_real_postfix_run_counts_against_the_milters_accounts() -> None:
    t = fed(tally({"map": {"bob@shop.example": "bob-hosting"}}), POSTFIX)
    batch = t.take()
    assert batch.counts == {
        (HOUR, "bob-hosting", DELIVERED): 2, (HOUR, "bob-hosting", BOUNCE_ADDRESS): 1,  # SASL login, mapped
        (HOUR, "bob-hosting", UNKNOWN_RECIPIENT): 1, (HOUR, "bob-hosting", BOUNCE_POLICY): 1,
        (HOUR, "shop.example", DEFERRED): 1,  # unauthenticated from this host: the sender's domain (monitoring)
        (HOUR, "blog.example", DELIVERED): 1, (HOUR, "blog.example", BOUNCE_ADDRESS): 1,  # pickup: the sender
        (HOUR, "blog.example", UNKNOWN_RECIPIENT): 1,
    }
    assert batch.suppress == {"bob-hosting": {"gone@bad.example": "bounce"}, "blog.example": {"nobody@bad.example": "bounce"}}
    assert batch.recipients[(HOUR, "bob-hosting")] == {digest(r) for r in (
        "ok@dest.example", "gone@bad.example", "x@block.example", '"a>, status=sent (250 ok)"@dest.example')}
    assert len(batch.evidence["bob-hosting"]) == 2 and "dsn=5.7.1" in batch.evidence["bob-hosting"][1]
    # Postfix's three bounce reports (null sender, no client) are nobody's feedback.
    assert (t.stats.outcomes, t.stats.attributed, t.stats.skipped, t.stats.unattributed) == (10, 7, 3, 0)
    assert len(t) == 0  # every queue id was `removed`


def test_a_real_sendmail_run_counts_sasl_and_msp_users() -> None:
    t = fed(tally({"msp_daemons": ["MSP-mailflow"], "map": {"www-data": "hosting7"}}), SENDMAIL)
    assert per_account(t) == {
        "shop.example": {DELIVERED: 2, BOUNCE_ADDRESS: 1, UNKNOWN_RECIPIENT: 1, DEFERRED: 1},  # authid=alice@shop.example
        "hosting7": {DELIVERED: 1},  # the MSP's www-data, named by the MSP's `Sent (QID …)` line
    }
    # The MSP's hand-over, Sendmail's own DSN and its return to postmaster are skipped.
    assert (t.stats.attributed, t.stats.skipped, t.stats.unattributed) == (5, 3, 0)


def test_sendmail_msp_delivery_logged_before_the_msp_names_the_user() -> None:
    msp = [x for x in SENDMAIL if "6AR45OqR012105: to=" in x]
    mta = [x for x in SENDMAIL if "6AR45O8P012106: to=" in x]
    rest = [x for x in SENDMAIL if x not in msp and x not in mta and "012093" not in x]
    reordered = [x for x in rest if "012106: from=" in x or "012105: from=" in x] + mta + msp
    t = tally({"msp_daemons": ["MSP-mailflow"]})
    fed(t, reordered[:-1])
    assert t.stats.waiting == 1 and t.take().counts == {}
    fed(t, reordered[-1:])
    assert per_account(t) == {"www-data": {DELIVERED: 1}}
    assert (t.stats.attributed, t.stats.unattributed, t.stats.waiting) == (1, 0, 0)


def test_sendmail_authenticated_session_whose_auth_line_was_not_seen_is_not_guessed() -> None:
    t = fed(tally(), [x for x in SENDMAIL if "012495" in x and "AUTH=" not in x])
    assert t.take().counts == {} and t.stats.unattributed == 1


def test_sendmail_unauthenticated_session_does_not_take_a_login() -> None:
    lines = [x.replace("proto=ESMTPA", "proto=ESMTP") for x in SENDMAIL if "012495" in x]
    t = fed(tally({"local_smtp": "sender_domain", "identify": ["sasl", "local"]}), lines)
    assert per_account(t) == {"shop.example": {DEFERRED: 1}}  # the sender's domain, as the milter would
    assert t.take().counts == {}


def test_trusted_client_through_ip_map() -> None:
    accounts = {"trusted_networks": ["192.0.2.0/24"], "ip_map": {"192.0.2.10/32": "web1"}}
    lines = [*smtpd("AAAAA1"), line("AAAAA1", "r@dest.example", "2.0.0", "sent"),
             *smtpd("AAAAA2", ip="192.0.2.20", sender="x@unmapped.example"), line("AAAAA2", "s@dest.example", "2.0.0", "sent")]
    t = fed(tally(accounts), lines)
    # 192.0.2.20 is trusted but unmapped: what the milter goes on with in monitor mode (the sender's domain).
    assert per_account(t) == {"web1": {DELIVERED: 1}, "unmapped.example": {DELIVERED: 1}}
    owned = fed(tally(accounts, owner=lambda domain: "owner7" if domain == "unmapped.example" else None), lines)
    assert per_account(owned) == {"web1": {DELIVERED: 1}, "owner7": {DELIVERED: 1}}


def test_inbound_mail_and_missing_origins_are_not_counted() -> None:
    inbound = [*smtpd("BBBBB1", ip="198.51.100.7", sender="someone@remote.example"),
               "Nov 27 04:05:00 mta postfix/local[9]: BBBBB1: to=<user@shop.example>, relay=local, delay=0.1, "
               "delays=0/0/0/0.1, dsn=2.0.0, status=sent (delivered to mailbox)"]
    orphan = [line("CCCCC1", "r@dest.example", "5.1.1", "bounced")]  # the log starts after its origin
    qmgr_only = [smtpd("DDDDD1")[1], line("DDDDD1", "r@dest.example", "2.0.0", "sent")]
    t = fed(tally(), inbound + orphan + qmgr_only)
    assert t.take().counts == {}
    assert (t.stats.outcomes, t.stats.skipped, t.stats.unattributed, t.stats.attributed) == (3, 1, 2, 0)


def test_a_null_sender_from_a_customer_counts_but_local_bounces_do_not() -> None:
    lines = [*smtpd("EEEEE1", login="bob@shop.example", sender=""), line("EEEEE1", "r@dest.example", "2.0.0", "sent"),
             "Nov 27 04:05:00 mta postfix/pickup[5]: EEEEE2: uid=0 from=<>",
             "Nov 27 04:05:00 mta postfix/qmgr[3]: EEEEE2: from=<>, size=1, nrcpt=1 (queue active)",
             line("EEEEE2", "r@dest.example", "5.1.1", "bounced")]
    t = fed(tally(), lines)
    assert per_account(t) == {"shop.example": {DELIVERED: 1}}  # authenticated: the login's account pays
    assert t.stats.skipped == 1  # the `local` account's <> mail


@pytest.mark.parametrize(("status", "dsn", "text", "fields"), [
    ("sent", "2.0.0", "250 ok", (DELIVERED,)),
    ("deferred", "4.7.0", "try later", (DEFERRED,)),
    ("bounced", "5.1.1", "550 5.1.1 no", (BOUNCE_ADDRESS, UNKNOWN_RECIPIENT)),
    ("bounced", "5.1.0", "550 5.1.0", (BOUNCE_ADDRESS, UNKNOWN_RECIPIENT)),
    ("bounced", "5.1.10", "550 5.1.10 null MX", (BOUNCE_ADDRESS, UNKNOWN_RECIPIENT)),
    ("bounced", "5.1.2", "550 5.1.2 bad destination", (BOUNCE_ADDRESS,)),
    ("bounced", "5.1.6", "550 5.1.6 mailbox Does Not Exist", (BOUNCE_ADDRESS, UNKNOWN_RECIPIENT)),
    ("bounced", "5.2.2", "552 5.2.2 mailbox full", (BOUNCE_MAILBOX,)),
    ("bounced", "5.7.1", "554 5.7.1 blocked", (BOUNCE_POLICY,)),
    ("bounced", "5.4.4", "host not found", (BOUNCE_OTHER,)),
    ("bounced", "5.0.0", "host x said: 550 User unknown", (BOUNCE_ADDRESS, UNKNOWN_RECIPIENT)),  # no enhanced code
    ("bounced", "5.0.0", "host x said: 550 go away", (BOUNCE_OTHER,)),
    ("bounced", "5.5.0", "User unknown", (BOUNCE_OTHER,)),
    ("bounced", "", "User unknown", (BOUNCE_OTHER,)),
    ("expired", "4.4.1", "timeout", (BOUNCE_OTHER,)),
])
def test_classification(status: str, dsn: str, text: str, fields: tuple[str, ...]) -> None:
    assert classify(Outcome(0.0, "Q", "r@x", status, dsn, text, "postfix/smtp", "")) == fields


def test_bounce_classes_suppression_and_evidence_through_the_tally() -> None:
    lines = smtpd("FFFFF1", login="bob@shop.example")
    for i, (dsn, text) in enumerate([("5.1.1", "user unknown"), ("5.2.2", "full"), ("5.7.1", "blocked " + "z" * 500),
                                     ("5.4.4", "no route"), ("5.1.3", "bad syntax"), ("5.7.1", "again"),
                                     ("5.7.1", "and again")]):
        lines.append(line("FFFFF1", f"R{i}@Dest.example", dsn, "bounced", text))
    lines.append(line("FFFFF1", "late@dest.example", "4.4.1", "expired", "timeout"))
    t = fed(tally(), lines)
    batch = t.take()
    counts = {name: n for (_, _, name), n in batch.counts.items()}
    assert counts == {BOUNCE_ADDRESS: 2, UNKNOWN_RECIPIENT: 1, BOUNCE_MAILBOX: 1, BOUNCE_POLICY: 3, BOUNCE_OTHER: 2}
    assert batch.suppress == {"shop.example": {"r0@dest.example": "bounce", "r4@dest.example": "bounce"}}  # 5.1.x only
    evidence = batch.evidence["shop.example"]
    assert len(evidence) == EVIDENCE_MAX and all(len(e) <= TEXT_MAX for e in evidence)
    assert evidence[0].startswith("2025-11-27T04:05:00Z postfix/smtp FFFFF1: to=<r0@dest.example>, dsn=5.1.1")
    assert sum(n for (_, _, name), n in batch.counts.items() if name in HARD_BOUNCES) == t.stats.attributed == 8


def test_hours_digests_and_take() -> None:
    lines = [*smtpd("GGGGG1", login="bob@shop.example"),
             line("GGGGG1", "A@dest.example", "2.0.0", "sent", stamp="Nov 27 04:59:59"),
             line("GGGGG1", "a@dest.example", "4.0.0", "deferred", stamp="Nov 27 04:59:59"),
             line("GGGGG1", "a@dest.example", "2.0.0", "sent", stamp="Nov 27 05:00:00")]
    t = fed(tally(), lines)
    batch = t.take()
    hour = int(parse_timestamp("Nov 27 04:59:59", 2025) or 0) // 3600
    assert batch.counts == {(hour, "shop.example", DELIVERED): 1, (hour, "shop.example", DEFERRED): 1,
                            (hour + 1, "shop.example", DELIVERED): 1}
    assert batch.recipients == {(hour, "shop.example"): {digest("a@dest.example")},
                                (hour + 1, "shop.example"): {digest("a@dest.example")}}
    assert len(digest("a@dest.example")) == 16
    assert t.take().counts == {} and t.take().recipients == {}
    t.add_line(line("GGGGG1", "b@dest.example", "2.0.0", "sent"))  # the origin outlives a take()
    assert sum(t.take().counts.values()) == 1


def test_memory_is_bounded_oldest_origins_evicted() -> None:
    t = tally(max_queue_ids=3)
    for i in range(10):
        fed(t, smtpd(f"HHHHH{i}", login="bob@shop.example"))
    assert len(t) == 3 and t.stats.evicted == 7
    fed(t, [line(f"HHHHH{i}", "r@dest.example", "2.0.0", "sent") for i in range(10)])
    assert (t.stats.attributed, t.stats.unattributed) == (3, 7)  # only the three newest are still known
    t.add_line("Nov 27 04:05:01 mta postfix/qmgr[3]: HHHHH9: removed")
    assert len(t) == 2


def test_sendmail_sessions_are_bounded() -> None:
    from mailflow.feedback import tally as module
    t = tally()
    for pid in range(module.MAX_SESSIONS + 5):
        t.add_line(f"sendmail[{pid}]: AUTH=server, relay=localhost [127.0.0.1], authid=u{pid}@x, mech=PLAIN, bits=0")
    assert len(t._logins) == module.MAX_SESSIONS


def test_a_hand_over_to_another_instance_counts_once_against_the_first_origin() -> None:
    """Multi-instance Postfix (or a content filter's re-injection): the input instance hands the
    message to postfix-out on 127.0.0.1, which logs its own queue id with a loopback client."""
    lines = [*smtpd("JJJJJ1", login="bob@shop.example"),
             "Nov 27 04:05:00 mta postfix/smtpd[7]: JJJJJ2: client=localhost[127.0.0.1]:50000",  # postfix-out's queue
             "Nov 27 04:05:00 mta postfix-out/qmgr[8]: JJJJJ2: from=<a@shop.example>, size=100, nrcpt=1 (queue active)",
             "Nov 27 04:05:00 mta postfix/smtp[1]: JJJJJ1: to=<r@dest.example>, relay=127.0.0.1[127.0.0.1]:2525, delay=0.1, "
             "delays=0/0/0/0.1, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as JJJJJ2)",
             "Nov 27 04:05:00 mta postfix/qmgr[3]: JJJJJ1: removed",
             "Nov 27 04:05:01 mta postfix-out/smtp[9]: JJJJJ2: to=<r@dest.example>, relay=mx.dest.example[203.0.113.5]:25, "
             "delay=1, delays=0/0/0/1, dsn=5.1.1, status=bounced (550 5.1.1 user unknown)"]
    t = fed(tally({"map": {"bob@shop.example": "bob-hosting"}}), lines)
    assert per_account(t) == {"bob-hosting": {BOUNCE_ADDRESS: 1, UNKNOWN_RECIPIENT: 1}}
    assert (t.stats.attributed, t.stats.skipped) == (1, 1)
    # A relay elsewhere that says "queued as" is a delivery like any other.
    remote = [x.replace("relay=127.0.0.1[127.0.0.1]:2525", "relay=mx.dest.example[203.0.113.5]:25") for x in lines[:5]]
    assert per_account(fed(tally(), remote)) == {"shop.example": {DELIVERED: 1}}


def test_observers_see_every_outcome_once_with_the_account_charged() -> None:
    seen: list[tuple[str, str | None]] = []
    t = tally({"map": {"bob@shop.example": "bob-hosting"}})
    t.observers.append(lambda outcome, account: seen.append((outcome.recipient, account)))
    fed(t, POSTFIX)
    assert len(seen) == t.stats.outcomes == 10
    assert ("x@block.example", "bob-hosting") in seen and ("bob@shop.example", None) in seen  # a bounce notice: nobody's
    assert sum(1 for _, account in seen if account is None) == t.stats.skipped + t.stats.unattributed


def test_observers_see_a_waiting_delivery_when_it_is_decided() -> None:
    msp = [x for x in SENDMAIL if "6AR45OqR012105: to=" in x]
    mta = [x for x in SENDMAIL if "6AR45O8P012106: to=" in x]
    origins = [x for x in SENDMAIL if "012106: from=" in x or "012105: from=" in x]
    seen: list[tuple[str, str | None]] = []
    t = tally({"msp_daemons": ["MSP-mailflow"]})
    t.observers.append(lambda outcome, account: seen.append((outcome.relay, account)))
    fed(t, origins + mta)
    assert seen == []
    fed(t, msp)  # the MSP's hop (nobody's), then the MTA's delivery it names the user of
    assert [account for _, account in seen] == [None, "www-data"]
