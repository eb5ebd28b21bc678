"""Per-account sent counts per hour, kept by the milter for the DNSBL watcher's suspect list.

Counted in memory and flushed to the store every `flush_every` seconds (one pipelined write),
so counting costs no store round trip per message. A failed flush keeps the counts for the next.
The flush runs on its own short-lived thread: no message waits for it, nor for a store that is down.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable

from mailflow.store.base import Store, StoreError

log = logging.getLogger("mailflow")


class SentCounter:
    def __init__(self, store: Store, flush_every: float = 10.0, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.flush_every = flush_every
        self.clock = clock
        self._counts: Counter[tuple[int, str]] = Counter()
        self._lock = threading.Lock()
        self._last_flush = clock()

    def add(self, account: str, amount: int) -> None:
        now = self.clock()
        with self._lock:
            self._counts[(int(now) // 3600, account)] += amount
            due = now - self._last_flush >= self.flush_every
            if due:
                self._last_flush = now
        if due:  # at most one flush thread per flush_every: the store call is bounded by its timeout
            threading.Thread(target=self.flush, name="sent-flush", daemon=True).start()

    def flush(self) -> None:
        with self._lock:
            counts, self._counts = self._counts, Counter()
        if not counts:
            return
        try:
            self.store.add_sent(dict(counts))
        except StoreError as exc:
            log.warning("could not record sent counts, keeping them for the next flush: %s", exc)
            with self._lock:
                self._counts.update(counts)
