"""feedback/logline.py: one line of the MTA's log, read. The fixtures are what real runs logged:
tests/fixtures/feedback/postfix.log (Postfix 3.7 through tests/helpers/postfix.py: SASL and
unauthenticated SMTP, pickup, a 5.1.1 and a 5.7.1 refusal, a deferral, a quoted recipient holding
`>, status=sent (250 ok)`, Postfix's own bounces) and tests/fixtures/feedback/sendmail.log
(Sendmail 8.17 through tests/helpers/sendmail.py: SMTP AUTH, the MSP as www-data, a 5.1.1
refusal with Sendmail's own DSN, a deferral; that rig's syslog shim writes no stamp)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from mailflow.feedback.logline import (Authenticated, AuthenticatedSubmission, Removed, head, parse_line)
from mailflow.feedback.model import TEXT_MAX, Outcome, Submission
from mailflow.logstamp import Stamps, parse_timestamp

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "feedback"
POSTFIX = (FIXTURES / "postfix.log").read_text().splitlines()
SENDMAIL = (FIXTURES / "sendmail.log").read_text().splitlines()
NOW = 1_795_000_000.0  # 2026-11-18


def stamps() -> Stamps:
    return Stamps(now=lambda: NOW)


def real(lines: list[str], needle: str) -> str:
    [line] = [line for line in lines if needle in line]
    return line


def outcome(line: str) -> Outcome:
    parsed = parse_line(line, stamps())
    assert isinstance(parsed, tuple) and len(parsed) == 1, parsed
    return parsed[0]


def test_postfix_delivery_lines_from_a_real_run() -> None:
    sent = outcome(real(POSTFIX, "to=<ok@dest.example>"))
    assert (sent.queue_id, sent.recipient, sent.status, sent.dsn, sent.reply) == (
        "03BDA20E5AC", "ok@dest.example", "sent", "2.0.0", "250 2.0.0 Ok")
    assert sent.service == "postfix/smtp" and sent.relay.startswith("127.0.0.1[127.0.0.1]:")
    assert sent.at == parse_timestamp("Nov 27 04:05:00", 2025)  # Nov 27 is after "now" (Nov 18 2026): last year's
    bounced = outcome(real(POSTFIX, "to=<gone@bad.example>"))
    assert (bounced.status, bounced.dsn) == ("bounced", "5.1.1")
    assert "User unknown in virtual mailbox table" in bounced.reply
    blocked = outcome(real(POSTFIX, "to=<x@block.example>"))
    assert (blocked.status, blocked.dsn) == ("bounced", "5.7.1") and "zen.spamhaus.org" in blocked.reply
    deferred = outcome(real(POSTFIX, "to=<later@soft.example>"))
    assert (deferred.status, deferred.dsn) == ("deferred", "4.3.0")


def test_a_quoted_recipient_holding_status_sent_is_one_recipient() -> None:
    line = real(POSTFIX, 'to=<"a>, status=sent')
    assert outcome(line).recipient == '"a>, status=sent (250 ok)"@dest.example'
    # Unquoted, the same words cannot be a recipient: the line is not read (never miscounted).
    forged = line.replace('<"a>, status=sent (250 ok)"@dest.example>', "<a>, status=sent (250 ok)@dest.example>")
    assert parse_line(forged) is None
    # A bounce whose recipient carries a fake `status=sent` stays a bounce.
    trick = real(POSTFIX, "to=<gone@bad.example>").replace("<gone@bad.example>", '<"x>, dsn=2.0.0, status=sent (ok)"@bad.example>')
    assert (outcome(trick).status, outcome(trick).dsn) == ("bounced", "5.1.1")


def test_postfix_origins_from_a_real_run() -> None:
    assert parse_line(real(POSTFIX, "03BDA20E5AC: client=")) == Submission(
        "03BDA20E5AC", client_address="127.0.0.1", login="bob@shop.example", hostname="localhost")
    assert parse_line(real(POSTFIX, "0540B20E5AD: client=")) == Submission(
        "0540B20E5AD", client_address="127.0.0.1", hostname="localhost")
    assert parse_line(real(POSTFIX, "pickup")) == Submission(
        "0AB3720E5B0", client_address="127.0.0.1", port=0, sender="wp@blog.example")
    assert parse_line(real(POSTFIX, "qmgr[10796]: 03BDA20E5AC: from=")) == Submission("03BDA20E5AC", sender="bob@shop.example")
    assert parse_line(real(POSTFIX, "qmgr[10796]: 03BDA20E5AC: removed")) == Removed("03BDA20E5AC")
    assert parse_line(real(POSTFIX, "notification: 128A020E5B9")) == Submission("128A020E5B9", sender="")
    assert parse_line(real(POSTFIX, "qmgr[10796]: 128A020E5B9: from=")) == Submission("128A020E5B9", sender="")
    for noise in ("message-id=", "connect from", "status=expired, returned", "daemon started"):
        assert all(parse_line(line) is None for line in POSTFIX if noise in line), noise


def test_smtpd_client_with_port_ipv6_and_sasl() -> None:
    line = ("2026-11-22T09:00:07.123456+00:00 mx1 postfix/submission/smtpd[1008]: 7D4E5F6A7B: "
            "client=unknown[2001:db8::25]:4711, sasl_method=LOGIN, sasl_username=carol@shop.example")
    assert parse_line(line) == Submission("7D4E5F6A7B", client_address="2001:db8::25", port=4711,
                                          login="carol@shop.example", hostname="unknown")


@pytest.mark.parametrize("service", ["postfix/smtp", "postfix-out2/smtp", "postfix/relay/smtp", "postfix/lmtp",
                                     "postfix/virtual", "postfix/local", "postfix/pipe", "postfix/error",
                                     "postfix-in/submission/discard"])
def test_multi_instance_and_syslog_names(service: str) -> None:
    line = (f"Nov 27 03:50:05 host {service}[77]: 4Y3Xb02Q1Lz6N8: to=<r@dest.example>, relay=none, delay=0.1, "
            "delays=0/0/0/0.1, dsn=2.0.0, status=sent (delivered)")
    got = outcome(line)
    assert (got.service, got.queue_id, got.status) == (service, "4Y3Xb02Q1Lz6N8", "sent")


def test_not_delivery_agents_and_not_postfix() -> None:
    tail = ": 4Y3Xb02Q1Lz6N8: to=<r@dest.example>, relay=none, dsn=2.0.0, status=sent (x)"
    for service in ("postfix/cleanup[1]", "notpostfix/smtp[1]", "exim[1]", "postfix/smtp", "postfix/smtp[x]"):
        assert parse_line("Nov 27 03:50:05 host " + service + tail) is None


def test_rfc3339_and_classic_stamps_read_the_same() -> None:
    line = real(POSTFIX, "to=<ok@dest.example>")
    iso = "2025-11-27T04:05:00.250000+00:00 mta " + line.split(" mta ", 1)[1]
    assert outcome(iso).at == outcome(line).at + 0.25
    assert outcome("2025-11-27T05:05:00+01:00 mta " + line.split(" mta ", 1)[1]).at == outcome(line).at


def test_classic_stamps_roll_over_into_january() -> None:
    clock = Stamps(now=lambda: parse_timestamp("Dec 31 23:00:00", 2026) or 0.0)
    december = clock.at("Dec 31 23:59:59 mx1 postfix/smtp[1]: x")
    january = clock.at("Jan  1 00:00:01 mx1 postfix/smtp[1]: x")
    assert january - december == 2.0
    # A December log first read in January is last year's.
    late = Stamps(now=lambda: parse_timestamp("Jan  2 10:00:00", 2027) or 0.0)
    assert late.at("Dec 31 23:59:59 mx1 x") == december
    # No stamp (Sendmail through the test rig's shim): the last one seen, else the clock.
    assert clock.at("sendmail[1]: x") == january
    assert Stamps(now=lambda: 5.0).at("sendmail[1]: x") == 5.0
    assert Stamps(now=lambda: 5.0).at("Feb 30 10:00:00 x") == 5.0  # shaped like a stamp, not a date
    assert parse_timestamp("Feb 30 10:00:00 x", 2026) is None  # replay's reader used to raise here
    assert parse_timestamp("2026-13-01T00:00:00Z x", 2026) is None


def test_sendmail_lines_from_a_real_run() -> None:
    assert parse_line(real(SENDMAIL, "sendmail[12093]: AUTH=server")) == Authenticated("sendmail[12093]", "alice@shop.example")
    received = parse_line(real(SENDMAIL, "6AR45OWf012093: from="))
    assert received == AuthenticatedSubmission(Submission(
        "6AR45OWf012093", sender="alice@shop.example", client_address="127.0.0.1", hostname="localhost",
        daemon_name="MTA-v4"), "sendmail[12093]")
    both = parse_line(real(SENDMAIL, "to=<r2@dest.example>,<r1@dest.example>"))
    assert isinstance(both, tuple) and [o.recipient for o in both] == ["r2@dest.example", "r1@dest.example"]
    assert {(o.status, o.dsn, o.reply, o.service) for o in both} == {("sent", "2.0.0", "Sent (Ok)", "sendmail")}
    assert parse_line(real(SENDMAIL, "6AR45OqR012105: from=www-data")) == Submission(
        "6AR45OqR012105", sender="www-data", unix_user="www-data")
    handoff = outcome(real(SENDMAIL, "to=fan@dest.example"))
    assert handoff.reply == "Sent (6AR45O8P012106 Message accepted for delivery)"
    assert handoff.relay == "[127.0.0.1] [127.0.0.1]"
    gone = outcome(real(SENDMAIL, "to=<gone@dest.example>"))
    assert (gone.status, gone.dsn) == ("bounced", "5.1.1")
    assert gone.reply == "550 5.1.1 <x>: Recipient address rejected: User unknown"  # reply=, the receiver's words
    assert parse_line(real(SENDMAIL, "6AR45SEB012307: DSN:")) == Submission("6AR45SEB012307", sender="")
    assert parse_line(real(SENDMAIL, "return to sender")) == Submission("6AR45SEC012307", sender="")
    later = outcome(real(SENDMAIL, "to=<later@dest.example>"))
    assert (later.status, later.dsn, later.reply) == ("deferred", "4.4.1", "Deferred: Connection refused by [127.0.0.1]")


def test_sendmail_syslog_names_and_documented_shapes() -> None:
    line = ("Nov 27 03:50:05 mx1 sm-mta[4242]: 0ARDo5Yx004242: to=<bob@dest.example>, ctladdr=<a@shop.example> "
            "(1000/1000), delay=00:00:01, xdelay=00:00:01, mailer=esmtp, pri=120394, relay=mx.dest.example. "
            "[203.0.113.5], dsn=5.1.1, stat=User unknown")
    got = outcome(line)
    assert (got.service, got.status, got.dsn, got.reply, got.relay) == (
        "sm-mta", "bounced", "5.1.1", "User unknown", "mx.dest.example. [203.0.113.5]")
    # The receiver's words cannot turn a 5.1.1 into a delivery: dsn= decides.
    trick = line.replace("stat=User unknown", "reply=550 5.1.1 x, stat=Sent (ok), stat=User unknown")
    assert outcome(trick).status == "bounced"
    sent = outcome(line.replace("dsn=5.1.1, stat=User unknown", "stat=Sent (OK id=1)"))
    assert (sent.status, sent.dsn) == ("sent", "")
    mta = ("Nov 27 03:50:05 mx1 sm-mta[4243]: 0ARDo5Yx004243: from=<a@shop.example>, size=312, class=0, nrcpts=1, "
           "msgid=<x, proto=ESMTPA, daemon=MSP-v4, relay=evil [1.2.3.4]@x>, proto=ESMTP, daemon=MTA-v4, "
           "relay=web1.example [192.0.2.10] (may be forged)")
    assert parse_line(mta) == Submission("0ARDo5Yx004243", sender="a@shop.example", client_address="192.0.2.10",
                                         hostname="web1.example", daemon_name="MTA-v4")


HOSTILE = [
    "",
    "\x00" * 100,
    "x" * 1_000_000,
    "Nov 27 03:50:05 h postfix/smtp[1]: 4Y3Xb02Q1Lz6N8: to=<" + "a" * 1_000_000,
    "Nov 27 03:50:05 h postfix/smtp[1]: 4Y3Xb02Q1Lz6N8: to=<" + '"' + "\\\"" * 500_000,
    "Nov 27 03:50:05 h postfix/smtp[1]: 4Y3Xb02Q1Lz6N8: to=<" + ">, relay=" * 100_000,
    "Nov 27 03:50:05 h postfix/qmgr[1]: 4Y3Xb02Q1Lz6N8: from=<" + ">, size=1, nrcpt=" * 50_000,
    "Nov 27 03:50:05 h sendmail[1]: 0ARDo5Yx004242: to=" + "<a>," * 200_000,
    "Nov 27 03:50:05 h sendmail[1]: 0ARDo5Yx004242: from=<a>, size=1, class=0, nrcpts=1" + ", relay=" * 100_000,
    "Nov 27 03:50:05 h sendmail[1]: AUTH=server, relay=" + "x" * 1_000_000,
    "]: " * 300_000,
    "Nov 27 03:50:05 h " + "postfix/" * 100_000 + "smtp[1]: QID12: to=<a@b>, relay=none, status=sent",
    "\ufffd" * 10_000 + " postfix/smtp[1]: 4Y3Xb02Q1Lz6N8: to=<a@b>, relay=none, dsn=2.0.0, status=sent (\x00)",
    "Nov 27 03:50:05 h postfix/smtp[1]: 4Y3Xb02Q1Lz6N8: to=<a@b>, relay=none, dsn=5.1.1, status=bounced (" + "(" * 1_000_000,
    "Nov 27 03:50:05 h postfix/smtp[1]: 4Y3Xb02Q1Lz6N8: to=<a@b>, relay=none, dsn=5.1.1, status=bounced (" + ")" * 1_000_000,
    "Nov 27 03:50:05 h sendmail[1]: 0ARDo5Yx004242: to=<a@b>, delay=00:00:00, xdelay=00:00:00, mailer=esmtp, pri=1, "
    "relay=x [1.2.3.4], dsn=5.1.1, reply=" + ", stat=" * 150_000,
    "Nov 27 03:50:05 " + "h" * 1_000_000 + " postfix/smtp[1]: Q1234: to=<a@b>, relay=none, status=sent (x)",
    "2026-11-27T03:50:05." + "1" * 1_000_000 + "+00:00 h postfix/smtp[1]: Q1234: to=<a@b>, relay=none, status=sent (x)",
]


@pytest.mark.timing
def test_hostile_lines_are_read_in_linear_time_and_never_raise() -> None:
    clock = stamps()
    for line in HOSTILE:
        started = time.monotonic()
        parse_line(line, clock)
        assert time.monotonic() - started < 0.5, line[:120]


def test_a_long_reply_is_cut_and_a_long_recipient_unread() -> None:
    base = "Nov 27 03:50:05 h postfix/smtp[1]: 4Y3Xb02Q1Lz6N8: to=<{rcpt}>, relay=none, dsn=5.1.1, status=bounced ({text})"
    assert len(outcome(base.format(rcpt="a@b", text="y" * 100_000)).reply) == TEXT_MAX
    assert parse_line(base.format(rcpt="a" * 300 + "@" + "b" * 20, text="x")) is None  # over 320
    assert outcome(base.format(rcpt="A" * 300 + "@B.example", text="x")).recipient == "a" * 300 + "@b.example"


def test_head_finds_the_service_cheaply() -> None:
    found = head("Nov 27 03:50:05 mx1 postfix-out2/smtp[123]: ABCDE12345: to=<x>")
    assert found is not None and (found.service, found.process, found.queue_id, found.rest) == (
        "postfix-out2/smtp", "postfix-out2/smtp[123]", "ABCDE12345", "to=<x>")
    assert head("Nov 27 03:50:05 mx1 postfix/smtpd[1]: NOQUEUE: reject: RCPT from x") is not None
    assert parse_line("Nov 27 03:50:05 mx1 postfix/smtpd[1]: NOQUEUE: client=x[1.2.3.4]") is None


def test_only_syslogs_tag_names_the_service() -> None:
    """Another program's message quoting a Postfix line is not Postfix's line."""
    quoted = ("Nov 27 03:50:05 mx1 myapp[5]: user wrote: postfix/smtp[1]: 4Y3Xb02Q1Lz6N8: to=<r@dest.example>, "
              "relay=none, dsn=5.1.1, status=bounced (x)")
    assert parse_line(quoted) is None
    assert parse_line("Nov 27 03:50:05 mx1 postfix/smtp[1]: 4Y3Xb02Q1Lz6N8: to=<r@dest.example>, relay=none, "
                      "dsn=5.1.1, status=bounced (x)") is not None
