"""One complaint: an ARF report (RFC 5965) read, attributed to an account, counted once, and its
complainer added to that account's suppression list (`mailflow feedback arf`, feedback/arf_cli.py).

Every report is hostile: anyone can mail the abuse mailbox. So only two things attribute one:
the original message's X-Mailflow-ID, sealed with this provider's key (feedback/mailid.py), or
the original From: domain (without the original's headers: the Original-Mail-From domain) when an
account owns it by the milter's own rule (forgery/policy.py domain_owner). Anything else is one
line and nothing counted. Bounded: at most MAX_REPORT_BYTES are read and parsed (compat32: the
stdlib's plain header handling, no header registry on the whole input), at most FIELD_VALUES
values of a field are kept, each cut to FIELD_CHARS, and addresses go through
forgery/addresses.py, which refuses the long and complex headers the stdlib is slow on.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import BinaryIO
from dataclasses import dataclass, field
from email.message import Message
from email.parser import BytesHeaderParser, BytesParser
from email.policy import compat32

from mailflow.config import Config
from mailflow.feedback.apply import apply_batch
from mailflow.feedback.mailid import read_with
from mailflow.feedback.model import COMPLAINT, TEXT_MAX, FeedbackBatch
from mailflow.forgery.addresses import AddressError, envelope_domain, parse_single_mailbox
from mailflow.forgery.policy import build_directory, domain_owner, named_account_orgs, static_ownership
from mailflow.model import shown
from mailflow.store.base import Store

MAX_REPORT_BYTES = 10 * 1024 * 1024  # read of a report: the parts that matter are its first few KiB
FIELD_VALUES = 20  # values kept per field name (Original-Rcpt-To may repeat; X-Mailflow-ID should not)
FIELD_CHARS = 2000  # characters kept of one value
PARTS_LOOKED_AT = 10  # a report has three parts; a few more are tolerated, not searched for ever
# Feedback types that are a recipient's complaint (RFC 5965 and its registry); "not-spam" is the
# opposite, "auth-failure" (RFC 6591) a receiver's authentication report: neither is counted.
COMPLAINT_TYPES = ("abuse", "fraud", "virus", "other")
SEEN_SECONDS = 30 * 86400  # a report repeated within this is counted once (feedback loops resend within days)


class NotCounted(Exception):
    """Why a report counts nothing, in one line (the value is bounded and printable)."""


@dataclass(frozen=True)
class Fields:
    """Header fields of one block, lower-case name -> values in order, unfolded, bounded."""

    values: dict[str, list[str]] = field(default_factory=dict)

    def all(self, name: str) -> list[str]:
        return self.values.get(name, [])

    def first(self, name: str) -> str:
        found = self.values.get(name)
        return found[0] if found else ""


@dataclass(frozen=True)
class Report:
    feedback_type: str
    user_agent: str
    report_id: str  # the report's own Message-ID; "" when it has none
    fields: Fields  # the machine-readable part
    original: Fields | None  # the original message's headers, when the report carries them


@dataclass(frozen=True)
class Outcome:
    counted: bool
    line: str  # what `mailflow feedback arf` prints


def fields_of(message: Message) -> Fields:
    """One pass over the raw headers (surrogate-escaped bytes kept as they are)."""
    values: dict[str, list[str]] = {}
    for name, value in message.raw_items():
        kept = values.setdefault(name.strip().lower()[:100], [])
        if len(kept) < FIELD_VALUES:
            kept.append(" ".join(str(value)[:FIELD_CHARS].split()))
    return Fields(values)


def parse(raw: bytes) -> Report:
    """The report's parts that matter, or NotCounted with the reason. Of a longer report only the
    first MAX_REPORT_BYTES are read: the machine part and the original's headers come first, a
    large attachment of the original last (a report cut short reads as one with a cut original)."""
    try:
        message = BytesParser(policy=compat32).parsebytes(raw[:MAX_REPORT_BYTES])
        return _parsed(message)
    except RecursionError:
        raise NotCounted("report nested too deeply to read") from None


def _parsed(message: Message) -> Report:
    kind = message.get_content_type()
    if kind != "multipart/report":
        raise NotCounted(f"not an ARF report: Content-Type {shown(kind, 60)}, not multipart/report")
    report_type = str(message.get_param("report-type", "") or "").lower()
    if report_type != "feedback-report":
        raise NotCounted(f"not an ARF report: report-type {shown(report_type, 60)!r}, not feedback-report")
    payload = message.get_payload()
    parts = [part for part in payload[:PARTS_LOOKED_AT] if isinstance(part, Message)] \
        if isinstance(payload, list) else []
    kinds = [part.get_content_type() for part in parts]
    if "message/feedback-report" not in kinds:
        raise NotCounted("ARF report without a message/feedback-report part")
    at = kinds.index("message/feedback-report")
    fields = fields_of(_headers_of(parts[at]))
    feedback_type = fields.first("feedback-type").lower()
    if not feedback_type:
        raise NotCounted("ARF report without a Feedback-Type")
    if feedback_type not in COMPLAINT_TYPES:
        raise NotCounted(f"Feedback-Type {shown(feedback_type, 40)}: not a complaint")
    original = next((fields_of(_headers_of(part)) for part, kind in zip(parts[at + 1:], kinds[at + 1:])
                     if kind in ("message/rfc822", "text/rfc822-headers", "message/rfc822-headers")), None)
    return Report(feedback_type, fields.first("user-agent"), fields_of(message).first("message-id"), fields,
                  original if original is not None and original.values else None)


def _headers_of(part: Message) -> Message:
    """The header block a part holds: the parser's own parse of a message/* part, unless it was
    sent base64 (some loops do; base64 has no colon, so the parser saw a body and no header):
    then that body decoded and parsed. text/rfc822-headers: its decoded text, parsed."""
    payload = part.get_payload()
    if not isinstance(payload, list):
        decoded = part.get_payload(decode=True)
        return BytesHeaderParser(policy=compat32).parsebytes(decoded if isinstance(decoded, bytes) else b"")
    inner = payload[0] if payload else None
    if not isinstance(inner, Message):
        return Message()
    encoding = str(part.get("content-transfer-encoding", "")).strip().lower()
    body = inner.get_payload()
    if encoding != "base64" or inner.keys() or not isinstance(body, str):
        return inner
    try:
        data = base64.b64decode(body.encode("ascii", "replace"))
    except (binascii.Error, ValueError):
        return Message()
    return BytesHeaderParser(policy=compat32).parsebytes(data)


def _address(name: str, value: str) -> str | None:
    """The one valid address a header value holds (`<a@b>` or a mailbox), else None. `name` is
    From or To: the stdlib's header registry parses addresses only under an address header's name."""
    try:
        return parse_single_mailbox(name, value).address
    except AddressError:
        return None


def complainer(report: Report) -> str | None:
    """Original-Rcpt-To when it names one address, else the original's single To: address."""
    named = {address.lower() for value in report.fields.all("original-rcpt-to")
             if (address := _address("To", value)) is not None}
    if named or report.fields.all("original-rcpt-to"):
        return named.pop() if len(named) == 1 else None  # several, or redacted: nobody to suppress
    tos = report.original.all("to") if report.original is not None else []
    return _address("To", tos[0]) if len(tos) == 1 else None


class Attribution:
    """Who owns what, read once per run: the config's rules and the store's domains (StoreError
    passes: the caller says "try later"), and the X-Mailflow-ID keys."""

    def __init__(self, config: Config, store: Store) -> None:
        static_domains, static_addresses = static_ownership(config)
        self.directory = build_directory(static_domains, static_addresses, store.domains())
        self.account_orgs = named_account_orgs(config)
        self.keys = tuple(key for key in (config.feedback.id_key, config.feedback.id_old_key) if key)

    def owner(self, domain: str) -> str | None:
        return domain_owner(self.directory, self.account_orgs, domain)

    def account(self, report: Report) -> tuple[str, str]:
        """(account, how), or NotCounted."""
        original = report.original
        ids = original.all("x-mailflow-id") if original is not None and self.keys else []
        if ids:
            accounts = {account for value in ids if (account := read_with(self.keys, value)) is not None}
            if len(accounts) == 1:
                return accounts.pop(), "X-Mailflow-ID"
            if accounts:
                raise NotCounted("the original's X-Mailflow-IDs name different accounts: not attributed")
            raise NotCounted("the original's X-Mailflow-ID was not made with this key (forged, or a retired key): "
                             "not attributed")
        if original is not None:
            froms = original.all("from")
            author = _address("From", froms[0]) if len(froms) == 1 else None
            if author is None:
                raise NotCounted("the original has no single From: address to attribute it by")
            domain, how = author.rpartition("@")[2], "From:"
        else:
            domain, how = envelope_domain(report.fields.first("original-mail-from")) or "", "Original-Mail-From"
            if not domain:
                raise NotCounted("no original headers and no Original-Mail-From domain to attribute it by")
        account = self.owner(domain)
        if account is None:
            raise NotCounted(f"{how} domain {shown(domain, 100)} is not owned by any account: not attributed")
        return account, f"{how} {shown(domain, 100)}"


def seen_keys(report: Report, person: str | None, raw: bytes) -> list[str]:
    """What makes a report a repeat: its own Message-ID, or the same original message to the
    same complainer; a report with neither, its bytes."""
    def digest(*parts: str | bytes) -> str:
        sha = hashlib.sha256()
        for part in parts:
            sha.update(part if isinstance(part, bytes) else part.encode("utf-8", "surrogateescape"))
            sha.update(b"\0")
        return "arf:" + sha.hexdigest()[:32]
    keys = []
    original_id = report.original.first("message-id") if report.original is not None else ""
    if original_id:
        keys.append(digest("original", original_id, person or ""))
    if report.report_id:
        keys.append(digest("report", report.report_id))
    return keys or [digest("bytes", raw)]


def first_time(store: Store, account: str, keys: list[str]) -> bool:
    """Is this report new? Each key is claimed (the fleet's first caller wins), then marked done
    once counted. A key claimed but never marked done is a run that met a store fault between the
    two (exit 75, the MTA retries): the retry counts it. The price: two copies of one report
    handled in the same instant may both count."""
    fresh = [store.claim(account, key, SEEN_SECONDS) for key in keys]
    return all(fresh) or all(store.claim(account, key + ":done", SEEN_SECONDS)
                             for key, new in zip(keys, fresh) if not new)


def process(config: Config, store: Store, attribution: Attribution, raw: bytes, now: float) -> Outcome:
    """One report, start to end. StoreError passes (nothing counted: the caller retries later)."""
    try:
        report = parse(raw)
        account, how = attribution.account(report)
    except NotCounted as exc:
        return Outcome(False, f"not counted: {exc}")
    person = complainer(report)
    about = f"account={shown(account, 100)} by={how} type={report.feedback_type} " \
            f"agent={shown(report.user_agent or '-', 60)} report={shown(report.report_id or '-', 100)}"
    keys = seen_keys(report, person, raw)
    if not first_time(store, account, keys):
        return Outcome(False, f"not counted: seen before ({about})")
    batch = FeedbackBatch(counts={(int(now) // 3600, account, COMPLAINT): 1})
    if person is not None and config.suppression.enabled:  # without lists, counted only (README)
        batch.suppress[account] = {person: "complaint"}
    original_id = report.original.first("message-id") if report.original is not None else ""
    batch.evidence[account] = [shown(f"{report.feedback_type} complaint via {report.user_agent or 'an unnamed loop'} "
                                     f"about {person or 'an unnamed recipient'}, original {original_id or '-'}",
                                     TEXT_MAX)]
    apply_batch(config, store, batch, None, 0, now)
    for key in keys:  # done: a retry of this report (after a fault below) is a repeat now
        store.claim(account, key + ":done", SEEN_SECONDS)
    if len(raw) > MAX_REPORT_BYTES:
        about += f" (read its first {MAX_REPORT_BYTES} bytes)"
    who = ("complainer not named: nobody suppressed" if person is None else f"complainer={shown(person, 100)} "
           + ("suppressed" if config.suppression.enabled else "not suppressed ([suppression] is not configured)"))
    return Outcome(True, f"counted: complaint {about} {who}")


def read_bounded(stream: BinaryIO, limit: int = MAX_REPORT_BYTES) -> bytes:
    """Up to limit+1 bytes of a binary stream; the rest read and dropped, so that the MTA that
    pipes it in sees it taken (a pipe left unread fails the delivery)."""
    data = stream.read(limit + 1)
    if len(data) > limit:
        while stream.read(1 << 20):
            pass
    return data

