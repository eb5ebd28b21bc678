"""The forgery and impersonation checks: pure functions from message facts to findings.

Each finding names the config rule that governs it (its action comes from the config) and a
sentence telling the sender what is wrong and what to do. Mailing-list, resent and SRS-forwarded
mail relays other people's From: headers; for it the author checks (from_domain, display_name,
lookalike on From) are skipped, but From: must still be one valid address.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import NamedTuple

from mailflow.forgery.addresses import (MAX_ADDRESS_HEADER, AddressError, Mailbox, domains_in_text, envelope_domain,
                                       parse_mailboxes, parse_single_mailbox)
from mailflow.model import shown
from mailflow.forgery.lookalike import LookalikeIndex
from mailflow.forgery.ownership import DomainDirectory

# Date: lines repeat within a second, so a busy milter sees each one many times (the parse is
# a good share of a message's checks). A malformed one raises and is never cached; one longer
# than MAX_DATE_LENGTH is no date (and would only bloat the cache).
_parse_date = functools.lru_cache(maxsize=256)(parsedate_to_datetime)
MAX_DATE_LENGTH = 200

UNIQUE_HEADERS = ("From", "Sender", "Reply-To", "To", "Cc", "Subject", "Date", "Message-ID")
_UNIQUE_CHECKED = tuple((name, name.lower()) for name in UNIQUE_HEADERS if name != "From")  # From: has its own rule


@dataclass(frozen=True)
class Finding:
    rule: str  # the config rule whose action applies
    signal: str  # what was seen; equals the rule except for soft signals
    text: str  # for the SMTP reply and the log


@dataclass(frozen=True)
class MessageFacts:
    account: str
    source: str  # sasl | local | trusted_ip
    sender: str  # MAIL FROM
    headers: Sequence[tuple[str, str]]
    now: datetime
    # Header values by lower-cased name, in order; built once for every check that reads it.
    # A name never seen is absent: read with .get.
    by_name: dict[str, list[str]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_name", header_index(self.headers))


def header_index(headers: Sequence[tuple[str, str]]) -> dict[str, list[str]]:
    by_name: dict[str, list[str]] = {}
    for name, value in headers:
        by_name.setdefault(name.lower(), []).append(value)
    return by_name


class AuthorHeaders(NamedTuple):
    """All that the author checks read of a message's headers, and so their memo key: a sender's
    From:, Sender: and Reply-To: lines repeat message after message, its Message-ID never does.
    (A tuple, not a dataclass: built and hashed once per message.)"""

    counts: tuple[int, ...]  # how many of each of _UNIQUE_CHECKED
    froms: tuple[str, ...]
    senders: tuple[str, ...]
    reply_to: tuple[str, ...]  # the first Reply-To:, if any
    resent: tuple[str, ...]  # the first Resent-From:, else the first Resent-Sender:
    listed: bool  # List-Id: or List-Post:
    received: bool  # any Received:

    @classmethod
    def of(cls, by_name: Mapping[str, list[str]]) -> AuthorHeaders:
        get = by_name.get
        none: list[str] = []
        return cls(tuple([len(get(lname) or none) for _, lname in _UNIQUE_CHECKED]),
                   tuple(get("from") or none), tuple(get("sender") or none), tuple((get("reply-to") or none)[:1]),
                   tuple((get("resent-from") or get("resent-sender") or none)[:1]),
                   bool(get("list-id") or get("list-post")), bool(get("received")))

    def memoable(self) -> bool:
        return all(len(value) <= MAX_ADDRESS_HEADER for value in (*self.froms, *self.senders, *self.reply_to, *self.resent))


class Checker:
    """The checks, bound to who owns what and what is worth protecting."""

    def __init__(self, directory: DomainDirectory, lookalikes: LookalikeIndex, max_date_skew_hours: int = 24,
                 relaying: frozenset[str] = frozenset()) -> None:
        self.directory = directory
        self.lookalikes = lookalikes
        self.relaying = relaying  # accounts that run lists or forwarders ([forgery.accounts] relays_others)
        self.max_skew = max_date_skew_hours * 3600
        # Per checker: new ownership data is a new checker, so nothing outlives what it was judged on.
        self._author_findings = functools.lru_cache(maxsize=8192)(self._judge_author)

    def _yours(self, account: str) -> str:
        owned = self.directory.owned_domains(account)
        shown = ", ".join(owned[:3]) + (", …" if len(owned) > 3 else "")
        return f"({shown})" if owned else "(none registered)"

    def envelope(self, account: str, sender: str) -> Finding | None:
        """Rule 1. The null sender passes here; the header checks still apply to it."""
        domain = envelope_domain(sender)
        if domain is None:
            return None
        address = sender.strip().strip("<>")
        if domain and self.directory.owns_address(account, address):
            return None
        return Finding("envelope_domain", "envelope_domain",
                       f"Envelope sender domain {shown(domain) if domain else '(none)'} is not one of your domains {self._yours(account)}; "
                       "send from an address of your own domain")

    def headers(self, facts: MessageFacts) -> list[Finding]:
        author = AuthorHeaders.of(facts.by_name)
        # An over-long author line is refused unparsed, and would only bloat the memo.
        judge = self._author_findings if author.memoable() else self._judge_author
        findings = list(judge(facts.account, facts.source, facts.sender, author))
        for value in facts.by_name.get("date", [])[:1]:  # apart: the only check that depends on the clock
            findings += self._date_skew(value, facts.now)
        return findings

    def _judge_author(self, account: str, source: str, sender: str, headers: AuthorHeaders) -> tuple[Finding, ...]:
        findings = [Finding("duplicate_headers", "duplicate_headers",
                            f"Message has {count} {name}: headers; a message may carry only one")
                    for (name, _), count in zip(_UNIQUE_CHECKED, headers.counts) if count > 1]

        author = self._author(headers.froms, findings)
        relayed = self._relays_others(account, sender, headers)
        if author and not relayed:
            if not self.directory.owns_address(account, author.address):
                findings.append(Finding("from_domain", "from_domain",
                                        f"From: header domain {author.domain} is not one of your domains {self._yours(account)}"))
            for domain in domains_in_text(author.display_name):
                if not self.directory.owns_domain(account, domain):
                    findings.append(Finding("display_name", "display_name",
                                            f"From: display name carries an address at {domain}, which is not one of your "
                                            "domains; remove it from the display name"))
                    break
        findings += self._sender_header(account, headers.senders)
        findings += self._lookalikes(account, author if not relayed else None, headers.reply_to)
        findings += self._soft_signals(account, source, headers)
        return tuple(findings)

    def _author(self, froms: Sequence[str], findings: list[Finding]) -> Mailbox | None:
        if len(froms) != 1:
            what = "no From: header" if not froms else f"{len(froms)} From: headers"
            findings.append(Finding("from_header", "from_header",
                                    f"Message has {what}; it needs exactly one From: header with one valid address"))
            return None
        try:
            return parse_single_mailbox("From", froms[0])
        except AddressError as exc:
            findings.append(Finding("from_header", "from_header", f"{exc}; it needs exactly one valid address"))
            return None

    def _relays_others(self, account: str, sender: str, headers: AuthorHeaders) -> bool:
        """List, resent or SRS-forwarded mail carries someone else's From: legitimately, for an
        account the admin says runs lists or forwarders: any customer can write a List-Id: header."""
        if account not in self.relaying:
            return False
        envelope = sender.strip().strip("<>")
        envelope_owned = bool(envelope) and self.directory.owns_address(account, envelope)
        if headers.listed and (envelope_owned or self._owned_header(account, headers.senders)):
            return True
        if envelope_owned and envelope.upper().startswith(("SRS0=", "SRS1=")):
            return True
        return self._owned_header(account, headers.resent)

    def _owned_header(self, account: str, values: Sequence[str]) -> bool:
        if len(values) != 1:
            return False
        try:
            return self.directory.owns_address(account, parse_single_mailbox("Sender", values[0]).address)
        except AddressError:
            return False

    def _sender_header(self, account: str, values: Sequence[str]) -> list[Finding]:
        if not values:
            return []
        try:
            sender = parse_single_mailbox("Sender", values[0])
        except AddressError as exc:
            return [Finding("sender_header", "sender_header", f"{exc}")]
        if self.directory.owns_address(account, sender.address):
            return []
        return [Finding("sender_header", "sender_header",
                        f"Sender: header domain {sender.domain} is not one of your domains {self._yours(account)}")]

    def _lookalikes(self, account: str, author: Mailbox | None, reply_tos: Sequence[str]) -> list[Finding]:
        candidates: list[tuple[str, str]] = []
        if author:
            candidates.append(("From:", author.domain))
            candidates += [("From: display name", d) for d in domains_in_text(author.display_name)]
        for value in reply_tos[:1]:
            try:
                candidates += [("Reply-To:", m.domain) for m in parse_mailboxes("Reply-To", value)]
            except AddressError:
                pass
        for where, domain in candidates:
            imitated = self.lookalikes.imitated(domain, account)
            if imitated:
                return [Finding("lookalike", "lookalike",
                                f"{where} domain {domain} looks like {imitated}, which is not one of your domains")]
        return []

    def _soft_signals(self, account: str, source: str, headers: AuthorHeaders) -> list[Finding]:
        found = []
        if source == "sasl" and headers.received:
            found.append(Finding("soft_signals", "client_received", "Received: headers supplied by the client"))
        for value in headers.reply_to:
            try:
                foreign = [m.domain for m in parse_mailboxes("Reply-To", value)
                           if not self.directory.owns_address(account, m.address)]
            except AddressError:
                foreign = ["(unparseable)"]
            if foreign:
                found.append(Finding("soft_signals", "reply_to_domain", f"Reply-To: at {foreign[0]}, not your domain"))
        return found

    def _date_skew(self, value: str, now: datetime) -> list[Finding]:
        try:
            if len(value) > MAX_DATE_LENGTH:
                raise ValueError("too long for a date")
            date = _parse_date(value)
            if date.tzinfo is None:
                date = date.replace(tzinfo=timezone.utc)
            skewed = abs((now - date).total_seconds()) > self.max_skew
        except (TypeError, ValueError, IndexError, OverflowError):
            skewed = True
        if not skewed:
            return []
        return [Finding("soft_signals", "date_skew", f"Date: {value.strip()[:60]} is more than a day off")]
