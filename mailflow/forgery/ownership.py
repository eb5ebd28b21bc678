"""Which domains does an account own? One directory built from every source.

Sources: the account's own name when it is a domain (the default for SASL logins), the config
(`[forgery.accounts."X"] domains`), a Postfix smtpd_sender_login_maps file, and the store
(`mailflow domains add`). A domain covers its subdomains through the organisational domain
(public suffix list), and a public suffix such as `co.uk` never counts as a domain.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Iterable, Mapping

from publicsuffixlist import PublicSuffixList

from mailflow.accounts import canonical_domain

_PSL = PublicSuffixList()


@functools.lru_cache(maxsize=65536)
def organisational_domain(domain: str) -> str | None:
    """`news.shop.example` -> `shop.example`; None for a public suffix (`co.uk`) or junk."""
    domain = canonical_domain(domain)
    if not domain or "." not in domain:
        return None
    return _PSL.privatesuffix(domain)


class DomainDirectory:
    """Ownership of domains and addresses, from every source, built once and read by many threads."""

    def __init__(self, domains_by_account: Mapping[str, Iterable[str]],
                 addresses_by_account: Mapping[str, Iterable[str]] | None = None) -> None:
        self._orgs: dict[str, set[str]] = defaultdict(set)
        self._domains: dict[str, set[str]] = defaultdict(set)
        self._owner_of_org: dict[str, str] = {}
        for account, domains in domains_by_account.items():
            for domain in domains:
                self._add(account, domain)
        self._addresses: dict[str, set[str]] = {
            account: {a.lower() for a in addresses} for account, addresses in (addresses_by_account or {}).items()
        }

    def _add(self, account: str, domain: str) -> None:
        org = organisational_domain(domain)
        if org is None:
            return  # a public suffix owns nothing
        self._domains[account].add(canonical_domain(domain))
        self._orgs[account].add(org)
        self._owner_of_org.setdefault(org, account)

    def owned_domains(self, account: str) -> list[str]:
        """For messages: the account's domains, its own name first when it is a domain."""
        domains = set(self._domains.get(account, ()))
        if organisational_domain(account):
            domains.add(canonical_domain(account))
        return sorted(domains, key=lambda d: (d != account, d))

    def owns_domain(self, account: str, domain: str) -> bool:
        org = organisational_domain(domain)
        if org is None:
            return False
        return org in self._orgs.get(account, ()) or org == organisational_domain(account)

    def owns_address(self, account: str, address: str) -> bool:
        _, _, domain = address.rpartition("@")
        return self.owns_domain(account, domain) or address.lower() in self._addresses.get(account, ())

    def owner(self, domain: str) -> str | None:
        """The account that owns this domain (its organisational domain), or None."""
        org = organisational_domain(domain)
        return self._owner_of_org.get(org) if org is not None else None

    def hosted_organisational_domains(self) -> Iterable[tuple[str, str]]:
        """(organisational domain, owning account) for every domain hosted here."""
        return self._owner_of_org.items()


def read_sender_login_map(path: str) -> list[tuple[str, list[str]]]:
    """Postfix smtpd_sender_login_maps: `SENDER  LOGIN[, LOGIN…]`, SENDER an address or @domain."""
    entries = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            key, _, logins = line.partition(" ") if " " in line else line.partition("\t")
            owners = [login for login in logins.replace(",", " ").split() if login]
            if not key or not owners:
                raise ValueError(f"{path} line {number}: expected 'SENDER LOGIN[, LOGIN…]', got {line!r}")
            entries.append((key.strip().lower(), owners))
    return entries
