"""What the log says while the store fails: one line when an outage starts, one every few
seconds with a count while it lasts, one when the store answers again. Never a line (or a
traceback) per message: at hundreds of messages a second that would bury the cause.

A store failing only some of the time (a flapping link, connections killed now and then) is one
degraded period, not an outage per failure: lines stay at least `every` seconds apart, each
saying how many of the calls since the last line failed ("12 of 480 calls failed in the last
5 s"); the period ends once no call has failed for `every` seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from mailflow import metrics

log = logging.getLogger("mailflow.store")

REPORT_EVERY = 5.0  # seconds between the lines of one outage or degraded period


class StoreHealth:
    def __init__(self, on_error: str, every: float = REPORT_EVERY,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.on_error = on_error
        self.every = every
        self.clock = clock
        self._lock = threading.Lock()
        self._down_since: float | None = None  # the outage now: from a failure to the next success
        self._reported = False  # whether the outage now had its line
        self._outage_failed = 0
        self._watching = False  # a call failed in the last `every` s; read without the lock on the hot path
        self._failing_since = 0.0  # the start of the outage or degraded period being watched
        self._last_failure = float("-inf")
        self._last_line = float("-inf")
        self._window_start, self._window_failed, self._window_calls = 0.0, 0, 0  # since the last line
        self.last_error: tuple[str, float] | None = None  # its text and wall-clock time (/health)
        self.local_mode: str | None = None  # on_error = "local" enforcing locally: since when, how (/health)

    @property
    def down(self) -> bool:
        return self._down_since is not None

    def _window(self, now: float) -> str:
        """The calls since the last line, in words; starts the next window (under the lock)."""
        failed, calls, seconds = self._window_failed, self._window_calls, now - self._window_start
        self._last_line = self._window_start = now
        self._window_failed = self._window_calls = 0
        if failed == calls:
            return f"{failed} call{'' if failed == 1 else 's'} failed"
        return f"{failed} of {calls} calls failed in the last {int(seconds)} s"

    def failed(self, error: object) -> None:
        """A store call failed (its StoreError, in words)."""
        now = self.clock()
        metrics.RECORDER.store_error()
        with self._lock:
            self.last_error = (str(error)[:300], time.time())
            if not self._watching:
                self._watching, self._failing_since = True, now
                self._window_start, self._window_failed, self._window_calls = now, 0, 0
            if self._down_since is None:
                self._down_since, self._reported, self._outage_failed = now, False, 0
            self._outage_failed += 1
            self._window_failed += 1
            self._window_calls += 1
            self._last_failure = now
            if now - self._last_line < self.every:
                return
            self._reported = True
            since, counted = now - self._failing_since, self._window(now)
        log.warning("store unavailable for %d s: %s, applying on_error=%s; last error: %s",
                    since, counted, self.on_error, error)

    def succeeded(self) -> None:
        """A store call answered: ends an outage, with one line if it had one."""
        if not self._watching:  # the common case: no lock, no clock
            return
        now = self.clock()
        with self._lock:
            if not self._watching:
                return
            self._window_calls += 1
            down_since, self._down_since = self._down_since, None
            quiet = now - self._last_failure >= self.every
            self._watching = not quiet
            if down_since == self._failing_since and self._reported:  # an outage, not a flap of a degraded period
                self._window(now)
                message = (f"store answering again after {int(now - down_since)} s; {self._outage_failed} "
                           f"call{'' if self._outage_failed == 1 else 's'} failed meanwhile")
            elif quiet and self._window_failed:  # the degraded period's end: the count since the last line
                message = f"store answering again; {self._window(now)}"
            else:
                return
        log.warning("%s", message)
