"""SQLite side of the delivery feedback and the reputation standings (a mixin of SqliteStore).

  feedback       (hour, account, field) -> n: the counts the ladder reads (feedback/model.py FIELDS)
  feedback_rcpt  (hour, account, digest): one row per distinct recipient, so unique_recipients is
                 exact here (Redis estimates with a HyperLogLog)
  feedback_seq   (account, source) -> the last seq the account took from that source: the guard
                 that makes a batch applied again (a follower restarted mid-batch) count once
  reputation     account -> its standing (reputation/model.py Standing), swapped compare-and-set
One transaction per add_feedback call: the guard and the adds of every account in it are atomic.
Rows of hours older than FEEDBACK_HOURS (and guards not written as long) go at each write.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Collection, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

from mailflow.store.base import FEEDBACK_HOURS, StoreError

SCHEMA = """
CREATE TABLE IF NOT EXISTS feedback (
    hour    INTEGER NOT NULL,   -- unix time // 3600
    account TEXT NOT NULL,
    field   TEXT NOT NULL,      -- feedback/model.py FIELDS
    n       INTEGER NOT NULL,
    PRIMARY KEY (hour, account, field)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS feedback_rcpt (
    hour    INTEGER NOT NULL,
    account TEXT NOT NULL,
    digest  TEXT NOT NULL,      -- a recipient's digest, never the address
    PRIMARY KEY (hour, account, digest)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS feedback_seq (
    account TEXT NOT NULL,
    source  TEXT NOT NULL,      -- one log file of one host, or the complaint reader
    seq     INTEGER NOT NULL,
    hour    INTEGER NOT NULL,   -- when last written: pruned as the counts are
    PRIMARY KEY (account, source)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS reputation (account TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
"""

# The hours as one JSON parameter: any number of them in one query (no limit on host parameters).
_HOURS = "(SELECT value FROM json_each(?))"


class SqliteFeedback:
    """Mixed into SqliteStore, whose connections, transactions and clock it uses."""

    clock: Callable[[], float]

    def _connection(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError

    def _transaction(self, conn: sqlite3.Connection) -> AbstractContextManager[None]:
        raise NotImplementedError

    def add_feedback(self, source: str | None, seq: int, counts: Mapping[tuple[int, str, str], int],
                     recipients: Mapping[tuple[int, str], Collection[str]]) -> None:
        now_hour = int(self.clock()) // 3600
        # As on Redis: an account with nothing to add takes no seq either.
        accounts = {account for (_, account, _), n in counts.items() if n} | {
            account for (_, account), digests in recipients.items() if digests}
        with self._connection() as conn:
            with self._transaction(conn):
                if source is not None:
                    accounts = {account for account in accounts if _take(conn, account, source, seq, now_hour)}
                conn.executemany("INSERT INTO feedback VALUES (?, ?, ?, ?) ON CONFLICT (hour, account, field) "
                                 "DO UPDATE SET n = n + excluded.n",
                                 [(hour, account, field, n) for (hour, account, field), n in counts.items()
                                  if account in accounts and n])
                conn.executemany("INSERT OR IGNORE INTO feedback_rcpt VALUES (?, ?, ?)",
                                 [(hour, account, digest) for (hour, account), digests in recipients.items()
                                  if account in accounts for digest in digests])
                oldest = now_hour - FEEDBACK_HOURS
                for table in ("feedback", "feedback_rcpt", "feedback_seq"):
                    conn.execute(f"DELETE FROM {table} WHERE hour < ?", (oldest,))

    def feedback_counts(self, account: str, hours: Sequence[int]) -> dict[int, dict[str, int]]:
        found: dict[int, dict[str, int]] = {}
        with self._connection() as conn:
            rows = conn.execute(f"SELECT hour, field, n FROM feedback WHERE hour IN {_HOURS} AND account = ?",
                                (_hours(hours), account))
            for hour, field, n in rows:
                found.setdefault(_number(hour), {})[str(field)] = _number(n)
        return found

    def unique_recipients(self, account: str, hours: Sequence[int]) -> int:
        with self._connection() as conn:
            (n,) = conn.execute(f"SELECT COUNT(DISTINCT digest) FROM feedback_rcpt WHERE hour IN {_HOURS} "
                                "AND account = ?", (_hours(hours), account)).fetchone()
        return _number(n)

    def feedback_accounts(self, hours: Sequence[int]) -> list[str]:
        with self._connection() as conn:
            rows = conn.execute(f"SELECT account FROM feedback WHERE hour IN {_HOURS} UNION "
                                f"SELECT account FROM feedback_rcpt WHERE hour IN {_HOURS}", (_hours(hours),) * 2)
            return sorted(str(account) for (account,) in rows)

    def reputation_states(self) -> dict[str, str]:
        with self._connection() as conn:
            return {str(k): str(v) for k, v in conn.execute("SELECT account, value FROM reputation")}

    def swap_reputation(self, account: str, expected: str | None, new: str | None) -> bool:
        with self._connection() as conn:
            with self._transaction(conn):
                row = conn.execute("SELECT value FROM reputation WHERE account = ?", (account,)).fetchone()
                if (row[0] if row else None) != expected:
                    return False
                if new is None:
                    conn.execute("DELETE FROM reputation WHERE account = ?", (account,))
                else:
                    conn.execute("INSERT OR REPLACE INTO reputation VALUES (?, ?)", (account, new))
        return True


def _take(conn: sqlite3.Connection, account: str, source: str, seq: int, now_hour: int) -> bool:
    """Whether `account` takes `seq` from `source` (never took it or a later one); records it if so."""
    row = conn.execute("SELECT 1 FROM feedback_seq WHERE account = ? AND source = ? AND seq >= ?",
                       (account, source, seq)).fetchone()
    if row is not None:
        return False
    conn.execute("INSERT OR REPLACE INTO feedback_seq VALUES (?, ?, ?, ?)", (account, source, seq, now_hour))
    return True


def _number(value: Any) -> int:
    """A stored count as an int; a corrupt one (edited by hand) is the store's failure, said so."""
    if isinstance(value, int):
        return value
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"sqlite: corrupt feedback count {str(value)[:40]!r}") from exc


def _hours(hours: Sequence[int]) -> str:
    return json.dumps([int(hour) for hour in hours])
