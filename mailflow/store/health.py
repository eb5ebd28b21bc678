"""What the log says while the store fails: one line when an outage starts, one every few
seconds with a count while it lasts, one when the store answers again. Never a line (or a
traceback) per message: at hundreds of messages a second that would bury the cause.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("mailflow.store")

REPORT_EVERY = 5.0  # seconds between the lines of one outage


class StoreHealth:
    def __init__(self, on_error: str, every: float = REPORT_EVERY,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.on_error = on_error
        self.every = every
        self.clock = clock
        self._lock = threading.Lock()
        self._down_since: float | None = None  # read without the lock on the hot path
        self._failed = 0
        self._reported = 0.0

    @property
    def down(self) -> bool:
        return self._down_since is not None

    def failed(self, error: object) -> None:
        """A store call failed (its StoreError, in words)."""
        now = self.clock()
        with self._lock:
            if self._down_since is None:
                self._down_since, self._failed, self._reported = now, 0, float("-inf")
            self._failed += 1
            if now - self._reported < self.every:
                return
            self._reported = now
            since, failed = now - self._down_since, self._failed
        log.warning("store unavailable for %d s: %d call%s failed, applying on_error=%s; last error: %s",
                    since, failed, "" if failed == 1 else "s", self.on_error, error)

    def succeeded(self) -> None:
        """A store call answered: ends an outage, with one line."""
        if self._down_since is None:  # the common case: no lock, no clock
            return
        with self._lock:
            if self._down_since is None:
                return
            since, failed = self.clock() - self._down_since, self._failed
            self._down_since = None
        log.warning("store answering again after %d s; %d call%s failed meanwhile",
                    since, failed, "" if failed == 1 else "s")
