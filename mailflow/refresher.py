"""A background refresh of data the milter reads from memory (owned domains, grants).

The first `start()` (from a milter callback, so never in a process that only builds an Engine)
starts one daemon thread that calls `refresh()` every `seconds` until `stop()` or until its owner
is gone: the thread holds only a weak reference between calls, so a dropped Engine is collected.
"""

from __future__ import annotations

import threading
import weakref
from typing import Protocol


class Refreshable(Protocol):
    def refresh(self) -> None: ...


class Refresher:
    def __init__(self, owner: Refreshable, seconds: float, name: str) -> None:
        self._owner = weakref.ref(owner)
        self._seconds = seconds
        self._name = name
        self.started = False  # read unlocked on the hot path: set once, never cleared
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def start(self) -> None:
        with self._lock:
            if self.started:
                return
            self.started = True
        threading.Thread(target=_refresh_every, name=self._name, daemon=True,
                         args=(self._owner, self._seconds, self._stop)).start()

    def stop(self) -> None:
        self._stop.set()


def _refresh_every(owner: weakref.ref[Refreshable], seconds: float, stop: threading.Event) -> None:
    while not stop.wait(seconds):
        current = owner()
        if current is None:
            return
        current.refresh()
        del current  # no strong reference while waiting
