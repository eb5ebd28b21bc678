"""The one contract every store keeps. Policy code talks to this, never to a backend."""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from mailflow.ratelimit.bucket import DebitResult
from mailflow.ratelimit.limits import Limit

if TYPE_CHECKING:  # annotations only: suppression/keys.py imports StoreError from here
    from mailflow.held import HeldMessage
    from mailflow.suppression.entries import Entry


# Delivery feedback (counts, unique recipients, the per-source guard) is kept this long after
# its hour on every backend: the reputation ladder reads the last 7 days, plus one of margin.
FEEDBACK_HOURS = 8 * 24


class StoreError(Exception):
    """The store could not answer (down, timed out, corrupt). Callers apply `on_error`."""


@dataclass(frozen=True)
class SuppressionLookup:
    """What one RCPT's lookup found: in one store round trip, or none (Redis replica)."""

    matches: tuple[tuple[str, Entry], ...]  # (scope, entry)
    account_held: str | None  # why the account is held, or None
    # Bucket levels, when asked to peek: an estimate (Redis may answer from levels it saw lately),
    # good for letting recipients through; a refusal is confirmed with levels() first.
    levels: tuple[float, ...] | None = None


class DomainTaken(StoreError):
    """The domain already belongs to another account."""


class Store(Protocol):
    """Everything mailflow keeps: token buckets and the domains accounts own.

    Buckets: one per (account, limit period). Keying by period, not by the limit text, keeps the
    spent count when an admin changes "600/hour" to "2000/hour". Configuration guarantees one
    limit per period per account.
    """

    def levels(self, account: str, limits: Sequence[Limit], estimate: bool = False) -> tuple[float, ...]:
        """Spent level of each limit's bucket now (0 = full bucket). Writes nothing. With
        `estimate`, a store may answer from levels it saw lately (Redis: ratelimit/recent.py)."""
        ...

    def debit(self, account: str, limits: Sequence[Limit], cost: float) -> DebitResult:
        """Take `cost` from every bucket if all have room, else from none (atomic)."""
        ...

    def reset(self, account: str) -> None:
        """Forget an account's buckets (admin action: refills them)."""
        ...

    def domains(self) -> dict[str, str]:
        """Every domain added with `mailflow domains add`, mapped to its account."""
        ...

    def add_domain(self, account: str, domain: str) -> None:
        """Give `domain` to `account`; DomainTaken if another account has it."""
        ...

    def remove_domain(self, account: str, domain: str) -> bool:
        """Take `domain` from `account`; False if the account did not have it."""
        ...

    def add_suppressions(self, scope: str, entries: Sequence[Entry]) -> int:
        """Store entries, keeping any that exist already; returns how many were new."""
        ...

    def remove_suppressions(self, scope: str, keys: Sequence[str]) -> int: ...

    def find_suppressions(self, account: str, scopes: Sequence[str], keys: Sequence[str],
                          peek: Sequence[Limit] = ()) -> SuppressionLookup:
        """Entries under `keys` in any of `scopes`, the account's hold and, with `peek`, the
        levels of those buckets (what `levels` returns): all in one round trip."""
        ...

    def iter_suppressions(self, scope: str) -> Iterator[Entry]: ...

    def suppression_scopes(self) -> dict[str, int]:
        """Every list that holds entries (global, account:NAME) -> how many (`suppress rekey`)."""
        ...

    def record_trap_hit(self, account: str) -> int:
        """Count a spam-trap hit; returns the account's hits in the last 24 hours."""
        ...

    def hold_account(self, account: str, reason: str) -> None: ...

    def release_account(self, account: str) -> bool: ...

    def held_accounts(self) -> dict[str, str]:
        """Held account -> why and since when."""
        ...

    def add_held_messages(self, records: Sequence[HeldMessage]) -> None:
        """Record messages put in the MTA's hold queue; each account keeps its newest
        HELD_PER_ACCOUNT for HELD_TTL (mailflow/held.py). Store-side: store/*_held.py."""
        ...

    def held_messages(self, account: str | None = None) -> list[HeldMessage]:
        """Recorded held messages (of one account, or all), oldest first."""
        ...

    def forget_held_messages(self, account: str, queue_ids: Sequence[str]) -> int:
        """Drop these records of an account (released or dropped); returns how many there were."""
        ...

    def state_get(self, key: str) -> str | None:
        """A small shared state string (DNSBL watcher: per IP and zone, per zone)."""
        ...

    def state_swap(self, key: str, expected: str | None, new: str) -> bool:
        """Set `key` to `new` only if it still holds `expected`; True if this caller did it."""
        ...

    def add_sent(self, counts: dict[tuple[int, str], int]) -> None:
        """Add (hour, account) -> messages/recipients sent, as counted by a milter."""
        ...

    def top_senders(self, hours: Sequence[int], limit: int) -> list[tuple[str, int]]:
        """Accounts that sent the most in these hours (unix time // 3600), most first."""
        ...

    def grants(self) -> dict[str, str]:
        """Every stored grant: account -> its value (ratelimit/grants.py reads it)."""
        ...

    def swap_grant(self, account: str, expected: str | None, new: str | None) -> bool:
        """Set (or with None remove) an account's grant only if it still holds `expected` (None:
        no grant); True if this caller did it."""
        ...

    def add_audit(self, value: str, keep: int) -> None:
        """Append an audit entry, keeping only the newest `keep`."""
        ...

    def audit_entries(self, count: int) -> list[str]:
        """The newest `count` audit entries, newest first."""
        ...

    def claim(self, account: str, key: str, ttl: int) -> bool:
        """Mark `key` of `account` done for `ttl` seconds; True only for the first caller in the
        fleet (the notifier sends each event once: store/redis_claims.py, sqlite_claims.py)."""
        ...

    # The views' counts (mailflow/sent.py, views/fields.py): store/redis_counts.py, sqlite_counts.py.
    def add_counts(self, counts: Mapping[tuple[int, str, str], int]) -> None:
        """Add (hour, account, field) -> n, as counted by a milter."""
        ...

    def active_accounts(self, hours: Sequence[int]) -> dict[str, int]:
        """Every account with any count in these hours -> messages it sent in them."""
        ...

    def account_counts(self, accounts: Sequence[str], hours: Sequence[int]) -> dict[str, dict[str, int]]:
        """Each account's counts summed over these hours, field -> n (an account without any: absent)."""
        ...

    def levels_of(self, accounts: Sequence[tuple[str, Sequence[Limit]]]) -> list[tuple[float, ...]]:
        """What `levels` says of many accounts at once (the views; Redis: pipelined)."""
        ...

    # Delivery feedback and the reputation ladder (mailflow/feedback, mailflow/reputation):
    # store/*_feedback.py. Kept FEEDBACK_HOURS (8 days: the ladder reads 7).
    def add_feedback(self, source: str | None, seq: int, counts: Mapping[tuple[int, str, str], int],
                     recipients: Mapping[tuple[int, str], Collection[str]]) -> None:
        """Add (hour, account, field) -> n, and recipient digests to each (hour, account)'s
        unique-recipient estimate. With a `source` (one log file of one host), an account that
        already took `seq` or a later one from it takes nothing: a batch applied again after a
        restart counts once. Atomic per account."""
        ...

    def feedback_counts(self, account: str, hours: Sequence[int]) -> dict[int, dict[str, int]]:
        """hour -> field -> n for the hours that have any (mailflow/feedback/model.py FIELDS)."""
        ...

    def unique_recipients(self, account: str, hours: Sequence[int]) -> int:
        """About how many distinct recipient digests the account had in these hours together
        (Redis: HyperLogLog, 0.81 % standard error; SQLite: exact)."""
        ...

    def feedback_accounts(self, hours: Sequence[int]) -> list[str]:
        """Every account with any feedback count in these hours (no keyspace scan)."""
        ...

    def reputation_states(self) -> dict[str, str]:
        """Every stored standing: account -> its value (mailflow/reputation/model.py Standing)."""
        ...

    def swap_reputation(self, account: str, expected: str | None, new: str | None) -> bool:
        """Set (or with None remove) an account's standing only if it still holds `expected`
        (None: none stored); True if this caller did it."""
        ...

    def ping(self) -> None:
        """Raise StoreError unless the store answers."""
        ...

    def close(self) -> None: ...
