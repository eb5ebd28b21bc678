"""The hot path's connections: raw redis-py connections in a bounded pool that cannot leak.

Every message makes two calls (RCPT lookup, EOM debit). redis-py's client layers (pool checkout
with a readiness select, retry wrapper, Script objects) cost about as much CPU as the rest of the
milter, so these calls speak on plain connections kept here.

A fixed number of slots: a caller takes an idle connection, else makes one while fewer than
`size` exist, else waits briefly when all are out (MAX_WAIT: a healthy Redis frees one within a millisecond,
and the wait adds to the call's own timeout), and always puts it back, disconnected after a failure. However many calls fail, over however many outages, no slot is ever lost, at most
`size` connections exist, and a disconnected one reconnects on its next use: the first call after
Redis is back succeeds.
"""

from __future__ import annotations

import queue
import select
import socket
import struct
import time
from typing import Any

import redis

from mailflow.store.base import StoreError

SIZE = 64  # connections at most; a call holds one for one round trip, so few are ever open
# A connection unused this long is checked for a close by Redis (restart, idle timeout) before
# it is used: a cheap select, skipped while connections are in steady use.
RECHECK_IDLE = 0.05
MAX_WAIT_MS = 100  # for a free connection, at most; and at most half the store's timeout


class _KernelTimeouts:
    """Hot-path connections: the timeout lives in the kernel (SO_RCVTIMEO/SO_SNDTIMEO), the
    Python socket is blocking. With a Python-level timeout every send and receive is a poll()
    plus the call, each releasing and re-taking the GIL, which under libmilter's many threads
    costs more CPU than the Redis call itself. A timed-out call raises OSError (EAGAIN), which
    redis-py reports as a ConnectionError whose context is a BlockingIOError (redis_errors)."""

    socket_timeout: float | None

    def _connect(self) -> socket.socket:
        sock: socket.socket = super()._connect()  # type: ignore[misc]
        timeout = self.socket_timeout or 0.0
        seconds = int(timeout)
        packed = struct.pack("ll", seconds, int((timeout - seconds) * 1_000_000))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, packed)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, packed)
        sock.settimeout(None)
        return sock


class HotPool:
    def __init__(self, client: redis.Redis, timeout_ms: int, size: int = SIZE) -> None:
        """Connections like the client's, with kernel-level timeouts where the transport allows
        (TLS keeps Python's own: an SSL socket must not see a bare EAGAIN)."""
        pool = client.connection_pool
        kind = pool.connection_class
        if kind in (redis.Connection, redis.UnixDomainSocketConnection):
            kind = type(f"KernelTimeout{kind.__name__}", (_KernelTimeouts, kind), {})
        self._kind, self._kwargs = kind, dict(pool.connection_kwargs)
        self.size = size
        self._wait_ms = min(MAX_WAIT_MS, timeout_ms // 2)
        # Connections made, idle: (connection, when it was given back). A made connection is never
        # dropped (a broken one is disconnected and reconnects on its next use), so `_unmade`,
        # one token per connection still to make, and `_idle` together always hold `size` slots.
        self._idle: queue.SimpleQueue[tuple[Any, float]] = queue.SimpleQueue()
        self._unmade: queue.SimpleQueue[None] = queue.SimpleQueue()
        for _ in range(size):
            self._unmade.put(None)

    def take(self) -> Any:
        """A connection for one round trip; give it back with `give`, whatever happens."""
        try:
            conn, since = self._idle.get_nowait()
        except queue.Empty:
            try:
                self._unmade.get_nowait()
            except queue.Empty:
                pass
            else:
                return self._make()
            try:
                conn, since = self._idle.get(timeout=self._wait_ms / 1000)
            except queue.Empty:
                raise StoreError(f"redis: all {self.size} connections busy for {self._wait_ms} ms") from None
        if conn._sock is not None and time.monotonic() - since > RECHECK_IDLE:
            try:
                closed = bool(select.select([conn._sock], [], [], 0)[0])  # EOF: Redis closed it
            except (OSError, ValueError):
                closed = True
            if closed:
                conn.disconnect()
        return conn

    def _make(self) -> Any:
        try:
            return self._kind(**self._kwargs)  # connects on first use
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
            self._idle.put((conn, time.monotonic()))

    def _drain(self) -> list[tuple[Any, float]]:
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
        return sum(1 for conn, _ in slots if conn._sock is not None)

    def close(self) -> None:
        """Disconnect the idle connections (a later call reconnects)."""
        for conn, since in self._drain():
            conn.disconnect()
            self._idle.put((conn, since))
