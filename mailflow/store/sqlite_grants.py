"""Grants and the audit log in SQLite (a mixin of SqliteStore)."""

from __future__ import annotations

import sqlite3
from contextlib import AbstractContextManager

SCHEMA = """
CREATE TABLE IF NOT EXISTS grants (account TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS audit (id INTEGER PRIMARY KEY AUTOINCREMENT, value TEXT NOT NULL);
"""


class SqliteGrantsAudit:
    def _connection(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError

    def _transaction(self, conn: sqlite3.Connection) -> AbstractContextManager[None]:
        raise NotImplementedError

    def grants(self) -> dict[str, str]:
        with self._connection() as conn:
            return {str(k): str(v) for k, v in conn.execute("SELECT account, value FROM grants")}

    def swap_grant(self, account: str, expected: str | None, new: str | None) -> bool:
        with self._connection() as conn:
            with self._transaction(conn):
                row = conn.execute("SELECT value FROM grants WHERE account = ?", (account,)).fetchone()
                if (row[0] if row else None) != expected:
                    return False
                if new is None:
                    conn.execute("DELETE FROM grants WHERE account = ?", (account,))
                else:
                    conn.execute("INSERT OR REPLACE INTO grants VALUES (?, ?)", (account, new))
        return True

    def add_audit(self, value: str, keep: int) -> None:
        with self._connection() as conn:
            with self._transaction(conn):
                cursor = conn.execute("INSERT INTO audit (value) VALUES (?)", (value,))
                conn.execute("DELETE FROM audit WHERE id <= ?", ((cursor.lastrowid or 0) - keep,))

    def audit_entries(self, count: int) -> list[str]:
        with self._connection() as conn:
            return [str(v) for (v,) in conn.execute("SELECT value FROM audit ORDER BY id DESC LIMIT ?", (count,))]

