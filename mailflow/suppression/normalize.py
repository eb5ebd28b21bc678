"""The forms an address is matched in.

canonical: domain as lower-case IDNA A-label, local part NFC and (unless configured otherwise)
lower-cased. family: canonical with a `+tag` sub-address stripped, and for Gmail the dots of
the local part removed and googlemail.com folded into gmail.com. Entries are stored and looked
up by family form, so a family only ever suppresses more than the exact address, never less.
An address that is not valid UTF-8 (the adapter carries its bytes as surrogate escapes) is judged
by its bytes: its keys and hashes are computed over them (keys.wire_bytes). Nothing here raises.
"""

from __future__ import annotations

import hashlib
import unicodedata
from dataclasses import dataclass

from mailflow.accounts import canonical_domain
from mailflow.suppression.keys import wire_bytes

GMAIL_DOMAINS = {"gmail.com": "gmail.com", "googlemail.com": "gmail.com"}


@dataclass(frozen=True)
class AddressForms:
    case_sensitive_local_part: bool = False
    strip_subaddress: bool = True

    def canonical(self, address: str) -> str:
        address = address.strip().strip("<>").strip()
        local, at, domain = address.rpartition("@")
        if not at:
            return _local(address, self.case_sensitive_local_part)
        return f"{_local(local, self.case_sensitive_local_part)}@{canonical_domain(domain)}"

    def family(self, address: str) -> str:
        return self.family_of_canonical(self.canonical(address))

    def family_of_canonical(self, canonical: str) -> str:
        local, at, domain = canonical.rpartition("@")
        if not at:
            return canonical
        if self.strip_subaddress and "+" in local[1:]:
            local = local[: local.index("+", 1)]
        if domain in GMAIL_DOMAINS:
            domain = GMAIL_DOMAINS[domain]
            local = local.replace(".", "")
        return f"{local}@{domain}"


def _local(local: str, case_sensitive: bool) -> str:
    local = unicodedata.normalize("NFC", local.strip())
    return local if case_sensitive else local.lower()


MAX_DOMAIN = 253  # DNS: no longer name resolves, so no longer parent needs a key


def domain_and_parents(domain: str) -> list[str]:
    """`a.shop.example` -> [`a.shop.example`, `shop.example`]: a domain entry covers its subdomains.
    Parents longer than MAX_DOMAIN are left out: linear work and a bounded list for any input
    (every parent of a 100 KB domain would be quadratic in time and memory)."""
    labels = domain.split(".")
    parents: list[str] = []
    suffix = labels[-1]
    for label in reversed(labels[1:-1]):
        suffix = f"{label}.{suffix}"
        if len(suffix) > MAX_DOMAIN:
            break
        parents.append(suffix)
    parents.reverse()
    return [domain, *parents]


# Copied, never updated: a copy skips OpenSSL's algorithm lookup, which a new hash object does
# every time, and which costs several times the hashing itself inside a busy milter.
_MD5 = hashlib.md5(usedforsecurity=False)
_SHA256 = hashlib.sha256()


def broker_hashes(canonical: str) -> list[tuple[str, str]]:
    """List brokers ship MD5 or SHA-256 of the lower-cased address."""
    data = wire_bytes(canonical.lower())
    md5, sha256 = _MD5.copy(), _SHA256.copy()
    md5.update(data)
    sha256.update(data)
    return [("md5", md5.hexdigest()), ("sha256", sha256.hexdigest())]
