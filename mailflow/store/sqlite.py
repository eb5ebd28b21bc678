"""Embedded SQLite store: zero set-up, survives restarts, safe across threads and processes.

Connections are pooled, one per concurrent caller: libmilter may run one SMTP connection's
callbacks on different threads, so thread-local connections are not safe. WAL lets readers run
beside a writer; `BEGIN IMMEDIATE` serialises debits across threads and processes on one host.
Time comes from the host clock, which every process on one host shares.

The file is checked before it is opened and created private (sqlite_file.py). While open, the
path is looked at again every CHECK_EVERY seconds (one stat). If the file there is no longer the
one open (deleted, or replaced by a `mv`), every call fails (on_error applies) with one log line,
until that same file is back at the path or mailflow is restarted. Not reopened on the new file:
SQLite keeps the old database's -wal and -shm beside the path (it does not checkpoint a moved
file), and a database opened there would read the old one's pages out of them; nor counting on in
the old file while admin commands use the new one (a silent split).
"""

from __future__ import annotations

import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from urllib.parse import quote

from mailflow import metrics
from mailflow.ratelimit.bucket import BucketState, DebitResult, current_level, debit_levels, seconds_until_empty
from mailflow.ratelimit.limits import Limit
from mailflow.store import sqlite_claims
from mailflow.store import sqlite_window
from mailflow.store.sqlite_counts import SCHEMA as COUNTS_SCHEMA, SqliteCounts
from mailflow.store.base import DomainTaken, StoreError, SuppressionLookup
from mailflow.store.sqlite_feedback import SCHEMA as FEEDBACK_SCHEMA, SqliteFeedback
from mailflow.store.sqlite_grants import SCHEMA as GRANTS_SCHEMA, SqliteGrantsAudit
from mailflow.store.sqlite_file import check_path, create_private, identity, io_error_cause
from mailflow.store.sqlite_held import SCHEMA as HELD_SCHEMA, SqliteHeldMail
from mailflow.suppression.entries import Entry

log = logging.getLogger("mailflow.store")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS buckets (
    account TEXT NOT NULL,
    period  TEXT NOT NULL,
    level   REAL NOT NULL,
    updated REAL NOT NULL,
    expires REAL NOT NULL,   -- when the bucket is full again and the row can go
    PRIMARY KEY (account, period)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS buckets_expires ON buckets (expires);
CREATE TABLE IF NOT EXISTS domains (
    domain  TEXT PRIMARY KEY,
    account TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS suppression (
    scope TEXT NOT NULL,     -- global | account:NAME
    key   TEXT NOT NULL,     -- keyed hash (suppression/keys.py)
    value TEXT NOT NULL,     -- reason|added_at|source|sealed
    PRIMARY KEY (scope, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS trap_hits (account TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS trap_hits_account ON trap_hits (account, at);
CREATE TABLE IF NOT EXISTS held (account TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sent (
    hour    INTEGER NOT NULL,   -- unix time // 3600
    account TEXT NOT NULL,
    count   INTEGER NOT NULL,
    PRIMARY KEY (hour, account)
) WITHOUT ROWID;
"""

TRAP_WINDOW = 86400.0

# Expired rows are swept every this many debits, keeping the table bounded by active accounts.
_SWEEP_EVERY = 1000
CHECK_EVERY = 1.0  # seconds between looks at the database file's identity (one stat)


class SqliteStore(SqliteGrantsAudit, SqliteCounts, SqliteHeldMail, SqliteFeedback):
    def __init__(self, path: str, timeout_ms: int = 250, clock: Callable[[], float] = time.time,
                 group: str = "") -> None:
        self.path = path
        self.timeout = timeout_ms / 1000
        self.clock = clock
        self._idle: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._debits = 0
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        check_path(path)
        create_private(path, group)
        self._file = identity(path)  # the file opened: (device, inode)
        self._moved = False
        self._next_check = time.monotonic() + CHECK_EVERY
        with self._connection() as conn:
            conn.executescript(_SCHEMA + GRANTS_SCHEMA + sqlite_claims.SCHEMA + sqlite_window.SCHEMA + COUNTS_SCHEMA
                               + HELD_SCHEMA + FEEDBACK_SCHEMA)

    def _check_file(self) -> None:
        """StoreError unless the file at the path is still the one open (see the module's docstring)."""
        now = time.monotonic()
        with self._lock:
            if now < self._next_check:
                return
            current = identity(self.path)
            moved, was_moved = current != self._file, self._moved
            self._moved = moved
            # While moved, look at every call: a stat, and the file's return is seen at once.
            self._next_check = now if moved else now + CHECK_EVERY
        what = "deleted" if current is None else "replaced by another file"
        if moved and not was_moved:
            log.error("sqlite: %s was %s while open; store calls fail until it is back or mailflow restarts "
                      "(remove the old %s-wal and -shm first)", self.path, what, os.path.basename(self.path))
        elif was_moved and not moved:
            log.warning("sqlite: %s is back; store calls resume", self.path)
        if moved:
            raise StoreError(f"sqlite: {self.path} was {what} while open; restart mailflow once the right file "
                             "is in place")

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        """Borrow an idle connection (or open one); sqlite3 errors become StoreError."""
        started = time.perf_counter()
        if time.monotonic() >= self._next_check:
            self._check_file()
        try:
            conn = self._idle.get_nowait()
        except queue.Empty:
            with _sqlite_errors(self.timeout, self.path):
                # mode=rw: never create a file here (create_private did, with its mode, at open).
                conn = sqlite3.connect(f"file:{quote(os.path.abspath(self.path))}?mode=rw", uri=True,
                                       timeout=self.timeout, isolation_level=None, check_same_thread=False)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
            with self._lock:
                self._connections.append(conn)
        try:
            with _sqlite_errors(self.timeout, self.path):
                yield conn
        except StoreError as exc:
            if _keeps_connection(exc.__cause__):
                self._idle.put(conn)
            else:
                self._drop(conn)
            raise
        except BaseException:
            self._idle.put(conn)
            raise
        else:
            self._idle.put(conn)
        finally:
            metrics.RECORDER.store_latency(time.perf_counter() - started)

    def _drop(self, conn: sqlite3.Connection) -> None:
        """Close a connection that hit an error other than a busy lock: one opened while the file
        was not writable stays read-only for its whole life ("attempt to write a readonly
        database" long after the file is writable again); the next call opens a fresh one."""
        with self._lock:
            if conn in self._connections:
                self._connections.remove(conn)
        try:
            conn.close()
        except sqlite3.Error:
            pass

    @contextmanager
    def _transaction(self, conn: sqlite3.Connection) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any error. The error raised is the first one
        (say "database or disk is full"), never the rollback's ("cannot rollback - no transaction
        is active": SQLite may have rolled back itself)."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error as rollback:
                    log.warning("sqlite: rollback failed after %s: %s", exc, rollback)
            raise

    def _read(self, conn: sqlite3.Connection, account: str, limits: Sequence[Limit]) -> list[BucketState | None]:
        rows = dict(
            (period, BucketState(level, updated))
            for period, level, updated in conn.execute(
                "SELECT period, level, updated FROM buckets WHERE account = ?", (account,)
            )
        )
        return [rows.get(limit.period) for limit in limits]

    def _levels(self, conn: sqlite3.Connection, account: str, limits: Sequence[Limit], now: float) -> tuple[float, ...]:
        states = self._read(conn, account, limits)
        levels = tuple(current_level(s, limit.rate, now, limit.capacity) for s, limit in zip(states, limits))
        windows = any(limit.sliding for limit in limits)
        return sqlite_window.window_levels(conn, account, limits, levels, now) if windows else levels

    def levels(self, account: str, limits: Sequence[Limit], estimate: bool = False) -> tuple[float, ...]:
        with self._connection() as conn:
            return self._levels(conn, account, limits, self.clock())

    def debit(self, account: str, limits: Sequence[Limit], cost: float) -> DebitResult:
        with self._connection() as conn:
            with self._transaction(conn):
                now = self.clock()
                result = debit_levels(self._levels(conn, account, limits, now), limits, cost)
                if result.allowed:
                    conn.executemany(
                        "INSERT OR REPLACE INTO buckets VALUES (?, ?, ?, ?, ?)",
                        [
                            (account, limit.period, level, now, now + seconds_until_empty(level, limit))
                            for level, limit in zip(result.levels, limits) if not limit.sliding
                        ],
                    )
                    if any(limit.sliding for limit in limits):
                        sqlite_window.add(conn, account, limits, cost, now)
                        result = DebitResult(True, sqlite_window.window_levels(conn, account, limits, result.levels, now))
                    self._sweep_now_and_then(conn, now)
            return result

    def _sweep_now_and_then(self, conn: sqlite3.Connection, now: float) -> None:
        self._debits += 1  # a lost increment under threads only delays a sweep
        if self._debits % _SWEEP_EVERY == 0:
            conn.execute("DELETE FROM buckets WHERE expires < ?", (now,))
            sqlite_window.sweep(conn, now)

    def reset(self, account: str) -> None:
        with self._connection() as conn:
            conn.execute("DELETE FROM buckets WHERE account = ?", (account,))
            conn.execute("DELETE FROM windows WHERE account = ?", (account,))

    def domains(self) -> dict[str, str]:
        with self._connection() as conn:
            return dict(conn.execute("SELECT domain, account FROM domains"))

    def add_domain(self, account: str, domain: str) -> None:
        with self._connection() as conn:
            with self._transaction(conn):
                row = conn.execute("SELECT account FROM domains WHERE domain = ?", (domain,)).fetchone()
                if row and row[0] != account:
                    raise DomainTaken(f"{domain} belongs to account {row[0]}")
                conn.execute("INSERT OR REPLACE INTO domains VALUES (?, ?)", (domain, account))

    def remove_domain(self, account: str, domain: str) -> bool:
        with self._connection() as conn:
            cursor = conn.execute("DELETE FROM domains WHERE domain = ? AND account = ?", (domain, account))
            return cursor.rowcount > 0

    def add_suppressions(self, scope: str, entries: Sequence[Entry]) -> int:
        with self._connection() as conn:
            with self._transaction(conn):
                before = conn.total_changes
                conn.executemany("INSERT OR IGNORE INTO suppression VALUES (?, ?, ?)",
                                 [(scope, e.key, e.value()) for e in entries])
                added = conn.total_changes - before
            return added

    def remove_suppressions(self, scope: str, keys: Sequence[str]) -> int:
        with self._connection() as conn:
            before = conn.total_changes
            conn.executemany("DELETE FROM suppression WHERE scope = ? AND key = ?", [(scope, k) for k in keys])
            return conn.total_changes - before

    def find_suppressions(self, account: str, scopes: Sequence[str], keys: Sequence[str],
                          peek: Sequence[Limit] = ()) -> SuppressionLookup:
        levels = self.levels(account, peek) if peek else None
        with self._connection() as conn:
            scope_marks, key_marks = ",".join("?" * len(scopes)), ",".join("?" * len(keys))
            rows = conn.execute(
                f"SELECT scope, key, value FROM suppression WHERE scope IN ({scope_marks}) AND key IN ({key_marks})",
                (*scopes, *keys),
            ).fetchall()
            held = conn.execute("SELECT value FROM held WHERE account = ?", (account,)).fetchone()
        return SuppressionLookup(tuple((scope, Entry.from_value(key, value)) for scope, key, value in rows),
                                 held[0] if held else None, levels)

    def iter_suppressions(self, scope: str) -> Iterator[Entry]:
        with self._connection() as conn:
            cursor = conn.execute("SELECT key, value FROM suppression WHERE scope = ?", (scope,))
            while rows := cursor.fetchmany(10_000):
                for key, value in rows:
                    yield Entry.from_value(key, value)

    def suppression_scopes(self) -> dict[str, int]:
        with self._connection() as conn:
            return {str(scope): int(n) for scope, n in conn.execute("SELECT scope, COUNT(*) FROM suppression GROUP BY scope")}

    def record_trap_hit(self, account: str) -> int:
        with self._connection() as conn:
            now = self.clock()
            with self._transaction(conn):
                conn.execute("DELETE FROM trap_hits WHERE account = ? AND at < ?", (account, now - TRAP_WINDOW))
                conn.execute("INSERT INTO trap_hits VALUES (?, ?)", (account, now))
                (count,) = conn.execute("SELECT COUNT(*) FROM trap_hits WHERE account = ?", (account,)).fetchone()
            return int(count)

    def hold_account(self, account: str, reason: str) -> None:
        with self._connection() as conn:
            conn.execute("INSERT OR IGNORE INTO held VALUES (?, ?)", (account, f"{int(self.clock())}|{reason}"))

    def release_account(self, account: str) -> bool:
        with self._connection() as conn:
            released = conn.execute("DELETE FROM held WHERE account = ?", (account,)).rowcount > 0
            conn.execute("DELETE FROM trap_hits WHERE account = ?", (account,))
            return released

    def held_accounts(self) -> dict[str, str]:
        with self._connection() as conn:
            return dict(conn.execute("SELECT account, value FROM held"))

    def state_get(self, key: str) -> str | None:
        with self._connection() as conn:
            row = conn.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return str(row[0]) if row else None

    def state_swap(self, key: str, expected: str | None, new: str) -> bool:
        with self._connection() as conn:
            with self._transaction(conn):
                row = conn.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
                swapped = (row[0] if row else None) == expected
                if swapped:
                    conn.execute("INSERT OR REPLACE INTO state VALUES (?, ?)", (key, new))
        return swapped

    def add_sent(self, counts: dict[tuple[int, str], int]) -> None:
        with self._connection() as conn:
            conn.executemany(
                "INSERT INTO sent VALUES (?, ?, ?) ON CONFLICT (hour, account) DO UPDATE SET count = count + excluded.count",
                [(hour, account, n) for (hour, account), n in counts.items()],
            )
            conn.execute("DELETE FROM sent WHERE hour < ?", (int(self.clock()) // 3600 - 72,))

    def top_senders(self, hours: Sequence[int], limit: int) -> list[tuple[str, int]]:
        marks = ",".join("?" * len(hours))
        with self._connection() as conn:
            rows = conn.execute(
                f"SELECT account, SUM(count) AS n FROM sent WHERE hour IN ({marks}) GROUP BY account "
                "ORDER BY n DESC, account LIMIT ?", (*hours, limit)).fetchall()
        return [(str(a), int(n)) for a, n in rows]

    def claim(self, account: str, key: str, ttl: int) -> bool:
        with self._connection() as conn:
            with self._transaction(conn):
                return sqlite_claims.claim(conn, account, key, ttl, self.clock())

    def ping(self) -> None:
        with self._connection() as conn:
            conn.execute("SELECT 1").fetchone()

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                try:
                    conn.close()
                except sqlite3.Error:
                    pass
            self._connections.clear()
        self._idle = queue.SimpleQueue()


_BUSY, _LOCKED = 5, 6  # SQLITE_BUSY, SQLITE_LOCKED: another writer, not this connection's fault


def _keeps_connection(cause: BaseException | None) -> bool:
    """Whether a connection is fine to reuse after this error: a busy lock, or not SQLite's."""
    if not isinstance(cause, sqlite3.Error):
        return True
    return (getattr(cause, "sqlite_errorcode", 0) & 0xFF) in (_BUSY, _LOCKED)


@contextmanager
def _sqlite_errors(timeout: float, path: str) -> Iterator[None]:
    """Turn sqlite3 errors (locked past the timeout, disk full, corrupt file) into StoreError."""
    try:
        yield
    except sqlite3.Error as exc:
        why = f" (another process held its write lock over {timeout * 1000:.0f} ms)" if "locked" in str(exc) else ""
        why = why or io_error_cause(str(exc), path)
        raise StoreError(f"sqlite: {exc}{why}") from exc
