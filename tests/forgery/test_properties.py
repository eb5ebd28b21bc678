"""Hostile header text: the parser and the checks never raise, normalisation is stable."""

from __future__ import annotations

from datetime import datetime, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from mailflow.accounts import canonical_domain
from mailflow.forgery.addresses import AddressError, domains_in_text, parse_mailboxes
from mailflow.forgery.ownership import organisational_domain
from mailflow.forgery.rules import Checker, MessageFacts
from tests.forgery.test_corpus import CHECKER, NOW

header_text = st.one_of(
    st.text(max_size=120),
    st.from_regex(r'[ -~]{0,20}<[a-z0-9."@=?-]{0,30}>[ -~]{0,10}', fullmatch=True),
    st.from_regex(r"=\?utf-8\?[qQbB]\?[ -~]{0,30}\?=[ -~]{0,20}", fullmatch=True),
)


@given(header_text)
@settings(max_examples=300)
def test_the_address_parser_only_raises_address_error(value: str) -> None:
    try:
        for mailbox in parse_mailboxes("From", value):
            assert mailbox.domain == canonical_domain(mailbox.domain)
    except AddressError:
        pass


@given(st.text(max_size=80))
def test_domains_in_text_never_raises(text: str) -> None:
    for domain in domains_in_text(text):
        assert canonical_domain(domain) == domain


@given(st.text(max_size=60))
def test_organisational_domain_is_stable(domain: str) -> None:
    org = organisational_domain(domain)
    if org is not None:
        assert organisational_domain(org) == org


header_lists = st.lists(st.tuples(st.sampled_from(["From", "Sender", "Reply-To", "Date", "Subject", "List-Id",
                                                   "Resent-From", "Received", "To", "X-Other"]), header_text), max_size=8)
envelope_senders = st.sampled_from(["", "bob@shop.example", "SRS0=a=b=c=d@shop.example", "x@bank.example"])


@given(header_lists, envelope_senders)
@settings(max_examples=300)
def test_the_checks_never_raise(headers: list[tuple[str, str]], sender: str) -> None:
    facts = MessageFacts("shop.example", "sasl", sender, headers, datetime(2026, 11, 22, tzinfo=timezone.utc))
    for finding in CHECKER.headers(facts):
        assert finding.text


# Few distinct lines, so that many examples share author lines and meet each other in the memo.
familiar_lines = st.sampled_from(["bob@shop.example", "Bob <bob@shop.example>", "eve@bank.example", "a@b@c",
                                  "Sun, 22 Nov 2026 11:00:00 +0000", "Thu, 01 Jan 2015 00:00:00 +0000", "x"])


@given(st.lists(st.tuples(st.sampled_from(["From", "Sender", "Reply-To", "Date", "List-Id", "Resent-From", "Received",
                                           "Message-ID", "X-Other"]), familiar_lines), max_size=6),
       envelope_senders, st.sampled_from(["shop.example", "bank.example"]), st.sampled_from(["sasl", "local"]))
@settings(max_examples=300)
def test_the_author_memo_never_changes_an_answer(headers: list[tuple[str, str]], sender: str, account: str,
                                                 source: str) -> None:
    facts = MessageFacts(account, source, sender, headers, NOW)
    fresh = Checker(CHECKER.directory, CHECKER.lookalikes, relaying=CHECKER.relaying)  # an empty memo
    assert CHECKER.headers(facts) == fresh.headers(facts)


def test_the_date_is_judged_for_every_message_when_the_author_lines_repeat() -> None:
    def signals(date: str) -> list[str]:
        facts = MessageFacts("shop.example", "sasl", "bob@shop.example", [("From", "bob@shop.example"), ("Date", date)], NOW)
        return [finding.signal for finding in CHECKER.headers(facts)]

    assert signals("Sun, 22 Nov 2026 11:00:00 +0000") == []
    assert signals("Thu, 01 Jan 2015 00:00:00 +0000") == ["date_skew"]
    assert signals("Sun, 22 Nov 2026 11:30:00 +0000") == []
