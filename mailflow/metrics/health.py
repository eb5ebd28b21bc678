"""What /health answers: is the store reachable, the Redis replica fresh, which config runs.

critical (HTTP 503): the store does not answer a ping, or the milter's calls fail right now (the
last one failed, less than FAILING_NOW seconds ago: a milter that has had no mail since an
outage ended answers pings again and is not critical for ever on a failure of long ago).
warning (HTTP 200): the Redis suppression replica is stale (every RCPT asks Redis), or a store
call failed in the last RECENT_ERROR seconds. ok (HTTP 200): none of these.
The ping runs in a thread of its own, bounded by the store's timeout plus a margin, and its
answer is reused for PING_REUSE seconds: a burst of health checks costs the store one ping, and
a hung store never hangs the HTTP thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from mailflow.store.base import Store, StoreError
from mailflow.store.health import StoreHealth

PING_REUSE = 1.0
RECENT_ERROR = 300.0
FAILING_NOW = 30.0
STATES = ("ok", "warning", "critical")


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Health:
    def __init__(self, store: Store, store_health: StoreHealth, timeout_ms: int, config_path: str | None,
                 generation: int, replica_age: Callable[[], float | None] | None = None,
                 replica_stale_after: float = 5.0) -> None:
        self.store, self.store_health = store, store_health
        self.ping_timeout = 2 * timeout_ms / 1000 + 0.5
        self.config_path, self.generation = config_path, generation
        self.loaded_at = time.time()
        self.replica_age, self.replica_stale_after = replica_age, replica_stale_after
        self._lock = threading.Lock()
        self._pinged = (float("-inf"), False, "not pinged yet")  # (monotonic, ok, why not)

    def store_up(self) -> tuple[bool, str]:
        """A ping's answer, at most PING_REUSE seconds old; a ping in flight: the last answer."""
        at, ok, why = self._pinged
        if time.monotonic() - at < PING_REUSE or not self._lock.acquire(blocking=False):
            return ok, why
        try:
            answer: list[tuple[bool, str]] = [(False, f"no answer to a ping within {self.ping_timeout:g} s")]
            done = threading.Event()

            def ping() -> None:
                try:
                    self.store.ping()
                    answer[0] = (True, "")
                except StoreError as exc:
                    answer[0] = (False, str(exc)[:300])
                finally:
                    done.set()

            threading.Thread(target=ping, name="mailflow-health-ping", daemon=True).start()
            done.wait(self.ping_timeout)
            ok, why = answer[0]
            self._pinged = (time.monotonic(), ok, why)
            return ok, why
        finally:
            self._lock.release()

    def report(self) -> dict[str, Any]:
        now = time.time()
        problems: list[tuple[str, str]] = []  # (state, text)
        up, why = self.store_up()
        last = self.store_health.last_error
        failing = self.store_health.down and (last is None or now - last[1] < FAILING_NOW)
        local = self.store_health.local_mode  # on_error = "local": degraded, the policy still holds
        if local is not None:
            problems.append(("warning", f"enforcing locally (on_error = \"local\"): {local}"))
        if not up:
            problems.append(("warning" if local is not None else "critical", f"store unreachable: {why}"))
        elif failing and local is None:
            problems.append(("critical", "store calls are failing (on_error applies)"))
        if last is not None and now - last[1] < RECENT_ERROR and up and not failing:
            problems.append(("warning", f"a store call failed {int(now - last[1])} s ago: {last[0]}"))
        replica: dict[str, Any] | None = None
        if self.replica_age is not None:  # None: not started (no RCPT looked up yet); inf: never refreshed
            age = self.replica_age()
            fresh = age is None or age <= self.replica_stale_after
            replica = {"started": age is not None, "fresh": fresh,
                       "age_seconds": None if age is None or age == float("inf") else round(age, 3)}
            if not fresh:
                problems.append(("warning", "suppression replica " + (
                    "not built yet" if age == float("inf") else f"stale ({age:.0f} s since its last refresh)")
                    + ": every RCPT asks Redis"))
        state = max((STATES.index(level) for level, _ in problems), default=0)
        return {
            "status": STATES[state],
            "problems": [text for _, text in problems],
            "store": {"reachable": up, "failing_now": failing,
                      "last_error": None if last is None else {"text": last[0], "at": iso(last[1]),
                                                               "age_seconds": int(now - last[1])}},
            "replica": replica,
            "config": {"path": self.config_path, "generation": self.generation, "loaded_at": iso(self.loaded_at),
                       "age_seconds": int(now - self.loaded_at)},
        }
