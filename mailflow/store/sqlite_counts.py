"""SQLite side of the per-account counts (mailflow/sent.py) and of the views that read them.

One row per (hour, account, field); the primary key is the views' index of active accounts per
hour. Rows older than KEEP_HOURS go at each write.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager

from mailflow.ratelimit.limits import Limit
from mailflow.views.fields import SENT

KEEP_HOURS = 50  # as Redis's COUNTS_TTL

SCHEMA = """
CREATE TABLE IF NOT EXISTS counts (
    hour    INTEGER NOT NULL,   -- unix time // 3600
    account TEXT NOT NULL,
    field   TEXT NOT NULL,      -- views/fields.py
    n       INTEGER NOT NULL,
    PRIMARY KEY (hour, account, field)
) WITHOUT ROWID;
"""


class SqliteCounts:
    """Mixed into SqliteStore, whose connections, clock and levels it uses."""

    clock: Callable[[], float]

    def _connection(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError

    def levels(self, account: str, limits: Sequence[Limit], estimate: bool = False) -> tuple[float, ...]:
        raise NotImplementedError

    def add_counts(self, counts: Mapping[tuple[int, str, str], int]) -> None:
        with self._connection() as conn:
            conn.executemany("INSERT INTO counts VALUES (?, ?, ?, ?) ON CONFLICT (hour, account, field) "
                             "DO UPDATE SET n = n + excluded.n",
                             [(hour, account, field, n) for (hour, account, field), n in counts.items()])
            conn.execute("DELETE FROM counts WHERE hour < ?", (int(self.clock()) // 3600 - KEEP_HOURS,))

    def active_accounts(self, hours: Sequence[int]) -> dict[str, int]:
        marks = ",".join("?" * len(hours))
        with self._connection() as conn:
            rows = conn.execute(f"SELECT account, SUM(CASE WHEN field = ? THEN n ELSE 0 END) FROM counts "
                                f"WHERE hour IN ({marks}) GROUP BY account", (SENT, *hours))
            return {str(account): int(n) for account, n in rows}

    def account_counts(self, accounts: Sequence[str], hours: Sequence[int]) -> dict[str, dict[str, int]]:
        totals: dict[str, dict[str, int]] = {}
        hour_marks = ",".join("?" * len(hours))
        with self._connection() as conn:
            for chunk in _chunks(accounts, 500):  # SQLite's limit on host parameters
                rows = conn.execute(
                    f"SELECT account, field, SUM(n) FROM counts WHERE hour IN ({hour_marks}) "
                    f"AND account IN ({','.join('?' * len(chunk))}) GROUP BY account, field", (*hours, *chunk))
                for account, field, n in rows:
                    totals.setdefault(str(account), {})[str(field)] = int(n)
        return totals

    def levels_of(self, accounts: Sequence[tuple[str, Sequence[Limit]]]) -> list[tuple[float, ...]]:
        return [self.levels(account, limits) for account, limits in accounts]


def _chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
