"""Local mode: while Redis is unreachable, one host's milter workers enforce each account's
limit divided by the fleet size, in one SQLite file they share (the SQLite store's own buckets
and windows: one piece of code per idea), and write down what they let through. A background
probe, never the hot path, notices Redis answering again, adds that spend to Redis's buckets
(reconcile.force_debit) and only then hands the hot path back to Redis.

The spend lives in the same file, so a worker or milter restarted during the outage still
reconciles it: at start, spend left in the file starts the probe.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar
from contextlib import closing, contextmanager

from mailflow import metrics
from mailflow.decisions import FALLBACK_UNCONFIRMED, STORE_DOWN_REPLY
from mailflow.fallback import reconcile
from mailflow.fallback.fleet import Heartbeat, member_name
from mailflow.model import Decision, Verdict
from mailflow.ratelimit.bucket import DebitResult
from mailflow.ratelimit.limits import Limit
from mailflow.store.base import StoreError, SuppressionLookup
from mailflow.store.health import StoreHealth
from mailflow.store.redis import RedisStore
from mailflow.store.sqlite import SqliteStore

log = logging.getLogger("mailflow.store")
T = TypeVar("T")

PROBE_EVERY = 0.5  # seconds between pings of the store while local
SCHEMA = ("CREATE TABLE IF NOT EXISTS fallback_spend (account TEXT PRIMARY KEY, cost REAL NOT NULL)",
          "CREATE TABLE IF NOT EXISTS fallback_fleet (id INTEGER PRIMARY KEY CHECK (id = 1), hosts INTEGER NOT NULL)")


def divided(limits: Sequence[Limit], fleet: int) -> tuple[Limit, ...]:
    """Each limit's share for one host of `fleet`: at least 1 (a limit below the fleet size
    lets each host send one: documented)."""
    if fleet <= 1:
        return tuple(limits)
    return tuple(Limit(max(1, limit.count // fleet), limit.period, max(1, limit.capacity // fleet), limit.kind)
                 for limit in limits)


def scaled(levels: Sequence[float], limits: Sequence[Limit], shares: Sequence[Limit],
           refused: float | None = None) -> tuple[float, ...]:
    """Local levels as levels of the account's whole limits, which the engine judges and words
    its replies with (a share half full: the limit half full). A refused debit (`refused`: its
    cost) stays refused however the division rounded."""
    out = []
    for level, limit, share in zip(levels, limits, shares):
        whole = level * limit.capacity / share.capacity
        if refused is not None and level + refused > share.capacity:
            whole = max(whole, limit.capacity - refused + 1e-6)
        out.append(whole)
    return tuple(out)


class LocalFallback:
    def __init__(self, store: RedisStore, path: str, fleet_size: int, limits_for: Callable[[str], Sequence[Limit]],
                 timeout_ms: int = 250, probe_every: float = PROBE_EVERY, health: StoreHealth | None = None) -> None:
        self.store = store
        self.health = health  # its local_mode: /health and mailflow_store_fallback_active
        self.path = path
        self.configured = fleet_size  # 0: learned (fleet.py), else 1
        self.limits_for = limits_for  # an account's current limits (grants laid over): for reconciling
        self.probe_every = probe_every
        self.local = SqliteStore(path, timeout_ms=max(timeout_ms, 1000))
        self._timeout = max(timeout_ms, 1000) / 1000
        with self._spend_db() as db:
            for statement in SCHEMA:
                db.execute(statement)
            row = db.execute("SELECT hosts FROM fallback_fleet").fetchone()
        self.learned = int(row[0]) if row else 0  # as last learned, also before a restart
        self._heartbeat = None if fleet_size else Heartbeat(store, member_name(path), self._learn)
        self.active = False  # read without the lock on the hot path
        self.decisions = 0
        self._since = 0.0
        self._failed_line = float("-inf")
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if self._pending():  # spend of an outage this host's milter did not live to reconcile
            log.warning("local fallback: spend of %d account(s) from an earlier outage waits in %s; reconciling "
                        "once the store answers", self._pending(), path)
            self._start_probe()

    @property
    def fleet_size(self) -> int:
        return self.configured or self.learned or 1

    def _learn(self, hosts: int) -> None:
        if hosts == self.learned or hosts < 1:
            return
        log.info("fleet size learned from the store: %d milter host(s) (was %d)", hosts, self.learned)
        self.learned = hosts
        with self._spend_db() as db:
            db.execute("INSERT OR REPLACE INTO fallback_fleet VALUES (1, ?)", (hosts,))

    @contextmanager
    def _spend_db(self) -> Iterator[sqlite3.Connection]:
        """A connection of its own (autocommit), closed after: spend and fleet size are written rarely."""
        with closing(sqlite3.connect(self.path, timeout=self._timeout, isolation_level=None)) as db:
            yield db

    def _pending(self) -> int:
        with self._spend_db() as db:
            return int(db.execute("SELECT count(*) FROM fallback_spend").fetchone()[0])

    # -- the hot path while local ------------------------------------------------------------

    def enter(self, error: object) -> None:
        """A hot-path call failed: serve locally until the probe sees the store again."""
        if self.active:
            return
        with self._lock:
            if self.active:
                return
            self.active, self._since, self.decisions = True, time.monotonic(), 0
        source = "configured" if self.configured else "learned" if self.learned else "unknown: assumed"
        if self.health is not None:
            self.health.local_mode = (f"since {time.strftime('%H:%M:%S')}, limits divided by {self.fleet_size} "
                                      f"({source})")
        log.warning("store unreachable (%s): enforcing locally, every limit divided by the fleet size %d (%s), "
                    "suppression from the last replica; spend kept in %s", error, self.fleet_size, source, self.path)
        self._start_probe()

    def answer(self, local: Callable[[LocalFallback], T | Decision]) -> T | Decision:
        """A local answer; the fallback file failing too (disk full, locked past the timeout):
        on_error's 451, with a line at most every 5 s."""
        try:
            return local(self)
        except StoreError as exc:
            if time.monotonic() - self._failed_line >= 5:
                self._failed_line = time.monotonic()
                log.warning("local fallback failed too, deferring mail: %s", exc)
            return Decision(Verdict.TEMPFAIL, "store_error", STORE_DOWN_REPLY)

    def find_suppressions(self, account: str, scopes: Sequence[str], keys: Sequence[str],
                          peek: Sequence[Limit] = ()) -> SuppressionLookup | Decision:
        """The last good replica's answer: "certainly not listed" passes; a "maybe" cannot be
        confirmed, so that recipient is deferred (never a 5xx guess)."""
        self.decisions += 1
        metrics.RECORDER.fallback_decision()
        known = self.store.replica.lookup(account, keys if scopes else (), stale_ok=True)
        if known is None:
            return FALLBACK_UNCONFIRMED
        levels = self.levels(account, peek) if peek else None
        return SuppressionLookup(known.matches, known.account_held, levels)

    def levels(self, account: str, limits: Sequence[Limit], estimate: bool = False) -> tuple[float, ...]:
        shares = divided(limits, self.fleet_size)
        return scaled(self.local.levels(account, shares), limits, shares)

    def debit(self, account: str, limits: Sequence[Limit], cost: float) -> DebitResult:
        self.decisions += 1
        metrics.RECORDER.fallback_decision()
        shares = divided(limits, self.fleet_size)
        local = self.local.debit(account, shares, cost)
        result = DebitResult(local.allowed, scaled(local.levels, limits, shares, None if local.allowed else cost))
        if result.allowed and cost > 0:
            with self._spend_db() as db:
                db.execute("INSERT INTO fallback_spend VALUES (?, ?) ON CONFLICT(account) DO UPDATE "
                           "SET cost = cost + excluded.cost", (account, float(cost)))
        return result

    # -- back to the store -------------------------------------------------------------------

    def _start_probe(self) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._thread = threading.Thread(target=self._probe, name="fallback-probe", daemon=True)
            self._thread.start()

    def _probe(self) -> None:
        while not self._stop.wait(self.probe_every):
            try:
                self.store.ping()
                self.reconcile()
            except StoreError:
                continue
            if self.health is not None:
                self.health.local_mode = None
            if self.active:
                log.warning("store answering again: leaving local mode after %d s, %d decision(s) made locally",
                            time.monotonic() - self._since, self.decisions)
            self.active = False
            try:  # what the hot path spent locally while the first pass ran
                self.reconcile()
            except StoreError:  # left in the file: the next start or outage adds it
                log.warning("local fallback: %d account(s) of spend left for later", self._pending())
            return

    def reconcile(self) -> int:
        """Add every account's local spend to the store's buckets; StoreError leaves the rest for
        the next try. Each row is taken in one transaction: the host's workers never add one twice."""
        with self._spend_db() as db:
            db.execute("BEGIN IMMEDIATE")
            rows = db.execute("SELECT account, cost FROM fallback_spend").fetchall()
            db.execute("DELETE FROM fallback_spend")
            db.execute("COMMIT")
        done, total = 0, 0.0
        try:
            for account, cost in rows:
                reconcile.force_debit(self.store, account, self.limits_for(account), cost)
                done, total = done + 1, total + cost
        finally:
            if done < len(rows):
                with self._spend_db() as db:
                    db.executemany("INSERT INTO fallback_spend VALUES (?, ?) ON CONFLICT(account) DO UPDATE "
                                   "SET cost = cost + excluded.cost", rows[done:])
        metrics.RECORDER.fallback_reconciled(done)
        if rows:
            log.warning("local fallback reconciled: %d account(s), %d message cost(s) added to the store's buckets",
                        done, math.ceil(total))
        return done

    def stop(self) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.stop()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2)
        self.local.close()
