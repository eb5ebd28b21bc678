"""Hostile header text: the parser and the checks never raise, normalisation is stable."""

from __future__ import annotations

from datetime import datetime, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from mailflow.accounts import canonical_domain
from mailflow.forgery.addresses import AddressError, domains_in_text, parse_mailboxes
from mailflow.forgery.ownership import organisational_domain
from mailflow.forgery.rules import MessageFacts
from tests.forgery.test_corpus import CHECKER

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


@given(st.lists(st.tuples(st.sampled_from(["From", "Sender", "Reply-To", "Date", "Subject", "List-Id", "Resent-From",
                                           "Received", "To", "X-Other"]), header_text), max_size=8),
       st.sampled_from(["", "bob@shop.example", "SRS0=a=b=c=d@shop.example", "x@bank.example"]))
@settings(max_examples=300)
def test_the_checks_never_raise(headers: list[tuple[str, str]], sender: str) -> None:
    facts = MessageFacts("shop.example", "sasl", sender, headers, datetime(2026, 11, 22, tzinfo=timezone.utc))
    for finding in CHECKER.headers(facts):
        assert finding.text
