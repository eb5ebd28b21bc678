"""Claims on SQLite: one row per claim with its expiry; INSERT OR IGNORE decides who was first.
Expired rows are deleted by the claims that come after them (the table holds a few per account
and day)."""

from __future__ import annotations

import sqlite3

SCHEMA = """
CREATE TABLE IF NOT EXISTS claims (
    key     TEXT PRIMARY KEY,   -- account NUL claim
    expires REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS claims_expires ON claims (expires);
"""


def claim(conn: sqlite3.Connection, account: str, key: str, ttl: int, now: float) -> bool:
    """True if this call made the claim. Run inside a write transaction (BEGIN IMMEDIATE)."""
    conn.execute("DELETE FROM claims WHERE expires < ?", (now,))
    cursor = conn.execute("INSERT OR IGNORE INTO claims VALUES (?, ?)", (f"{account}\0{key}", now + max(1, ttl)))
    return cursor.rowcount > 0
