"""Temporary grants: limits an admin gives an account for a while, kept in the store.

A grant replaces the account's configured limit of the same period until it ends; the limits of
other periods stay as configured, and a grant of a period the config does not limit adds that
limit. A grant may raise or lower a limit. An exempt account stays exempt.

The milter never reads grants on its hot path: `GrantOverlay` keeps the active ones in memory,
re-read every `store.refresh_ms` by a background thread (mailflow/refresher.py), and ignores a
grant the moment its end passes, by its own clock. The refresh removes expired grants from the
store (compare-and-delete, so a grant given again meanwhile is kept) and publishes GRANT_ENDED for
each grant it knew that has expired. Grant times are unix seconds: hosts of a fleet keep NTP time.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mailflow import events
from mailflow.ratelimit.limits import KINDS, PERIOD_SECONDS, Limit, LimitSyntaxError, parse_limit
from mailflow.refresher import StoreOverlay
from mailflow.settings import RateLimitSettings, RatePolicy
from mailflow.store.base import Store, StoreError

log = logging.getLogger("mailflow")

MAX_SECONDS = 90 * 86400  # the longest a grant may run from now (also after --extend)
MIN_SECONDS = 60
MAX_TEXT = 300  # reason and "by", as stored
_DURATION_RE = re.compile(r"(\d{1,7})([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class GrantError(ValueError):
    """A grant's LIMIT, duration or account that cannot be used (the CLI's one line, exit 2)."""


def parse_duration(text: str) -> int:
    """Seconds in "24h", "90m", "7d", "1d12h" (units s, m, h, d, w)."""
    compact = text.strip().lower().replace(" ", "") if isinstance(text, str) else ""
    if len(compact) > 32 or not compact or _DURATION_RE.sub("", compact):
        raise GrantError(f"{text[:40]!r} is not a duration (like 90m, 24h, 7d or 1d12h)")
    seconds = sum(int(n) * _UNITS[unit] for n, unit in _DURATION_RE.findall(compact))
    if not MIN_SECONDS <= seconds <= MAX_SECONDS:
        raise GrantError(f"{text!r}: a grant runs at least 1 minute and at most {MAX_SECONDS // 86400} days")
    return seconds


def parse_grant_limits(texts: Sequence[str]) -> tuple[Limit, ...]:
    """Limits as the config writes them ("2000/hour", "600/hour sliding", "20000/day"): one per
    period. A kind may come as its own argument (`2000/hour sliding` unquoted on a command line)."""
    joined: list[str] = []
    for text in texts:
        if joined and text.strip().lower() in KINDS and " " not in joined[-1].strip():
            joined[-1] = f"{joined[-1]} {text.strip()}"
        else:
            joined.append(text)
    limits: list[Limit] = []
    for text in joined:
        try:
            limit = parse_limit(text[:64])
        except LimitSyntaxError as exc:
            raise GrantError(str(exc)) from None
        if any(other.period == limit.period for other in limits):
            raise GrantError(f"two limits per {limit.period}: give one limit per period")
        limits.append(limit)
    if not limits:
        raise GrantError("give at least one LIMIT, like 2000/hour")
    return tuple(limits)


def check_account(name: str) -> str:
    """The account as stored (lower case); GrantError for one no mail could be charged to."""
    account = name.strip().lower()
    if not account or len(account) > 255 or any(c.isspace() or not c.isprintable() for c in account):
        raise GrantError(f"{name[:60]!r} is not an account name")
    return account


@dataclass(frozen=True)
class Grant:
    limits: tuple[Limit, ...]
    until: float  # unix seconds
    reason: str
    by: str
    given: float

    def value(self) -> str:
        return json.dumps({"limits": [str(limit) for limit in self.limits],
                           "until": self.until, "reason": self.reason[:MAX_TEXT], "by": self.by[:MAX_TEXT],
                           "given": self.given}, sort_keys=True, ensure_ascii=False)

    @classmethod
    def from_value(cls, value: str) -> Grant:
        """A stored grant; GrantError if it does not read as one (written by something else)."""
        try:
            data = json.loads(value)
            return cls(parse_grant_limits(data["limits"]), float(data["until"]), str(data["reason"]),
                       str(data["by"]), float(data["given"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise GrantError(f"not a grant: {exc}") from None

    def limits_text(self) -> str:
        return ", ".join(str(limit) for limit in self.limits)

    def detail(self) -> dict[str, str | int | float]:
        """What an event says of it."""
        return {"limits": self.limits_text(), "reason": self.reason, "by": self.by, "until": int(self.until)}


def overlay(base: RatePolicy, grant: Grant) -> RatePolicy:
    """The policy with the grant's limits in place of the same periods' (others kept, new added)."""
    granted = {limit.period: limit for limit in grant.limits}
    limits = [granted.pop(limit.period, limit) for limit in base.limits]
    limits += sorted(granted.values(), key=lambda limit: PERIOD_SECONDS[limit.period])
    return RatePolicy(tuple(limits), base.unit, base.exempt)


def read_grants(store: Store) -> dict[str, tuple[str, Grant]]:
    """Every stored grant (account -> (stored value, grant)); one that does not read is skipped."""
    found: dict[str, tuple[str, Grant]] = {}
    for account, value in store.grants().items():
        try:
            found[account] = (value, Grant.from_value(value))
        except GrantError as exc:
            log.warning("grant of %s in the store is unreadable, ignored: %s", account[:80], exc)
    return found


def active_grant(store: Store, account: str) -> tuple[str | None, Grant | None]:
    """The account's active grant and its stored value, for admin commands (`ratelimit status`:
    `overlay(settings.policy_for(account), grant)` are its limits). An expired one is removed on
    the way, and is no grant."""
    found = read_grants(store).get(account)
    if found is None:
        return None, None
    value, grant = found
    if grant.until <= time.time():
        remove_expired(store, account, value)
        return None, None
    return value, grant


class GrantOverlay(StoreOverlay):
    """The accounts' effective rate policies: the config's, with active grants laid over."""

    what = "grants"

    def __init__(self, settings: RateLimitSettings, store: Store, refresh_seconds: float,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(store, refresh_seconds, "mailflow-grants")
        self.settings = settings
        self.clock = clock
        self._known: dict[str, Grant] = {}  # active at the last refresh
        self._removing_fails = False
        # account -> (until, effective policy): built at refresh, so a lookup builds nothing.
        self._policies: dict[str, tuple[float, RatePolicy]] = {}
        self.refresh()  # the first read, at start: never inside a milter callback

    def policy_for(self, account: str) -> RatePolicy:
        """The hot path: a dict lookup, and the clock only for an account with a grant."""
        self._started()
        granted = self._policies.get(account)
        if granted is not None and granted[0] > self.clock():  # an expired grant is ignored at once
            return granted[1]
        return self.settings.policy_for(account)

    def _read(self) -> dict[str, tuple[str, Grant]]:
        return read_grants(self.store)

    def _apply(self, stored: dict[str, tuple[str, Grant]]) -> None:
        """Under the lock (StoreOverlay.refresh): expired grants ended and removed, the rest laid over."""
        now = self.clock()
        for account, old in self._known.items():
            if old.until <= now:  # it ran out while this milter knew it (a revoke is the CLI's event)
                log.info("grant of %s (%s) expired", account, old.limits_text())
                events.publish(events.Event(events.GRANT_ENDED, account, {**old.detail(), "how": "expired"}))
            elif account not in stored:  # the CLI's revoke said so; a Redis restarted empty did not
                log.info("grant of %s (%s) is no longer in the store (revoked, or the store lost its data): "
                         "its configured limits apply", account, old.limits_text())
        failed = False  # a READONLY replica reads, and refuses each removal: said once, not every refresh
        for account, (value, grant) in stored.items():
            if grant.until <= now and not remove_expired(self.store, account, value, say=not self._removing_fails):
                failed = self._removing_fails = True
        if self._removing_fails and not failed:
            log.warning("expired grants removed again")
            self._removing_fails = False
        self._known = {account: grant for account, (_, grant) in stored.items() if grant.until > now}
        self._policies = {account: (grant.until, overlay(self.settings.policy_for(account), grant))
                          for account, grant in self._known.items()}


def remove_expired(store: Store, account: str, value: str, say: bool = True) -> bool:
    """Lazy removal; a failure (said when `say`) only leaves it for the next look."""
    try:
        store.swap_grant(account, value, None)
    except StoreError as exc:
        if say:
            log.warning("cannot remove the expired grant of %s (ignored meanwhile): %s", account[:80], exc)
        return False
    return True
