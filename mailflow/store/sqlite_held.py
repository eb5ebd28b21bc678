"""Held messages in SQLite (see mailflow/held.py): one row per (account, queue id)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager

from mailflow.held import HELD_PER_ACCOUNT, HELD_TTL, HeldMessage, by_account

SCHEMA = """
CREATE TABLE IF NOT EXISTS held_mail (
    account TEXT NOT NULL,
    queue_id TEXT NOT NULL,
    at INTEGER NOT NULL,
    value TEXT NOT NULL,     -- HeldMessage.value(): JSON
    PRIMARY KEY (account, queue_id)
);
CREATE INDEX IF NOT EXISTS held_mail_at ON held_mail (at);
"""


class SqliteHeldMail:
    """Mixed into SqliteStore, which provides `clock`, `_connection` and `_transaction`, and creates
    SCHEMA with its own."""

    clock: Callable[[], float]

    def _connection(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError

    def _transaction(self, conn: sqlite3.Connection) -> AbstractContextManager[None]:
        raise NotImplementedError

    def add_held_messages(self, records: Sequence[HeldMessage]) -> None:
        with self._connection() as conn:
            with self._transaction(conn):
                conn.executemany("INSERT OR REPLACE INTO held_mail VALUES (?, ?, ?, ?)",
                                 [(r.account, r.queue_id, r.at, r.value()) for r in records])
                conn.execute("DELETE FROM held_mail WHERE at < ?", (int(self.clock()) - HELD_TTL,))
                for account in by_account(records):
                    conn.execute("DELETE FROM held_mail WHERE account = ? AND queue_id NOT IN (SELECT queue_id FROM "
                                 "held_mail WHERE account = ? ORDER BY at DESC LIMIT ?)",
                                 (account, account, HELD_PER_ACCOUNT))

    def held_messages(self, account: str | None = None) -> list[HeldMessage]:
        where, args = ("AND account = ?", (account,)) if account is not None else ("", ())
        with self._connection() as conn:
            rows = conn.execute(f"SELECT account, value FROM held_mail WHERE at >= ? {where} ORDER BY at, account",
                                (int(self.clock()) - HELD_TTL, *args)).fetchall()
        return [HeldMessage.from_value(str(name), str(value)) for name, value in rows]

    def forget_held_messages(self, account: str, queue_ids: Sequence[str]) -> int:
        with self._connection() as conn:
            before = conn.total_changes
            conn.executemany("DELETE FROM held_mail WHERE account = ? AND queue_id = ?",
                             [(account, queue_id) for queue_id in queue_ids])
            return conn.total_changes - before
