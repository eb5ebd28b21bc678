"""From findings to one verdict, and the ownership data the checks need, kept fresh.

The strongest action among the findings decides (reject > tempfail > hold > tag); every
finding is logged. Ownership from the store is read at start, then every
`domains_refresh_seconds` by a background thread: the forgery checks read the latest snapshot,
never the store, so a message never waits on a refresh (nor on a failing store twice). A failed
refresh keeps the last good data.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mailflow.accounts import resolve_account
from mailflow.config import Config
from mailflow.forgery.lookalike import LookalikeIndex
from mailflow.forgery.ownership import DomainDirectory, organisational_domain, read_sender_login_map
from mailflow.forgery.rules import Checker, Finding
from mailflow.model import Decision, Reply, Verdict
from mailflow.refresher import Refresher
from mailflow.store.base import Store, StoreError

log = logging.getLogger("mailflow")

_SEVERITY = {"tag": 0, "hold": 1, "tempfail": 2, "reject": 3}
_REFUSAL = {"reject": (Verdict.REJECT, "550", "5.7.1"), "tempfail": (Verdict.TEMPFAIL, "451", "4.7.1"),
            "hold": (Verdict.HOLD, "250", "2.7.0")}


@dataclass(frozen=True)
class ForgeryVerdict:
    decision: Decision | None  # a refusal or a hold; None when mail may go on
    tags: tuple[str, ...]  # `signal=tag` entries for the X-Mailflow-Policy header
    summary: str  # every finding with its action, for the log


NOTHING_FOUND = ForgeryVerdict(None, (), "")


def judge_findings(findings: Sequence[Finding], actions: Mapping[str, str]) -> ForgeryVerdict:
    if not findings:  # almost every message
        return NOTHING_FOUND
    acted = [(finding, actions.get(finding.rule, "off")) for finding in findings]
    acted = [(finding, action) for finding, action in acted if action != "off"]
    summary = ",".join(f"{finding.signal}:{action}" for finding, action in acted)
    tags = tuple(f"{finding.signal}=tag" for finding, action in acted if action == "tag")
    strongest = max(acted, key=lambda fa: _SEVERITY[fa[1]], default=None)
    if strongest is None or strongest[1] == "tag":
        return ForgeryVerdict(None, tags, summary)
    finding, action = strongest
    verdict, code, status = _REFUSAL[action]
    return ForgeryVerdict(Decision(verdict, finding.rule, Reply(code, status, finding.text)), tags, summary)


class Ownership:
    """The Checker for the current ownership data: config and map file, plus the store's domains."""

    def __init__(self, config: Config, store: Store) -> None:
        self.config = config
        self.store = store
        self._lock = threading.Lock()
        self._static_domains, self._static_addresses = static_ownership(config)
        self._store_domains: dict[str, str] = {}
        self._checker = self._build()
        self._refresher = Refresher(self, config.forgery.domains_refresh_seconds, "mailflow-domains")
        self.refresh()  # the first read, at start: never inside a milter callback

    def checker(self) -> Checker:
        """The latest snapshot; the first call starts the background refresh (like the replica's)."""
        if not self._refresher.started:
            self._refresher.start()
        return self._checker

    def stop(self) -> None:
        self._refresher.stop()

    def refresh(self) -> None:
        with self._lock:
            try:
                domains = self.store.domains()
            except StoreError as exc:
                log.warning("cannot refresh owned domains from the store, keeping the last ones: %s", exc)
                return
            if domains != self._store_domains:
                self._store_domains = domains
                self._checker = self._build()

    def _build(self) -> Checker:
        directory = build_directory(self._static_domains, self._static_addresses, self._store_domains)
        protected: list[tuple[str, str | None]] = [(brand, None) for brand in self.config.forgery.protected_brands]
        protected += list(directory.hosted_organisational_domains())
        relaying = frozenset(name for name, settings in self.config.forgery.accounts.items() if settings.relays_others)
        return Checker(directory, LookalikeIndex(protected), self.config.forgery.max_date_skew_hours, relaying)


def build_directory(static_domains: Mapping[str, set[str]], static_addresses: Mapping[str, set[str]],
                    store_domains: Mapping[str, str]) -> DomainDirectory:
    """Every domain's owner: the config's and map file's (static_ownership), then the store's."""
    domains: dict[str, set[str]] = defaultdict(set)
    for account, owned in static_domains.items():
        domains[account] |= owned
    for domain, account in store_domains.items():
        domains[account].add(domain)
    return DomainDirectory(domains, static_addresses)


def named_account_orgs(config: Config) -> dict[str, str]:
    """Accounts the identity and ip maps name: a domain among them is hosted here, owned by it."""
    orgs: dict[str, str] = {}
    for account in (*config.accounts.identity_map.values(), *(account for _, account in config.accounts.ip_map)):
        if org := organisational_domain(account):
            orgs.setdefault(org, account)
    return orgs


def domain_owner(directory: DomainDirectory, account_orgs: Mapping[str, str], domain: str) -> str | None:
    """The account that owns a domain hosted here (config, login map, store, or an account named
    after it), or None: the milter's rule (engine.py), and the complaint reader's (feedback/arf.py)."""
    org = organisational_domain(domain)
    return directory.owner(domain) or (account_orgs.get(org) if org is not None else None)


def static_ownership(config: Config) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """Domains and single addresses owned according to the config and the sender login map."""
    domains: dict[str, set[str]] = defaultdict(set)
    addresses: dict[str, set[str]] = defaultdict(set)
    for account, settings in config.forgery.accounts.items():
        domains[account] |= set(settings.domains)
    for account in (*config.forgery.accounts, *config.ratelimit.accounts):
        domains[account].add(account)  # an account named after a domain owns it
    if config.forgery.sender_login_maps:
        for key, logins in read_sender_login_map(config.forgery.sender_login_maps):
            for login in logins:
                account = resolve_account(config.accounts, login)
                if key.startswith("@"):
                    domains[account].add(key[1:])
                else:
                    addresses[account].add(key)
    return dict(domains), dict(addresses)
