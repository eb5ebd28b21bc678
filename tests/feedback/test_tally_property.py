"""Hypothesis: whatever the log holds, Tally never raises, and every delivery line counts at most
once: fed a log of known messages with garbage between its lines, the batch's counts add up to
exactly the delivery lines written (a line repeated verbatim is a second attempt in a real log,
and counts again)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailflow.config import parse_config
from mailflow.feedback.model import UNKNOWN_RECIPIENT
from mailflow.feedback.tally import Tally

CONFIG = parse_config({"accounts": {"trusted_networks": ["192.0.2.0/24"], "ip_map": {"192.0.2.10/32": "web1"}}})
LOGINS = ("bob@shop.example", "carol@blog.example", "dave@shop.example")
STATUSES = (("2.0.0", "sent"), ("4.4.1", "deferred"), ("5.1.1", "bounced"), ("5.2.2", "bounced"),
            ("5.7.1", "bounced"), ("5.4.4", "bounced"), ("4.4.7", "expired"))
FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def quoted(local: str) -> str:
    return '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"@dest.example'


recipients = st.one_of(
    st.sampled_from(["a@dest.example", "B@Dest.example", "c@other.example"]),
    st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF, blacklist_characters="\x7f"), max_size=40).map(quoted),
)
deliveries = st.lists(st.tuples(recipients, st.sampled_from(STATUSES), st.text(max_size=30), st.booleans()),
                      min_size=1, max_size=6)
messages = st.lists(st.tuples(st.sampled_from(LOGINS + ("",)), deliveries, st.booleans()), min_size=1, max_size=8)
garbage = st.one_of(st.text(max_size=200), st.binary(max_size=200).map(lambda b: b.decode("utf-8", errors="replace")),
                    st.just("Nov 27 04:05:00 mta postfix/smtp[1]: 00000QQ: to=<x@y>, relay=none, status=sent (ok"))


def log_of(batch: list[tuple[str, list[tuple[str, tuple[str, str], str, bool]], bool]]) -> tuple[list[str], dict[str, int]]:
    lines: list[str] = []
    expected: dict[str, int] = {}
    for i, (login, attempts, removed) in enumerate(batch, start=1):
        qid = f"{i:05X}QQ"
        if login:
            lines.append(f"Nov 27 04:04:59 mta postfix/smtpd[2]: {qid}: client=c[198.51.100.1]:1, sasl_method=PLAIN, "
                         f"sasl_username={login}")
            account = login.partition("@")[2]
        else:
            lines.append(f"Nov 27 04:04:59 mta postfix/smtpd[2]: {qid}: client=web1[192.0.2.10]:1")
            account = "web1"
        lines.append(f"Nov 27 04:04:59 mta postfix/qmgr[3]: {qid}: from=<s@shop.example>, size=1, nrcpt=1 (queue active)")
        for rcpt, (dsn, status), text, repeated in attempts:
            if len(rcpt) > 320:
                continue
            text = text.replace("\n", " ").replace("\r", " ")
            line = (f"Nov 27 04:05:00 mta postfix/smtp[4]: {qid}: to=<{rcpt}>, relay=mx[203.0.113.5]:25, delay=1, "
                    f"delays=0/0/0/1, dsn={dsn}, status={status} ({text})")
            lines += [line, line] if repeated else [line]
            expected[account] = expected.get(account, 0) + (2 if repeated else 1)
        if removed:
            lines.append(f"Nov 27 04:05:01 mta postfix/qmgr[3]: {qid}: removed")
    return lines, expected


@FAST
@given(st.lists(garbage, max_size=30))
def test_arbitrary_lines_never_raise(lines: list[str]) -> None:
    tally = Tally(CONFIG, now=lambda: 1_795_000_000.0)
    for line in lines:
        tally.add_line(line)
    batch = tally.take()
    assert sum(n for (_, _, name), n in batch.counts.items() if name != UNKNOWN_RECIPIENT) == tally.stats.attributed


@FAST
@given(messages, st.lists(st.tuples(st.integers(min_value=0), garbage), max_size=20), st.integers(1, 7))
def test_every_delivery_line_counts_exactly_once(batch: list[tuple[str, list[tuple[str, tuple[str, str], str, bool]], bool]],
                                                 noise: list[tuple[int, str]], every: int) -> None:
    lines, expected = log_of(batch)
    for position, line in noise:
        lines.insert(position % (len(lines) + 1), line)
    tally = Tally(CONFIG, now=lambda: 1_795_000_000.0)
    counted: dict[str, int] = {}
    for n, line in enumerate(lines):
        tally.add_line(line)
        if n % every == 0:  # take() between any two lines loses and repeats nothing
            for (_, account, name), count in tally.take().counts.items():
                if name != UNKNOWN_RECIPIENT:
                    counted[account] = counted.get(account, 0) + count
    for (_, account, name), count in tally.take().counts.items():
        if name != UNKNOWN_RECIPIENT:
            counted[account] = counted.get(account, 0) + count
    assert counted == expected
    stats = tally.stats
    assert stats.attributed == sum(expected.values())
    assert stats.outcomes == stats.attributed + stats.unattributed + stats.skipped + stats.waiting


@FAST
@given(st.text(max_size=60), st.text(max_size=60), st.text(max_size=60))
def test_hostile_origins_go_through_the_identity_rules_without_raising(login: str, sender: str, address: str) -> None:
    """Whatever a log writes as login, sender or client address reaches accounts.identify()."""
    def clean(text: str) -> str:
        return "".join(c for c in text if not c.isspace() and c not in ',<>"') or "x"
    tally = Tally(CONFIG, now=lambda: 1_795_000_000.0)
    for qid, sasl in (("AAAAA1", f", sasl_method=PLAIN, sasl_username={clean(login)}"), ("AAAAA2", "")):
        tally.add_line(f"Nov 27 04:04:59 mta postfix/smtpd[2]: {qid}: client=n[{clean(address)}]:1{sasl}")
        tally.add_line(f"Nov 27 04:04:59 mta postfix/qmgr[3]: {qid}: from=<{clean(sender)}>, size=1, nrcpt=1 (queue active)")
        tally.add_line(f"Nov 27 04:05:00 mta postfix/smtp[4]: {qid}: to=<r@dest.example>, relay=none, dsn=5.1.1, "
                       "status=bounced (x)")
    tally.add_line(f"sendmail[9]: AUTH=server, relay=x [1.2.3.4], authid={clean(login)}, mech=PLAIN, bits=0")
    tally.add_line(f"sendmail[9]: AAAAA3: from=<{clean(sender)}>, size=1, class=0, nrcpts=1, msgid=<{login}>, "
                   f"proto=ESMTPA, daemon=MTA-v4, relay=h [{clean(address)}]")
    tally.add_line("sendmail[9]: AAAAA3: to=<r@dest.example>, delay=00:00:00, xdelay=00:00:00, mailer=esmtp, pri=1, "
                   "relay=mx [203.0.113.5], dsn=5.1.1, stat=User unknown")
    batch = tally.take()
    assert sum(n for (_, _, name), n in batch.counts.items() if name != UNKNOWN_RECIPIENT) == tally.stats.attributed
