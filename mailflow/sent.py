"""Per-account counts per hour, kept by the milter: sent counts for the DNSBL watcher's suspect
list, and what the admin views (`mailflow top`, `ratelimit status`) show: messages and
recipients sent, refusals by reason, holds, and the sources the mail came from.

Counted in memory and written to the store at most `flush_every` seconds after a count was
made (one pipelined write for all of them), so counting costs no store round trip per message.
A failed flush keeps the counts for the next. The flush runs on its own short-lived thread: no
message waits for it, nor for a store that is down.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from mailflow.model import Decision
from mailflow.store.base import Store, StoreError
from mailflow.views.fields import RECIPIENTS, SENT, SOURCE, count_fields

log = logging.getLogger("mailflow")

# Counts kept per kind while the store fails (an entry is an account's count for one hour and
# field): a long outage with many senders, or a customer inventing sender domains, stays bounded.
PENDING_MAX = 200_000


def _bounded(counts: Counter[Any]) -> int:
    """Drop the oldest hours' entries beyond PENDING_MAX; how many went. (What the milter counted
    since the failed flush began, at most flush_every seconds of it, comes on top.)"""
    excess = len(counts) - PENDING_MAX
    if excess <= 0:
        return 0
    for key in sorted(counts, key=lambda key: key[0])[:excess]:
        del counts[key]
    return excess


class SentCounter:
    def __init__(self, store: Store, flush_every: float = 10.0, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.flush_every = flush_every
        self.clock = clock
        self._counts: Counter[tuple[int, str]] = Counter()
        self._views: Counter[tuple[int, str, str]] = Counter()  # (hour, account, field) -> n
        self._lock = threading.Lock()
        self._flushing = threading.Lock()  # one flush at a time: stop() waits for a timer's write
        self._timer: threading.Timer | None = None
        self._stopped = False  # after stop(): no more timers (a failed last flush is said lost)

    def add(self, account: str, amount: int) -> None:
        hour = int(self.clock()) // 3600
        with self._lock:
            self._counts[(hour, account)] += amount
            self._schedule()

    def note(self, account: str, source: str, stage: str, decision: Decision, recipients: int, sent: int = 0) -> None:
        """Count an enforced decision for the views (see count_fields) and, for a message that
        goes on, its cost as sent: one lock, the engine's one call per decision."""
        fields = count_fields(stage, decision, recipients)
        if fields is None and not sent:
            return
        hour = int(self.clock()) // 3600
        with self._lock:  # Counter's += is a read then a write: pymilter calls from many threads
            views = self._views  # read under the lock: flush swaps it for a new one
            if sent:
                self._counts[(hour, account)] += sent
            if fields is not None:
                for name in fields:
                    views[(hour, account, name)] += 1
                if fields[0] == SENT:
                    views[(hour, account, RECIPIENTS)] += recipients
                views[(hour, account, SOURCE + source)] += 1
            self._schedule()

    def _schedule(self) -> None:
        """Under the lock: a flush within flush_every of the first count it will carry."""
        if self._timer is None and not self._stopped:
            self._timer = threading.Timer(self.flush_every, self.flush)
            self._timer.name, self._timer.daemon = "sent-flush", True
            self._timer.start()

    def stop(self) -> None:
        """The last flush (engine close): what it cannot write is lost, and said so; no timer
        is left retrying on a closed store."""
        with self._lock:
            self._stopped = True
        self.flush()

    def flush(self) -> None:
        with self._flushing:
            self._flush()

    def _flush(self) -> None:
        with self._lock:
            counts, self._counts = self._counts, Counter()
            views, self._views = self._views, Counter()
            if self._timer is not None:
                self._timer.cancel()  # when called directly (engine.close); harmless from the timer itself
                self._timer = None
        batches: tuple[tuple[str, str, Counter[Any], Callable[[Any], None]], ...] = (
            ("_counts", "sent counts", counts, self.store.add_sent),
            ("_views", "account counts", views, self.store.add_counts))
        for kept, what, batch, write in batches:
            if not batch:
                continue
            try:
                write(dict(batch))
            except StoreError as exc:
                dropped = _bounded(batch)  # outside the lock: the milter's threads count meanwhile
                with self._lock:
                    stopped = self._stopped
                    if not stopped:
                        kept_now: Counter[Any] = getattr(self, kept)
                        kept_now.update(batch)
                        self._schedule()
                if stopped:
                    log.error("%s of %d accounts lost at stop: %s", what, len({key[1] for key in batch}), exc)
                    continue
                log.warning("could not record %s, keeping them for the next flush: %s", what, exc)
                if dropped:
                    log.error("%s: %d of the oldest dropped (more than %d kept while the store fails)",
                              what, dropped, PENDING_MAX)
