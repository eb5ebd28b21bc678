"""Parse address headers the way a mail admin would judge them.

RFC 2047 encoded words are decoded, comments and groups understood (email.headerregistry),
then each address is validated with email-validator (quoted and SMTPUTF8 local parts allowed)
and its domain put in one form: the lower-case A-label. Nothing here raises on hostile input
except AddressError.

Bounded by design: the stdlib header parser is slow per token and quadratic on some shapes
(thousands of comments or commas take seconds), so a header longer than MAX_ADDRESS_HEADER
characters, or with more than MAX_ADDRESS_TOKENS words and special characters, is not parsed:
it is an AddressError (no real From:, Sender: or Reply-To: comes near either bound).
"""

from __future__ import annotations

import functools
import itertools
import re
from dataclasses import dataclass
from email import errors
from email.headerregistry import HeaderRegistry

from email_validator import EmailNotValidError, validate_email

from mailflow.accounts import canonical_domain
from mailflow.model import shown

_REGISTRY = HeaderRegistry()
MAX_ADDRESS_HEADER = 998  # characters: RFC 5322's line limit
MAX_ADDRESS_TOKENS = 150  # words and special characters: a Reply-To: of 25 plain addresses
_TOKEN = re.compile(r"[^\s()<>\[\]:;@\\,.\"]+|[()<>\[\]:;@\\,.\"]")
# Something that looks like an address inside free text (a display name): found from its `@`,
# one local-part character before it, so the search is linear (the old pattern matched the local
# part first and, on a long run of it without an `@`, retried from every character: quadratic).
_ADDRESS_IN_TEXT = re.compile(r"(?<=[^\s<>\"'(),;:@])@((?:[^\s<>\"'(),;:@.]+\.)+[^\s<>\"'(),;:@.]{2,})")


class AddressError(ValueError):
    """An address header that does not hold the addresses it should."""


@dataclass(frozen=True)
class Mailbox:
    display_name: str  # decoded
    local: str
    domain: str  # lower-case A-label

    @property
    def address(self) -> str:
        return f"{self.local}@{self.domain}"


def parse_mailboxes(name: str, value: str) -> tuple[Mailbox, ...]:
    """Every mailbox of an address header (groups flattened); AddressError if any is invalid,
    or if the header is too long or complex to parse in bounded time."""
    if len(value) > MAX_ADDRESS_HEADER:
        raise AddressError(f"{name}: header is longer than {MAX_ADDRESS_HEADER} characters")
    if _too_many_tokens(value):
        raise AddressError(f"{name}: header has more than {MAX_ADDRESS_TOKENS} words and special characters")
    return _parse_mailboxes(name, value)


def _too_many_tokens(value: str) -> bool:
    tokens = _TOKEN.finditer(value)
    return any(True for _ in itertools.islice(tokens, MAX_ADDRESS_TOKENS, MAX_ADDRESS_TOKENS + 1))


@functools.lru_cache(maxsize=8192)
def _parse_mailboxes(name: str, value: str) -> tuple[Mailbox, ...]:
    """Cached (values are bounded, so is the cache): the stdlib parser and email-validator cost
    most of a message's CPU, and senders repeat their From: lines. Errors are not cached."""
    try:
        header = _REGISTRY(name, value)
        addresses = header.addresses  # type: ignore[attr-defined]
        # SMTPUTF8 local parts are fine (RFC 6532); every other defect is not.
        defects = [d for d in header.defects if not isinstance(d, errors.NonASCIILocalPartDefect)]
    except Exception as exc:  # the stdlib parser has raised odd errors on hostile input
        raise AddressError(f"unparseable {name}: header") from exc
    if defects:
        raise AddressError(f"{name}: header is malformed ({defects[0]})")
    return tuple(_validated(name, address.display_name, address.addr_spec) for address in addresses)


def parse_single_mailbox(name: str, value: str) -> Mailbox:
    mailboxes = parse_mailboxes(name, value)
    if len(mailboxes) != 1:
        raise AddressError(f"{name}: header must hold exactly one address, found {len(mailboxes)}")
    return mailboxes[0]


def _validated(name: str, display_name: str, addr_spec: str) -> Mailbox:
    try:
        valid = validate_email(addr_spec, check_deliverability=False, allow_smtputf8=True,
                               allow_quoted_local=True, globally_deliverable=False)
    except EmailNotValidError as exc:
        raise AddressError(f"{name}: {shown(addr_spec)!r} is not a valid address ({exc})") from None
    return Mailbox(display_name=display_name, local=valid.local_part, domain=canonical_domain(valid.ascii_domain))


def envelope_domain(sender: str) -> str | None:
    """The domain of a MAIL FROM address in canonical form; None for the null sender."""
    address = sender.strip().strip("<>").strip()
    if not address:
        return None
    _, at, domain = address.rpartition("@")
    return canonical_domain(domain) if at and domain else ""


def domains_in_text(text: str) -> list[str]:
    """Domains of anything address-like in free text, e.g. `support@bank.example` in a display name.
    Linear in the text's length (each `@` starts one match attempt, which stops at the next `@`)."""
    return [canonical_domain(match.group(1)) for match in _ADDRESS_IN_TEXT.finditer(text)]
