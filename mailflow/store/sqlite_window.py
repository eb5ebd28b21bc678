"""SQLite's sliding windows (ratelimit/window.py): one row per (account, period, slot).

Read and written inside the store's debit transaction, beside the token buckets, so a debit of
both kinds stays all or nothing. Only accounts with a sliding limit touch this table.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from mailflow.ratelimit.limits import PERIOD_SECONDS, Limit
from mailflow.ratelimit.window import first_counted, slot_of, window_level

SCHEMA = """
CREATE TABLE IF NOT EXISTS windows (
    account TEXT NOT NULL,
    period  TEXT NOT NULL,
    slot    INTEGER NOT NULL,   -- ratelimit/window.py slot_of
    count   REAL NOT NULL,
    PRIMARY KEY (account, period, slot)
) WITHOUT ROWID;
"""


def window_levels(conn: sqlite3.Connection, account: str, limits: Sequence[Limit], levels: Sequence[float],
                  now: float) -> tuple[float, ...]:
    """`levels` with each sliding limit's level read from its window."""
    return tuple(_read(conn, account, limit, now) if limit.sliding else level for level, limit in zip(levels, limits))


def _read(conn: sqlite3.Connection, account: str, limit: Limit, now: float) -> float:
    rows = conn.execute("SELECT slot, count FROM windows WHERE account = ? AND period = ? AND slot >= ?",
                        (account, limit.period, first_counted(limit, now)))
    return window_level(dict(rows), limit, now)


def add(conn: sqlite3.Connection, account: str, limits: Sequence[Limit], cost: float, now: float) -> None:
    """Count `cost` in the slot of `now` of every sliding limit; drop the account's old slots."""
    for limit in limits:
        if limit.sliding:
            conn.execute("INSERT INTO windows VALUES (?, ?, ?, ?) ON CONFLICT (account, period, slot) "
                         "DO UPDATE SET count = count + excluded.count", (account, limit.period, slot_of(limit, now), cost))
            conn.execute("DELETE FROM windows WHERE account = ? AND period = ? AND slot < ?",
                         (account, limit.period, first_counted(limit, now)))


def sweep(conn: sqlite3.Connection, now: float) -> None:
    """Drop every slot that has left its window (accounts that stopped sending)."""
    for period in PERIOD_SECONDS:
        conn.execute("DELETE FROM windows WHERE period = ? AND slot < ?",
                     (period, first_counted(Limit(1, period, 1, "sliding"), now)))
