"""The hot path's connections: raw redis-py connections in a bounded pool that cannot leak.

Every message makes two calls (RCPT lookup, EOM debit). redis-py's client layers (pool checkout
with a readiness select, retry wrapper, Script objects) cost about as much CPU as the rest of the
milter, so these calls speak on plain connections kept here.

A fixed number of slots: a caller takes an idle connection (looked at for a close by Redis on
every reuse: one poll), else makes one while fewer than
`size` exist, else waits briefly when all are out (MAX_WAIT: a healthy Redis frees one within a millisecond;
the wait counts against the call's own timeout, except over TLS), and always puts it back, disconnected after a failure. However many calls fail, over however many outages, no slot is ever lost, at most
`size` connections exist, and a disconnected one reconnects on its next use: the first call after
Redis is back succeeds.
"""

from __future__ import annotations

import errno
import queue
import select
import socket
import struct
import time
from typing import Any

import redis

from mailflow.store.base import StoreError

SIZE = 64  # connections at most; a call holds one for one round trip, so few are ever open
MAX_WAIT_MS = 100  # for a free connection, at most; and at most half the store's timeout
DEADLINE_SLACK = 0.01  # a read's timeout is lowered to what remains once it is this much shorter


class DeadlineSocket(socket.socket):
    """A socket whose reply must arrive within `budget` seconds of the request, however it
    trickles in: each read waits only what remains (a peer sending one byte per read timeout
    would otherwise hold a call for seconds). The cost while Redis answers promptly: two clock
    reads (vDSO, no syscall) per call; the timeout is set (one setsockopt) only on a second read
    of a slow reply, and set back on the next request."""

    __slots__ = ("budget", "kernel", "poller", "received", "_deadline", "_timeout")

    budget: float
    kernel: bool  # the timeout lives in SO_RCVTIMEO (hot path), else in Python's settimeout
    _deadline: float
    _timeout: float  # the read timeout in force now
    poller: select.poll  # this socket alone, for a look at a close before reuse (cheaper than select)
    received: bool  # a byte (or EOF) came since the last request: see redis._exchange

    @classmethod
    def adopt(cls, sock: socket.socket, budget: float, kernel: bool) -> DeadlineSocket:
        """`sock`'s descriptor as a DeadlineSocket (`sock` is left detached)."""
        blocking_timeout = sock.gettimeout()
        new = cls(sock.family, sock.type, sock.proto, fileno=sock.detach())
        new.settimeout(blocking_timeout)
        new.budget, new.kernel, new._deadline, new._timeout = budget, kernel, float("inf"), budget
        new.received = False
        new.poller = select.poll()
        new.poller.register(new, select.POLLIN)
        return new

    def _set_timeout(self, seconds: float) -> None:
        self._timeout = seconds
        if self.kernel:
            self.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(seconds))
        else:
            self.settimeout(seconds)

    def sendall(self, data: Any, flags: int = 0) -> None:
        self._deadline = time.monotonic() + self.budget
        self.received = False
        if self._timeout != self.budget:
            self._set_timeout(self.budget)
        super().sendall(data, flags)

    def shorten(self, seconds: float) -> None:
        """The reply to the request just sent is due `seconds` sooner (spent waiting for this connection)."""
        self._deadline -= seconds

    def _before_read(self) -> None:
        remaining = self._deadline - time.monotonic()
        if remaining < self._timeout - DEADLINE_SLACK:
            if remaining <= 0:  # as the timeout itself reports it (redis_errors: "no answer within")
                if self.kernel:
                    raise BlockingIOError(errno.EAGAIN, "no reply within the call's deadline")
                raise socket.timeout("timed out")
            self._set_timeout(remaining)

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        self._before_read()
        count = super().recv_into(buffer, nbytes, flags)
        self.received = True
        return count

    def recv(self, bufsize: int, flags: int = 0) -> bytes:  # redis-py's parser without hiredis
        if flags:  # a MSG_PEEK for a close is no read of a reply
            return super().recv(bufsize, flags)
        self._before_read()
        data = super().recv(bufsize, flags)
        self.received = True
        return data


def read_replies(conn: Any, count: int) -> list[Any]:
    """The next `count` replies on `conn`, an error reply as a ResponseError in its place (the
    stream stays in step: every reply is read whatever one of them says)."""
    replies: list[Any] = []
    for _ in range(count):
        try:
            replies.append(conn.read_response())
        except redis.ResponseError as exc:
            replies.append(exc)
    return replies


def _timeval(seconds: float) -> bytes:
    """A struct timeval for SO_RCVTIMEO/SO_SNDTIMEO; never zero, which would mean no timeout."""
    micros = max(1, round(seconds * 1_000_000))
    return struct.pack("ll", micros // 1_000_000, micros % 1_000_000)


class _Deadlines:
    """A connection whose socket is a DeadlineSocket (budget: the connection's socket_timeout)."""

    socket_timeout: float | None
    kernel_timeouts = False

    def _connect(self) -> socket.socket:
        sock: socket.socket = super()._connect()  # type: ignore[misc]
        timeout = self.socket_timeout
        if not timeout:
            return sock
        if self.kernel_timeouts:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(timeout))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(timeout))
            sock.settimeout(None)
        return DeadlineSocket.adopt(sock, timeout, self.kernel_timeouts)


class _KernelTimeouts(_Deadlines):
    """Hot-path connections: the timeout lives in the kernel (SO_RCVTIMEO/SO_SNDTIMEO), the
    Python socket is blocking. With a Python-level timeout every send and receive is a poll()
    plus the call, each releasing and re-taking the GIL, which under libmilter's many threads
    costs more CPU than the Redis call itself. A timed-out call raises OSError (EAGAIN), which
    redis-py reports as a ConnectionError whose context is a BlockingIOError (redis_errors)."""

    kernel_timeouts = True
    waited = 0.0  # seconds the caller waited for this connection (HotPool.take): due from the reply's budget
    _sock: socket.socket | None

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        super().send_packed_command(command, check_health)  # type: ignore[misc]
        if self.waited:
            if isinstance(self._sock, DeadlineSocket):
                self._sock.shorten(self.waited)
            self.waited = 0.0


_PLAIN = (redis.Connection, redis.UnixDomainSocketConnection)  # TLS keeps redis-py's own timeouts


def _with(mixin: type, kind: type) -> type:
    return type(f"{mixin.__name__.strip('_')}{kind.__name__}", (mixin, kind), {}) if kind in _PLAIN else kind


def admin_deadlines(client: redis.Redis) -> None:
    """The client's own (admin and background) calls get the same whole-reply deadline."""
    client.connection_pool.connection_class = _with(_Deadlines, client.connection_pool.connection_class)


class HotPool:
    def __init__(self, client: redis.Redis, timeout_ms: int, size: int = SIZE) -> None:
        """Connections like the client's, with kernel-level timeouts where the transport allows
        (TLS keeps Python's own: an SSL socket must not see a bare EAGAIN)."""
        pool = client.connection_pool
        self._kind, self._kwargs = _with(_KernelTimeouts, pool.connection_class), dict(pool.connection_kwargs)
        self.size = size
        self._target: tuple[str, int] | None = None  # (host, port) once retarget() was called (Sentinel)
        self._wait_ms = min(MAX_WAIT_MS, timeout_ms // 2)
        # Connections made, idle. A made connection is never
        # dropped (a broken one is disconnected and reconnects on its next use), so `_unmade`,
        # one token per connection still to make, and `_idle` together always hold `size` slots.
        self._idle: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._unmade: queue.SimpleQueue[None] = queue.SimpleQueue()
        for _ in range(size):
            self._unmade.put(None)

    def take(self) -> Any:
        """A connection for one round trip; give it back with `give`, whatever happens."""
        try:
            conn = self._idle.get_nowait()
        except queue.Empty:
            try:
                self._unmade.get_nowait()
            except queue.Empty:
                pass
            else:
                return self._make()
            began = time.monotonic()
            try:
                conn = self._idle.get(timeout=self._wait_ms / 1000)
            except queue.Empty:
                raise StoreError(f"redis: all {self.size} connections busy for {self._wait_ms} ms") from None
            conn.waited = time.monotonic() - began
        if conn.target is not self._target:  # made before the master moved: reconnect to the new one
            self._point(conn)
        sock = conn._sock
        if sock is not None:
            # Readable while idle: Redis closed it (restart, idle timeout, CLIENT KILL) or, never
            # expected, stray bytes. Either way not for this call: it reconnects. On every reuse:
            # a connection killed a millisecond ago must not fail a message.
            poller = getattr(sock, "poller", None)
            try:
                closed = bool(poller.poll(0) if poller is not None else select.select([sock], [], [], 0)[0])
            except (OSError, ValueError):
                closed = True
            if closed:
                conn.disconnect()
        return conn

    def _make(self) -> Any:
        try:
            target = self._target  # read before the kwargs: retarget() writes them in the other order
            conn = self._kind(**self._kwargs)  # connects on first use
            conn.target = target
            return conn
        except BaseException:
            self._unmade.put(None)  # the slot stays
            raise

    def give(self, conn: Any, broken: bool = False) -> None:
        """Back to the pool; a broken one is disconnected first (a half-read reply must never
        reach the next caller) and reconnects on its next use."""
        try:
            if broken:
                conn.disconnect()
        finally:
            self._idle.put(conn)

    def _drain(self) -> list[Any]:
        slots = []
        try:
            while True:
                slots.append(self._idle.get_nowait())
        except queue.Empty:
            return slots

    def open_connections(self) -> int:
        """How many idle connections have a socket now (for tests and diagnostics)."""
        slots = self._drain()
        for slot in slots:
            self._idle.put(slot)
        return sum(1 for conn in slots if conn._sock is not None)

    def retarget(self, host: str, port: int) -> None:
        """Talk to HOST:PORT from now on (the master moved): idle connections to the old one are
        dropped now, those in use when they are next taken."""
        kwargs = {**self._kwargs, "host": host, "port": port}
        if "orig_host_address" in kwargs:  # redis-py 6+: where a connection goes back to
            kwargs["orig_host_address"] = host
        self._kwargs = kwargs  # before the target: a connection made in between is re-pointed when next taken
        self._target = (host, port)
        for conn in self._drain():
            self._point(conn)
            self._idle.put(conn)

    def _point(self, conn: Any) -> None:
        target = self._target
        conn.disconnect()
        if target is not None:
            conn.host, conn.port = target
            if hasattr(conn, "orig_host_address"):
                conn.orig_host_address = target[0]
        conn.target = target

    def close(self) -> None:
        """Disconnect the idle connections (a later call reconnects)."""
        for conn in self._drain():
            conn.disconnect()
            self._idle.put(conn)
