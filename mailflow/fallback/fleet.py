"""Learning the fleet size while the store is up: every milter host writes a heartbeat into one
hash (field: the host and its fallback file, value: when) from a background thread, and counts
the fields written lately. No hot-path round trip. All workers of a host write the same field,
so a host counts once; two milters on one host with their own fallback files count twice (they
keep separate local buckets, so they are two shares).

The count is kept in the fallback file too, so a milter restarted during an outage still knows it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable

from mailflow.store.base import StoreError
from mailflow.store.redis import RedisStore

log = logging.getLogger("mailflow.store")

FLEET_KEY = "mailflow:fleet"
BEAT_EVERY = 5.0  # seconds between heartbeats
ALIVE_FOR = 3 * BEAT_EVERY  # a host not heard of for this long has left the fleet


def member_name(fallback_path: str) -> str:
    return f"{socket.gethostname()}:{os.path.realpath(fallback_path)}"


def beat(store: RedisStore, member: str, now: float, alive_for: float = ALIVE_FOR) -> int:
    """Write this host's heartbeat, forget long-dead hosts; the live hosts counted (StoreError)."""
    with store._errors():
        pipe = store.client.pipeline(transaction=False)
        pipe.hset(FLEET_KEY, member, repr(now))
        pipe.hgetall(FLEET_KEY)
        _, beats = pipe.execute()
        stamps = {str(name): float(value) for name, value in beats.items()}
        dead = [name for name, stamp in stamps.items() if stamp < now - 10 * alive_for]
        if dead:
            store.client.hdel(FLEET_KEY, *dead)
    return sum(1 for stamp in stamps.values() if stamp >= now - alive_for)


class Heartbeat:
    """Beats every `every` seconds until stopped; `learned(n)` is called with each count."""

    def __init__(self, store: RedisStore, member: str, learned: Callable[[int], None],
                 every: float = BEAT_EVERY) -> None:
        self.store, self.member, self.learned, self.every = store, member, learned, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleet-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                self.learned(beat(self.store, self.member, time.time(), 3 * self.every))
            except StoreError:
                pass  # an outage: the local fallback says so; the last count stands
            if self._stop.wait(self.every):
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=2)
