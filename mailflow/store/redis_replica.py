"""What the milter needs at RCPT from Redis, kept in memory: a filter of suppression keys and
the held accounts, refreshed by one background thread.

Most recipients are on no list. The filter answers "certainly not listed" for them without a
round trip; a "maybe" (a listed key, or a rare false positive) goes to Redis as before, so the
filter can be stale in one direction only: an entry added since the last refresh. Every change
to the lists is logged (`GEN_KEY` counts changes, `LOG_KEY` keeps the recent ones with their
keys), so a refresh is two GETs while nothing changes and a short LRANGE when something did; a
replica that fell too far behind, or a Redis that was flushed (a new random epoch), is rebuilt
with HSCAN. A replica that has not refreshed within STALE_AFTER refresh intervals answers
nothing: then every RCPT asks Redis, and Redis trouble meets the milter's on_error policy as it
always did.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

import redis

from mailflow.store.base import SuppressionLookup
from mailflow.store.redis_errors import describe
from mailflow.suppression.keyfilter import KeyFilter

log = logging.getLogger("mailflow.store")

GEN_KEY = "mailflow:{sup}:gen"  # one hash tag for the three: lua/log_change.lua touches them all
LOG_KEY = "mailflow:{sup}:log"  # entries "GEN key key …", the newest LOG_LENGTH of them
EPOCH_KEY = "mailflow:{sup}:epoch"  # random, set by the first change: a flushed Redis gets a new one
LOG_LENGTH = 1000
STALE_AFTER = 5  # refresh intervals


class SuppressionReplica:
    def __init__(self, client: redis.Redis, scan_pattern: str, held_key: str, interval: float,
                 timeout_ms: int = 250) -> None:
        self.client = client
        self.timeout_ms = timeout_ms
        self.scan_pattern = scan_pattern
        self.held_key = held_key
        self.interval = interval
        self._filter: KeyFilter | None = None
        self._generation = -1
        self._epoch: str | None = None
        self._held: dict[str, str] = {}
        self._refreshed = float("-inf")
        self._started = False
        self._start_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start refreshing in the background (once; later calls do nothing)."""
        if self._started:
            return
        with self._start_lock:
            if not self._started:
                self._thread = threading.Thread(target=self._run, name="suppression-replica", daemon=True)
                self._thread.start()
                self._started = True

    def stop(self) -> None:
        """Stop refreshing, and wait (bounded) for a refresh in flight: the store closes the
        client's connections next, and one closed under a running refresh fails in redis-py
        with errors no store error covers."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2 * self.timeout_ms / 1000 + 1)

    @property
    def ready(self) -> bool:
        """Built and refreshed lately: its answers are trusted."""
        return self._filter is not None and time.monotonic() - self._refreshed <= STALE_AFTER * self.interval

    @property
    def age(self) -> float | None:
        """Seconds since the last refresh (inf: none yet); None while not started (metrics, /health)."""
        return time.monotonic() - self._refreshed if self._started else None

    @property
    def stale_after(self) -> float:
        return STALE_AFTER * self.interval

    @property
    def filter_bytes(self) -> int:
        return self._filter.size // 8 if self._filter else 0

    def lookup(self, account: str, keys: Sequence[str], stale_ok: bool = False) -> SuppressionLookup | None:
        """The answer without Redis, or None when Redis must be asked (`stale_ok`: the last good
        filter however old, for the local fallback while Redis is down)."""
        key_filter = self._filter
        if key_filter is None or not (stale_ok or self.ready):
            return None
        for key in keys:
            if key_filter.might_contain(key):
                return None
        return SuppressionLookup((), self._held.get(account), None)

    def note_held(self, account: str, value: str) -> None:
        """A hold made by this process counts at once here (elsewhere: at the next refresh)."""
        self._held = {**self._held, account: value}

    def _run(self) -> None:
        failing = False
        while not self._stop.is_set():
            try:
                self.refresh()
                if failing:
                    log.info("suppression replica refreshed again")
                failing = False
            except (redis.RedisError, OSError, ValueError) as exc:
                if not failing:  # one line per outage, not one per interval
                    log.warning("suppression replica cannot refresh (redis: %s); RCPT lookups go to Redis",
                                describe(exc, self.timeout_ms))
                failing = True
            self._stop.wait(self.interval)

    def refresh(self) -> None:
        pipe = self.client.pipeline(transaction=False)
        pipe.get(GEN_KEY)
        pipe.get(EPOCH_KEY)
        pipe.hgetall(self.held_key)
        raw_generation, epoch, held = pipe.execute()
        generation = int(raw_generation or 0)
        if epoch != self._epoch:
            self._rebuild()
        elif generation != self._generation or self._filter is None or self._filter.overfull:
            if not self._catch_up(generation):
                self._rebuild()
        self._held = {str(account): str(value) for account, value in held.items()}
        self._refreshed = time.monotonic()

    def _catch_up(self, generation: int) -> bool:
        """Add the keys logged since our generation; False when the log cannot bridge the gap."""
        key_filter, behind = self._filter, generation - self._generation
        if key_filter is None or key_filter.overfull or behind < 0 or behind > LOG_LENGTH:
            return False
        # A few more than needed: changes logged since the GET above are skipped here, read next time.
        logged = [str(entry).split(" ") for entry in self.client.lrange(LOG_KEY, -(behind + 16), -1)]
        changes = [change for change in logged if self._generation < int(change[0]) <= generation]
        if [int(change[0]) for change in changes] != list(range(self._generation + 1, generation + 1)):
            return False  # trimmed, or a Redis that was flushed and refilled
        for change in changes:
            for key in change[1:]:
                key_filter.add(key)
        self._generation = generation
        return True

    def _rebuild(self) -> None:
        started = time.monotonic()
        pipe = self.client.pipeline(transaction=False)  # before the scan: later changes come next time
        pipe.get(GEN_KEY)
        pipe.get(EPOCH_KEY)
        raw_generation, epoch = pipe.execute()
        generation = int(raw_generation or 0)
        scopes = list(self.client.scan_iter(match=self.scan_pattern, count=1000))
        total = sum(int(self.client.hlen(scope)) for scope in scopes)
        key_filter = KeyFilter(capacity=2 * total)
        for scope in scopes:
            for key, _ in self.client.hscan_iter(scope, count=10_000):
                key_filter.add(str(key))
        self._filter, self._generation, self._epoch = key_filter, generation, epoch
        log.info("suppression replica built: %d keys in %d lists, %.1f s", key_filter.count, len(scopes),
                 time.monotonic() - started)

