"""A customer writes its envelope sender, and Postfix logs it as written inside qmgr's own
`from=<…>, size=…, nrcpt=N` line. The lines below are what a real Postfix (tests/helpers/postfix.py)
logged for `MAIL FROM:<"x>, size=1, nrcpt=500 y"@shop.example>` and for a local sender posing as
another hosted domain: `replay --from-log` must read Postfix's own fields, not the customer's."""

from __future__ import annotations

from mailflow.replay.postfix_log import sessions_from_log

INFLATED = [
    "Nov 26 22:59:25 mta postfix/smtpd[1800]: CD6B921425A: client=localhost[127.0.0.1], sasl_method=PLAIN, "
    "sasl_username=bob@shop.example",
    'Nov 26 22:59:25 mta postfix/qmgr[1784]: CD6B921425A: from=<"x>, size=1, nrcpt=500 y"@shop.example>, '
    "size=209, nrcpt=1 (queue active)",
    "Nov 26 22:59:26 mta postfix/smtp[1801]: CD6B921425A: to=<a@dest.example>, relay=127.0.0.1[127.0.0.1]:25, "
    "delay=0.02, delays=0/0.01/0/0, dsn=2.0.0, status=sent (250 2.0.0 Ok)",
]

POSING = [
    "Nov 26 23:01:00 mta postfix/pickup[1790]: AB12CD34EF5: uid=1001 from=<php@evil.example>",
    'Nov 26 23:01:00 mta postfix/qmgr[1784]: AB12CD34EF5: from=<"php@victim.example>, size=1, nrcpt=1 z"'
    "@evil.example>, size=300, nrcpt=1 (queue active)",
    "Nov 26 23:01:01 mta postfix/smtp[1801]: AB12CD34EF5: to=<a@dest.example>, relay=127.0.0.1[127.0.0.1]:25, "
    "delay=0.02, delays=0/0.01/0/0, dsn=2.0.0, status=sent (250 2.0.0 Ok)",
]


def test_a_sender_carrying_nrcpt_does_not_invent_recipients() -> None:
    [session] = sessions_from_log(INFLATED, year=2026)
    assert session.rcpt_to == ("a@dest.example",)
    assert session.mail_from == '"x>, size=1, nrcpt=500 y"@shop.example'


def test_a_sender_carrying_another_domain_is_read_whole() -> None:
    [session] = sessions_from_log(POSING, year=2026)
    assert session.mail_from == '"php@victim.example>, size=1, nrcpt=1 z"@evil.example'  # evil.example's, not victim's


def test_a_long_hostile_sender_parses_in_linear_time() -> None:
    line = "Nov 26 23:01:00 mta postfix/qmgr[1784]: AB12CD34EF5: from=<" + ">, size=1, nrcpt=" * 20_000 + "x>"
    assert sessions_from_log([line], year=2026) == []
