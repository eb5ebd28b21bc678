"""Following the master through Redis Sentinel (a redis+sentinel:// store URL).

Discovery asks each sentinel in turn (the one that answered last first), each within a short
timeout, for the master's address (`SENTINEL get-master-addr-by-name`), then asks that server
its `ROLE`: only a server that says "master" is used, so nothing is ever written to a replica
(a sentinel may still name a demoted master for a moment). In the same round trip the store's
epoch is read: a random id written once with SET NX. Another id than the one seen before means
the data is not the fleet's (an old master back empty, a flushed Redis): a store reset, one
WARNING line and `mailflow_store_resets_total`.

Once at start (bounded: every sentinel's timeout), then again after a store call fails
(`suspect`: connection refused or reset, timeout, READONLY) or when the sentinel asked every
WATCH_EVERY names another master (`watch`: a planned failover, where no call fails), at most once
per REDISCOVER_EVERY and always on a background thread, never a caller's. A new master is handed to `on_master`,
which points every connection at it and drops those to the old one.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlencode

import redis

from mailflow import metrics
from mailflow.store.base import StoreError
from mailflow.store.health import REPORT_EVERY
from mailflow.store.redis_errors import FAILURES, as_store_errors, describe
from mailflow.store.redis_pool import HotPool, read_replies
from mailflow.urls import REDIS_QUERY_KEYS, redact_url
from mailflow.urls_sentinel import SENTINEL_SCHEMES, SentinelURL, parse_sentinel_url

log = logging.getLogger("mailflow.store")

STORE_EPOCH_KEY = "mailflow:store:epoch"
REDISCOVER_EVERY = 0.5  # seconds between discoveries, at least: never a tight loop
WATCH_EVERY = 1.0  # seconds between asking a sentinel whether the master moved, while all is well
SENTINEL_TIMEOUT_MS = 500  # per sentinel, at most (the store's timeout_ms when shorter)
UNKNOWN = ("127.0.0.1", 1)  # where the clients point before any master is known: refused at once


class MasterFollower:
    def __init__(self, spec: SentinelURL, timeout_ms: int, connect: Callable[[str, int], Any],
                 on_master: Callable[[str, int], None]) -> None:
        """`connect(host, port)`: a redis-py connection to that server with the store's settings."""
        self.spec = spec
        self.master: tuple[str, int] | None = None
        self.epoch: str | None = None
        self.last_error = f"no master found yet for {spec.service!r}"
        self._connect, self._on_master, self._timeout_ms = connect, on_master, timeout_ms
        timeout = min(timeout_ms, SENTINEL_TIMEOUT_MS) / 1000
        # The sentinels speak TLS too with rediss+sentinel://, with the URL's ssl_* options (as
        # redis-py reads them from a rediss:// URL). No retry: the next call asks again.
        ssl = urlencode([(k, v) for k, v in spec.query if k.startswith("ssl_")]) if spec.tls else ""
        self._sentinels = [(f"sentinel {host}:{port}", redis.Redis.from_url(
            SentinelURL(spec.tls, (), "", query=()).master_url(host, port) + (f"?{ssl}" if ssl else ""),
            username=spec.sentinel_username, password=spec.sentinel_password, socket_timeout=timeout,
            socket_connect_timeout=timeout, retry=None, decode_responses=True)) for host, port in spec.sentinels]
        self._lock = threading.Lock()
        self._running = False
        self._last_try = float("-inf")
        self._logged_error, self._logged_at = "", float("-inf")
        self._stop = threading.Event()

    def _hide(self, text: str) -> str:
        for secret in (self.spec.password, self.spec.sentinel_password):
            if secret:
                text = text.replace(secret, "***")
        return text

    def discover(self) -> tuple[str, int]:
        """The current master, confirmed by its ROLE; StoreError naming why none was found."""
        errors, tried = [], set()
        for i, (where, sentinel) in enumerate(list(self._sentinels)):
            try:
                answer = sentinel.execute_command(  # type: ignore[no-untyped-call]
                    "SENTINEL", "get-master-addr-by-name", self.spec.service)
            except FAILURES as exc:
                errors.append(f"{where}: {self._sentinel_cause(exc)}")
                continue
            if not answer:
                errors.append(f"{where} knows no master named {self.spec.service!r}")
                continue
            try:
                address = (str(answer[0]), int(answer[1]))
            except (TypeError, ValueError, IndexError):
                errors.append(f"{where} gave an unreadable answer")
                continue
            if address in tried:  # asked already this round, with no better answer
                continue
            tried.add(address)
            problem = self._confirm(*address)
            if problem:
                errors.append(f"{where} names {address[0]}:{address[1]}, which {problem}")
                continue
            if i:  # ask the one that answered first next time
                self._sentinels.insert(0, self._sentinels.pop(i))
            return address
        raise StoreError(self._hide("redis: no master: " + "; ".join(errors)))

    def _sentinel_cause(self, exc: BaseException) -> str:
        text = str(exc)
        if getattr(exc, "status_code", None) == "NOAUTH" or "Authentication required" in text:
            return "the sentinel requires a password (sentinel_password= in the store URL)"
        if isinstance(exc, redis.AuthenticationError):
            if "without any password" in text or "no password is set" in text:
                return "sentinel_password given, the sentinel has none set"
            return "wrong sentinel password (sentinel_password= in the store URL)"
        return describe(exc, min(self._timeout_ms, SENTINEL_TIMEOUT_MS))

    def _confirm(self, host: str, port: int) -> str | None:
        """None if HOST:PORT is a master (then its epoch is read, written first if absent)."""
        conn = self._connect(host, port)
        try:
            conn.send_packed_command(conn.pack_commands([["ROLE"], ["SET", STORE_EPOCH_KEY, os.urandom(8).hex(), "NX"],
                                                        ["GET", STORE_EPOCH_KEY]]))
            replies = read_replies(conn, 3)  # READONLY to the SET of a replica: ROLE says why
        except FAILURES as exc:
            return f"cannot be used: {describe(exc, self._timeout_ms)}"
        finally:
            conn.disconnect()
        role = replies[0][0] if isinstance(replies[0], list) and replies[0] else replies[0]
        role = role.decode() if isinstance(role, bytes) else str(role)
        if role != "master":
            return f"is a {role[:60]}, not the master (ROLE)"
        epoch = replies[2].decode() if isinstance(replies[2], bytes) else replies[2]
        if not isinstance(epoch, str):  # not readable now (an error reply): compared next time
            return None
        if self.epoch is not None and epoch != self.epoch:
            metrics.RECORDER.store_reset()
            log.warning("store reset: the master %s:%d holds another data set than before (epoch %s, was %s): "
                        "counts, holds and lists start afresh", host, port, epoch, self.epoch)
        self.epoch = epoch
        return None

    def check(self) -> bool:
        """Discover now, on this thread; True if a master is known afterwards."""
        try:
            address = self.discover()
        except StoreError as exc:
            self.last_error, now = str(exc), time.monotonic()
            # A new cause is logged, at most every REPORT_EVERY (the outage itself: store/health).
            if self.last_error != self._logged_error and now - self._logged_at >= REPORT_EVERY:
                self._logged_error, self._logged_at = self.last_error, now
                log.warning("%s", self.last_error)
            return self.master is not None
        self._logged_error, self._logged_at = "", float("-inf")
        self._stop = threading.Event()
        if address != self.master:
            if self.master is not None:
                log.warning("store master for %r moved from %s:%d to %s:%d", self.spec.service,
                            *self.master, *address)
            self.master = address
            self._on_master(*address)
        return True

    def suspect(self) -> None:
        """A store call failed: rediscover in the background, unless one ran in the last REDISCOVER_EVERY."""
        now = time.monotonic()
        with self._lock:
            if self._running or now - self._last_try < REDISCOVER_EVERY:
                return
            self._running, self._last_try = True, now
        threading.Thread(target=self._background, name="mailflow-sentinel", daemon=True).start()

    def _background(self) -> None:
        try:
            self.check()
        finally:
            with self._lock:
                self._running = False
                self._last_try = time.monotonic()

    @contextmanager
    def errors(self, timeout_ms: int, password: str | None) -> Iterator[None]:
        """as_store_errors for an admin call, which no master known yet fails at once; a failure
        makes the follower look for the master again."""
        if self.master is None:
            self.suspect()
            raise StoreError(self.last_error)
        try:
            with as_store_errors(timeout_ms, password):
                yield
        except StoreError:
            self.suspect()
            raise

    def watch(self) -> None:
        """Ask a sentinel every WATCH_EVERY whether the master moved, on a background thread. A
        planned failover (SENTINEL FAILOVER) leaves the old master up and writable until Sentinel
        demotes it, which can take its 10 s INFO period: no error would tell the milter, and
        debits written there meanwhile would be lost."""
        threading.Thread(target=self._watch, name="mailflow-sentinel-watch", daemon=True).start()

    def _watch(self) -> None:
        while not self._stop.wait(WATCH_EVERY):
            where, sentinel = self._sentinels[0]
            try:
                answer = sentinel.execute_command(  # type: ignore[no-untyped-call]
                    "SENTINEL", "get-master-addr-by-name", self.spec.service)
                named = (str(answer[0]), int(answer[1])) if answer else None
            except (*FAILURES, TypeError, ValueError, IndexError):
                named = None
            if named != self.master:  # moved, or this sentinel is no help now: a full discovery
                self.suspect()

    def close(self) -> None:
        self._stop.set()
        for _, sentinel in self._sentinels:
            sentinel.close()


def retarget_pool(pool: Any, host: str, port: int) -> None:
    """Point a redis-py ConnectionPool at HOST:PORT: new connections and existing ones (dropped
    now, they reconnect there on their next use)."""
    with pool._lock:
        pool.connection_kwargs.update(host=host, port=port)
        if "orig_host_address" in pool.connection_kwargs:  # redis-py 6+: where a connection goes back to
            pool.connection_kwargs["orig_host_address"] = host
        for conn in (*pool._available_connections, *pool._in_use_connections):
            conn.host, conn.port = host, port
            if hasattr(conn, "orig_host_address"):
                conn.orig_host_address = host
    pool.disconnect()


def sentinel_spec(url: str) -> SentinelURL | None:
    """A redis+sentinel:// URL's parts; None for another URL. ValueError (the URL redacted) if malformed."""
    if url.partition("://")[0] not in SENTINEL_SCHEMES:
        return None
    parsed = parse_sentinel_url(url, REDIS_QUERY_KEYS)
    if isinstance(parsed, str):
        raise ValueError(f"{redact_url(url)!r}: {parsed}")
    return parsed


def follow(client: redis.Redis, hot_pool: HotPool, spec: SentinelURL, timeout_ms: int) -> MasterFollower:
    """A follower that points `client` (the admin calls) and `hot_pool` at the master, found once
    now (at most every sentinel's timeout): a store whose sentinels do not answer fails per call."""
    pool = client.connection_pool

    def connect(host: str, port: int) -> Any:
        return pool.connection_class(**{**pool.connection_kwargs, "host": host, "port": port})

    def on_master(host: str, port: int) -> None:
        hot_pool.retarget(host, port)
        retarget_pool(pool, host, port)

    follower = MasterFollower(spec, timeout_ms, connect, on_master)
    follower.check()
    follower.watch()
    return follower
