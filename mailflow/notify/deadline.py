"""A deadline for one whole network exchange (a webhook POST, an SMTP submission).

Socket timeouts bound each read, not the exchange: a peer that trickles its answer a byte at a
time holds the caller for as long as it likes, and the notifier has one thread. A Deadline
shuts its sockets down when its time is up, so the blocked read returns at once and the caller
fails with an OSError of its own; `cut_off` then says why.
"""

from __future__ import annotations

import socket
import threading
from types import TracebackType


class Deadline:
    def __init__(self, seconds: float, name: str = "mailflow-deadline") -> None:
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self.cut_off = False
        self._timer = threading.Timer(seconds, self.cut)
        self._timer.name, self._timer.daemon = name, True

    def __enter__(self) -> Deadline:
        self._timer.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._timer.cancel()

    def watch(self, sock: socket.socket) -> socket.socket:
        """A socket of the exchange (just connected): shut down at the deadline, or now if past."""
        with self._lock:
            self._sockets.append(sock)
            if self.cut_off:
                _shut(sock)
        return sock

    def cut(self) -> None:
        with self._lock:
            self.cut_off = True
            for sock in self._sockets:
                _shut(sock)


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)  # the blocked read returns at once; its owner closes it
    except OSError:
        pass
