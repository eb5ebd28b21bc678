"""Plain data passed between the milter adapter and the pure policy code."""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mailflow.settings import RatePolicy


class Verdict(StrEnum):
    CONTINUE = "continue"  # no objection at this stage
    ACCEPT = "accept"  # not ours to police (inbound): stop looking at this message
    TEMPFAIL = "tempfail"
    REJECT = "reject"
    HOLD = "hold"  # accept into the MTA's hold queue for an admin to release


# Reply texts carry what clients wrote (addresses, domains), but libmilter's smfi_setreply
# refuses a text over 980 bytes (MAXREPLYLEN) or with CR or LF, and the adapter doubles every
# `%` for the MTA: so a text is printable ASCII, one line, at most REPLY_TEXT_MAX characters
# (at most 2 * 480 = 960 bytes once escaped), and one embedded value at most SHOWN_MAX.
REPLY_TEXT_MAX = 480
SHOWN_MAX = 80
_UNPRINTABLE = re.compile(r"[^ -~]")


def shown(value: str, limit: int = SHOWN_MAX) -> str:
    """An untrusted value fit for a reply: cut to `limit` characters (ending in `...`), and every
    character that is not printable ASCII (controls, CR/LF, NUL, non-ASCII, invalid UTF-8) a `?`."""
    if len(value) > limit:
        value = value[: limit - 3] + "..."
    return _UNPRINTABLE.sub("?", value)


def nameable(text: str) -> bool:
    """Valid UTF-8, so pymilter can hand it to the MTA: no surrogate escapes (invalid UTF-8 from
    the adapter) and no lone surrogates."""
    return text.isascii() or not any("\ud800" <= c <= "\udfff" for c in text)


@dataclass(frozen=True)
class Reply:
    """An SMTP reply. Whatever text it is given, it holds a bounded, single-line, printable ASCII
    one (see shown()): no input can make the MTA's library refuse it."""

    code: str  # "451"
    status: str  # "4.7.1"
    text: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "text", shown(self.text, REPLY_TEXT_MAX))

    def __str__(self) -> str:
        return f"{self.code} {self.status} {self.text}"


# When the MTA's library still refuses a reply's text, the refusal stands with one of these.
GENERIC_TEXT = {"4": "Message temporarily refused by policy; try again later", "5": "Message refused by policy"}


_REFUSALS = frozenset((Verdict.TEMPFAIL, Verdict.REJECT, Verdict.HOLD))


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: str  # short machine word for logs: ok, ratelimit, over_capacity, from_domain, store_error, …
    reply: Reply | None = None
    add_headers: tuple[tuple[str, str], ...] = ()  # e.g. X-Mailflow-Policy on tagged mail
    remove_recipients: tuple[str, ...] = ()  # suppressed recipients of local mail (delrcpt)
    remove_headers: tuple[tuple[str, int], ...] = ()  # (name, how many the client wrote): every one removed
    # Set once here, not a property: asked several times per RCPT, of mostly the same few objects.
    refuses: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "refuses", self.verdict in _REFUSALS)


PASS = Decision(Verdict.CONTINUE, "ok")


# Cached across connections: MTAs connect from a handful of addresses, and parsing one (or
# asking ipaddress whether it is loopback) for every connection showed up in profiles.
@functools.lru_cache(maxsize=4096)
def _parse_ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(address)
    except ValueError:
        return None


@functools.lru_cache(maxsize=4096)
def _is_loopback(address: str) -> bool:
    ip = _parse_ip(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1: Python 3.11 does not call it loopback
    return ip is not None and ip.is_loopback


@dataclass(frozen=True)
class Client:
    """Who connected to the MTA, as the MTA told the milter."""

    hostname: str = ""
    address: str | None = None
    port: int | None = None
    daemon_name: str = ""  # Sendmail's {daemon_name}: which of its listeners took the connection
    # Worked out once, here: functools.cached_property (Python 3.11) takes one lock shared by
    # every instance, and milter threads queued on it showed up in profiles through Postfix.
    on_this_host: bool = field(init=False, repr=False, compare=False)
    is_postfix_pickup: bool = field(init=False, repr=False, compare=False)  # see __post_init__
    is_sendmail_bs: bool = field(init=False, repr=False, compare=False)
    # What the account policy reads of a client (not its port number): the memo key of its verdicts.
    policy_key: tuple[str | None, bool, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        on_this_host = self.address is not None and _is_loopback(self.address)
        object.__setattr__(self, "on_this_host", on_this_host)
        # Postfix hands locally submitted mail (sendmail/pickup) to non_smtpd_milters as a
        # connection from the loopback address with port 0.
        object.__setattr__(self, "is_postfix_pickup", on_this_host and self.port == 0)
        # `sendmail -bs` (SMTP on stdin, no network peer): Sendmail sends {client_addr} "0".
        # Only root and Sendmail's trusted users run the MTA binary; others go through the MSP.
        object.__setattr__(self, "is_sendmail_bs", self.address == "0")
        object.__setattr__(self, "policy_key", (self.address, self.is_postfix_pickup, self.daemon_name))

    @property
    def ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        return _parse_ip(self.address) if self.address else None


@dataclass(frozen=True)
class Identity:
    """Whose mail a message is: the account that pays for it and how we know."""

    source: str  # sasl | local | trusted_ip
    identity: str  # the login, sender or client address that matched
    account: str


@dataclass
class Message:
    """What the milter has gathered about the message in flight."""

    sender: str = ""
    queue_id: str = ""  # the MTA's queue id, once it has given one (logged as qid=)
    identity: Identity | None = None
    recipients: list[str] = field(default_factory=list)  # accepted so far
    refused: list[str] = field(default_factory=list)
    suppressed: list[str] = field(default_factory=list)  # local mail: removed at end of message
    held: str | None = None  # the account is held (spam traps): why
    hold_known: bool = False  # the store was asked whether the account is held (once is enough)
    levels: tuple[float, ...] | None = None  # bucket levels read at the first RCPT
    levels_confirmed: bool = False  # read from the store itself, not an estimate
    headers: list[tuple[str, str]] = field(default_factory=list)  # as the client sent them
    php_script: str | None = None  # X-PHP-Originating-Script (uid:script)
    msp_user: str | None = None  # Sendmail MSP "(from user@localhost)"; "" when the first header is not that
    msp_dsn: bool = False  # the first header is the one on the MSP's own delivery reports (no user)
    on_msp_listener: bool = False  # Sendmail's MSP connected on a listener named in msp_daemons
    rate: tuple[str, RatePolicy] | None = None  # (account, its rate policy): looked up once per message
