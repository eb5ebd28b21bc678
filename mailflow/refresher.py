"""A background refresh of data the milter reads from memory (owned domains, grants, standings).

The first `start()` (from a milter callback, so never in a process that only builds an Engine)
starts one daemon thread that calls `refresh()` every `seconds` until `stop()` or until its owner
is gone: the thread holds only a weak reference between calls, so a dropped Engine is collected.
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import Any, Protocol

from mailflow.store.base import Store, StoreError

log = logging.getLogger("mailflow")


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
                         args=(self._owner, self._seconds, self._stop, self._name)).start()

    def stop(self) -> None:
        self._stop.set()


def _refresh_every(owner: weakref.ref[Refreshable], seconds: float, stop: threading.Event, name: str) -> None:
    failing = ""  # the last failure logged: each new one once, not every few seconds
    while not stop.wait(seconds):
        current = owner()
        if current is None:
            return
        try:
            current.refresh()
            failing = ""
        except Exception as exc:  # noqa: BLE001 - one bad refresh (a value the store cannot decode) must
            # not end the thread: the milter would keep today's grants or standings until a restart
            if repr(exc) != failing:
                log.exception("%s: a refresh failed; the last data stays, tried again every %g s", name, seconds)
            failing = repr(exc)
        del current  # no strong reference while waiting


class StoreOverlay:
    """Data the hot path reads from memory, re-read from the store every refresh_ms (grants,
    reputation standings). A store fault keeps the last read, said once per outage. Subclasses
    read (`_read`, StoreError passes) and lay the result over (`_apply`, under the lock), and call
    `refresh()` at the end of their __init__: the first read, never inside a milter callback."""

    what = "data"  # as the log names it ("grants", "reputation standings")

    def __init__(self, store: Store, refresh_seconds: float, thread_name: str) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._failing = False
        self._refresher = Refresher(self, refresh_seconds, thread_name)

    def _started(self) -> None:
        """On the hot path, before each lookup: the first milter callback starts the refreshes."""
        if not self._refresher.started:
            self._refresher.start()

    def start(self) -> None:
        """Refresh from now on, before the first message (the milter worker calls it at start)."""
        self._refresher.start()

    def stop(self) -> None:
        self._refresher.stop()

    def refresh(self) -> None:
        with self._lock:
            try:
                stored = self._read()
            except StoreError as exc:  # said once per outage: this runs every refresh_ms
                if not self._failing:
                    log.warning("cannot refresh %s from the store, keeping the last ones: %s", self.what, exc)
                self._failing = True
                return
            if self._failing:
                log.warning("%s read from the store again", self.what)
                self._failing = False
            self._apply(stored)

    def _read(self) -> Any:
        raise NotImplementedError

    def _apply(self, stored: Any) -> None:
        raise NotImplementedError
