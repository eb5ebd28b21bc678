"""The adversarial corpus: hostile envelopes, logins and headers, generated (not committed), and a
rig that judges each through every stage of a real Engine on a real store, timing it.

Sizes go up to Postfix's default header_size_limit (102,400 bytes). Invalid UTF-8 arrives the
way the milter adapter hands it over: bytes decoded with surrogateescape.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from mailflow.config import parse_config
from mailflow.engine import Engine
from mailflow.forgery import addresses, lookalike, ownership, rules
from mailflow.model import REPLY_TEXT_MAX, Client, Decision, Verdict
from mailflow.store import open_store
from mailflow.store.base import Store
from mailflow.suppression import entries
from mailflow.suppression.entries import GLOBAL, Matcher, scope_for
from mailflow.suppression.keys import Keyring
from mailflow.suppression.normalize import AddressForms

HEADER_SIZE_LIMIT = 102_400  # Postfix's default header_size_limit
SASL = Client(address="198.51.100.7", port=40000)
PICKUP = Client(address="127.0.0.1", port=0)  # Postfix's local submission (sendmail/pickup)
LOGIN = "bob@shop.example"
NOW = datetime(2026, 11, 26, 12, 0, tzinfo=timezone.utc)


def wire(data: bytes) -> str:
    """Bytes as the adapter decodes them (invalid UTF-8 as surrogate escapes)."""
    return data.decode("utf-8", "surrogateescape")


def shapes(size: int) -> dict[str, str]:
    """Hostile strings of about `size` characters: long, nested, repeated, invalid, control."""
    half, third = size // 2, size // 3
    return {
        "long": "a" * size,
        "at-signs": "a@" * half,
        "dots": "a." * half,
        "address-run": "x@" + "a." * half,
        "many-addresses": "support@bank.example " * (size // 21),
        "angles-open": "<" * size,
        "angles-nested": "<" * half + ">" * half,
        "comments-nested": "(" * half + ")" * half,
        "comments-flat": "(a)" * third,
        "commas": "," * size,
        "groups": "g:" * half,
        "quotes-escaped": '"\\' * half,
        "encoded-words": "=?utf-8?q?a=C3=A9?= " * (size // 20),
        "encoded-broken": "=?utf-8?b?" * (size // 10),
        "percent": "%" * size,
        "crlf": "\r\n\t" * third,
        "nul": "\x00" * size,
        "controls": "".join(chr(c) for c in range(32)) * (size // 32),
        "invalid-utf8": wire(b"\xff\xfe\xc3" * third),
        "non-ascii": "é" * size,
        "cyrillic": "а" * size,  # U+0430, a confusable of Latin a
        "idn-labels": ".xn--" * (size // 5),
    }


@dataclass(frozen=True)
class Case:
    name: str
    sender: str = "<bob@shop.example>"
    login: str | None = LOGIN
    recipients: tuple[str, ...] = ("<friend@elsewhere.example>",)
    headers: tuple[tuple[str, str], ...] = (("From", "Bob <bob@shop.example>"), ("Subject", "hi"))
    pickup: bool = False  # local submission: judged at end of message

    @property
    def size(self) -> int:
        return max(len(self.sender), len(self.login or ""), *map(len, self.recipients),
                   *(len(n) + len(v) for n, v in self.headers))


def corpus(size: int = HEADER_SIZE_LIMIT - 100) -> list[Case]:
    """Every shape in every place a client writes, plus the named cases of issue 13."""
    cases: list[Case] = []
    for shape, text in shapes(size).items():
        cases += [
            Case(f"from-display-name/{shape}", headers=(("From", f"{text} <bob@shop.example>"),)),
            Case(f"from/{shape}", headers=(("From", text),)),
            Case(f"reply-to/{shape}", headers=(("From", "bob@shop.example"), ("Reply-To", text))),
            Case(f"sender-header/{shape}", headers=(("From", "bob@shop.example"), ("Sender", text))),
            Case(f"date/{shape}", headers=(("From", "bob@shop.example"), ("Date", text))),
            Case(f"list-unsubscribe/{shape}", headers=(("From", "bob@shop.example"), ("Precedence", "bulk"),
                                                       ("List-Unsubscribe", text))),
            Case(f"subject/{shape}", headers=(("From", "bob@shop.example"), ("Subject", text))),
            Case(f"received-local/{shape}", pickup=True, login=None,
                 headers=(("Received", f"(from {text}@localhost) by mta"), ("From", "bob@shop.example"))),
            # The envelope and login: an MTA caps SMTP lines (Postfix 2,048 bytes), the milter does not rely on it.
            Case(f"mail-from/{shape}", sender=f"<{text}@shop.example>"),
            Case(f"rcpt-local-part/{shape}", recipients=(f"<{text}@dest.example>",)),
            Case(f"rcpt-domain/{shape}", recipients=(f"<x@{text}>",)),
            Case(f"login/{shape}", login=text),
            Case(f"pickup-rcpt/{shape}", pickup=True, login=None, recipients=(f"<{text}@dest.example>",)),
        ]
    cases += [
        Case("display-name-100k", headers=(("From", "A" * 100_000 + " <bob@shop.example>"),)),
        Case("display-name-100k-with-address", headers=(("From", "A " * 50_000 + "support@bank.example <bob@shop.example>"),)),
        Case("local-part-1000-suppressed", recipients=("<" + "a" * 1000 + "@dest.example>",)),
        Case("from-1000", headers=(("From", "a" * 1000 + "@bank.example"),)),
        Case("percent-suppressed", recipients=("<100%off@dest.example>",)),
        Case("every-recipient-suppressed", recipients=tuple(f"<{'b' * 900}{i}@dest.example>" for i in range(50))),
        Case("pickup-all-suppressed", pickup=True, login=None,
             recipients=tuple(f"<{'c' * 900}{i}%@dest.example>" for i in range(50))),
        Case("pickup-invalid-utf8-suppressed", pickup=True, login=None,
             recipients=(wire(b"<m\xfcller@dest.example>"), "<ok@elsewhere.example>")),
        Case("headers-many", headers=tuple(("X-H", "v") for _ in range(5000)) + (("From", "bob@shop.example"),)),
        Case("from-headers-many", headers=tuple(("From", "bob@shop.example") for _ in range(5000))),
    ]
    return cases


CONFIG: dict[str, Any] = {
    "ratelimit": {"limits": ["100000/hour"]},
    "suppression": {"hash_key_env": "MAILFLOW_SUPPRESSION_KEY"},
    "forgery": {"protected_brands": ["bank.example", "paypal.com"]},
}


@dataclass
class Judged:
    decisions: list[Decision] = field(default_factory=list)
    seconds: float = 0.0


class Rig:
    """An Engine on a real store, with `@dest.example` on the global suppression list."""

    def __init__(self, url: str, overrides: dict[str, Any] | None = None) -> None:
        config = parse_config({**CONFIG, "store": {"url": url}, **(overrides or {})})
        self.store: Store = open_store(url)
        self.engine = Engine(config, self.store, clock=lambda: NOW)
        matcher = Matcher(AddressForms(), Keyring(config.suppression.secret))
        self.store.add_suppressions(GLOBAL, [matcher.make_entry("@dest.example", "manual", "test", 0)])
        self.store.add_suppressions(scope_for("shop.example"), [matcher.make_entry("x@optout.example", "unsubscribe", "test", 0)])

    def close(self) -> None:
        self.store.close()

    def judge(self, case: Case) -> Judged:
        """Every stage of one message; the decisions the adapter would apply, and the time taken."""
        started = time.perf_counter()
        judged = Judged()
        client = PICKUP if case.pickup else SASL
        message, decision = self.engine.mail(client, case.sender, None if case.pickup else case.login)
        judged.decisions.append(decision)
        if not decision.refuses and decision.verdict is not Verdict.ACCEPT:
            for recipient in case.recipients:
                judged.decisions.append(self.engine.rcpt(client, message, recipient))
            for name, value in case.headers:
                self.engine.header(message, name, value)
            judged.decisions.append(self.engine.eom(client, message))
        judged.seconds = time.perf_counter() - started
        return judged


@contextmanager
def rig(url: str, overrides: dict[str, Any] | None = None) -> Iterator[Rig]:
    made = Rig(url, overrides)
    try:
        yield made
    finally:
        made.close()


def clear_caches(engine: Engine) -> None:
    """Forget every memo, so a timing measures the parsing and not a cache hit."""
    memos: list[Callable[..., Any]] = [addresses._parse_mailboxes, ownership.organisational_domain,
                                       lookalike.skeleton, rules._parse_date, entries._domain_keys]
    for memo in memos:
        memo.cache_clear()  # type: ignore[attr-defined]
    engine._judge_sender.cache_clear()
    engine.ownership.checker()._author_findings.cache_clear()


def reply_problems(decision: Decision) -> list[str]:
    """What would make libmilter refuse this decision's reply (empty when it is fine)."""
    if decision.reply is None:
        return []
    text = decision.reply.text
    escaped = text.replace("%", "%%")
    problems = []
    if not text.isascii() or not text.isprintable():
        problems.append(f"not printable ASCII: {text[:60]!r}")
    if len(escaped.encode()) > 980:
        problems.append(f"{len(escaped.encode())} bytes once escaped (libmilter's MAXREPLYLEN is 980)")
    if len(text) > REPLY_TEXT_MAX:
        problems.append(f"{len(text)} characters")
    return problems


def timed(judge: Callable[[], Judged], engine: Engine, rounds: int = 3) -> tuple[Judged, float]:
    """The last result and the best time of `rounds` runs, caches cleared before each."""
    best = float("inf")
    result = Judged()
    for _ in range(rounds):
        clear_caches(engine)
        result = judge()
        best = min(best, result.seconds)
    return result, best
