"""A deadline for one whole network exchange (a webhook POST, an SMTP submission, a /health GET).

Socket timeouts bound each read, not the exchange: a peer that trickles its answer a byte at a
time holds the caller for as long as it likes, and the notifier has one thread. A Deadline
shuts its sockets down when its time is up, so the blocked read returns at once and the caller
fails with an OSError of its own; `cut_off` then says why.
"""

from __future__ import annotations

import http.client
import socket
import threading
import urllib.request
from types import TracebackType

Handler = urllib.request.BaseHandler | type[urllib.request.BaseHandler]


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

    def opener(self, *handlers: Handler) -> urllib.request.OpenerDirector:
        """A urllib opener whose HTTP(S) connections this deadline cuts."""
        return urllib.request.build_opener(*handlers, _Http(self), _Https(self))

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


def _watched(base: type[http.client.HTTPConnection], deadline: Deadline) -> type[http.client.HTTPConnection]:
    class Watched(base):  # type: ignore[valid-type,misc]  # a class made per attempt
        def connect(self) -> None:
            super().connect()
            deadline.watch(self.sock)

    return Watched


class _Http(urllib.request.HTTPHandler):
    def __init__(self, deadline: Deadline) -> None:
        super().__init__()
        self.deadline = deadline

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_watched(http.client.HTTPConnection, self.deadline), req)


class _Https(urllib.request.HTTPSHandler):
    def __init__(self, deadline: Deadline) -> None:
        super().__init__()
        self.deadline = deadline

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_watched(http.client.HTTPSConnection, self.deadline), req)
