"""Suppression entries: what one line of an import or one `suppress add` becomes."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from mailflow.accounts import canonical_domain
from mailflow.forgery.ownership import organisational_domain
from mailflow.suppression.keys import Keyring
from mailflow.suppression.normalize import AddressForms, broker_hashes, domain_and_parents

REASONS = ("unsubscribe", "complaint", "bounce", "trap", "manual")
GLOBAL = "global"
_HASH = re.compile(r"^(md5|sha256):([0-9a-f]+)$")
_HASH_LENGTH = {"md5": 32, "sha256": 64}


def scope_for(account: str | None) -> str:
    return f"account:{account.lower()}" if account else GLOBAL


class EntryError(ValueError):
    """A line that is not an address, @domain or md5:/sha256: hash."""


@dataclass(frozen=True)
class Entry:
    key: str  # keyed lookup key
    reason: str
    added_at: int  # unix seconds
    source: str
    sealed: str  # the entry as written (address, @domain, md5:…), sealed

    def value(self) -> str:
        return f"{self.reason}|{self.added_at}|{self.source}|{self.sealed}"

    @classmethod
    def from_value(cls, key: str, value: str) -> Entry:
        reason, added_at, source, sealed = (value.split("|", 3) + ["", "", ""])[:4]
        return cls(key, reason, int(added_at or 0), source, sealed)


@functools.lru_cache(maxsize=16384)
def _domain_keys(keyring: Keyring, domain: str) -> tuple[str, ...]:
    """Cached: recipient domains repeat far more than addresses (a few providers hold most mailboxes)."""
    return tuple(keyring.lookup_key("domain", d) for d in domain_and_parents(domain))


@dataclass(frozen=True)
class Matcher:
    """Turns addresses into lookup keys, the same way for entries and for recipients."""

    forms: AddressForms
    keyring: Keyring

    def entry_key(self, text: str) -> tuple[str, str]:
        """(lookup key, display form) for an address, `@domain` or `md5:`/`sha256:` hash."""
        text = text.strip().strip("<>").strip()
        hashed = _HASH.match(text.lower())
        if hashed:
            kind, digest = hashed.groups()
            if len(digest) != _HASH_LENGTH[kind]:
                raise EntryError(f"{text!r}: a {kind} hash has {_HASH_LENGTH[kind]} hex digits")
            return self.keyring.lookup_key(kind, digest), f"{kind}:{digest}"
        if text.startswith("@") or ("@" not in text and "." in text):
            domain = canonical_domain(text.lstrip("@"))
            if organisational_domain(domain) is None:
                raise EntryError(f"{text!r}: not a domain that can be suppressed (a public suffix?)")
            return self.keyring.lookup_key("domain", domain), f"@{domain}"
        local, at, domain = text.rpartition("@")
        if not at or not local or not domain or " " in text:
            raise EntryError(f"{text!r}: not an address, @domain or md5:/sha256: hash")
        family = self.forms.family(text)
        return self.keyring.lookup_key("addr", family), self.forms.canonical(text)

    def recipient_keys(self, recipient: str) -> list[str]:
        """Every key under which an entry would suppress this recipient."""
        canonical = self.forms.canonical(recipient)
        keys = [self.keyring.lookup_key("addr", self.forms.family_of_canonical(canonical))]
        _, at, domain = canonical.rpartition("@")
        if at:
            keys += _domain_keys(self.keyring, domain)
        keys += [self.keyring.lookup_key(kind, digest) for kind, digest in broker_hashes(canonical)]
        return keys

    def make_entry(self, text: str, reason: str, source: str, now: int) -> Entry:
        if reason not in REASONS:
            raise EntryError(f"{reason!r} is not a reason ({', '.join(REASONS)})")
        key, shown = self.entry_key(text)
        return Entry(key, reason, now, source.replace("|", "/"), self.keyring.seal(shown))
