"""The Cluster store's admin client, connected when first needed: a Cluster that is down when a
milter starts fails calls (the on_error policy decides, as for one Redis), not the start.

redis-py's RedisCluster reads the slot map in its constructor and fails there if no node
answers. LazyCluster stands in for it: every attribute is the real client's, made on first use,
and tried again at most every RETRY_EVERY (a call in between fails at once, naming the cause).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from redis._parsers import Encoder
from redis.commands.core import Script
from redis.exceptions import RedisClusterException

from mailflow.store.base import StoreError

RETRY_EVERY = 1.0  # seconds between two attempts to reach the Cluster


class ClusterUnreachable(StoreError, redis.ConnectionError):
    """No node gave the slot map: a StoreError to the store's callers, a connection error to
    redis-py's users (the replica's refresh, as_store_errors)."""


class LazyCluster:
    def __init__(self, connect: Callable[[], Any], describe: Callable[[BaseException], str],
                 decode: bool = True) -> None:
        self._connect, self._describe = connect, describe
        self._client: Any = None
        self._lock = threading.Lock()
        self._last_try = float("-inf")
        self._error = "redis: the Cluster was not reached yet"
        self._encoder = Encoder("utf-8", "strict", decode)  # type: ignore[no-untyped-call]

    def reach(self) -> Any:
        """The RedisCluster client (ClusterUnreachable if no node answers now)."""
        client = self._client
        if client is not None:
            return client
        if not self._lock.acquire(blocking=False):  # another call is trying now
            raise ClusterUnreachable(self._error)
        try:
            if self._client is None:
                if time.monotonic() - self._last_try < RETRY_EVERY:
                    raise ClusterUnreachable(self._error)
                self._last_try = time.monotonic()
                try:
                    self._client = self._connect()
                except (RedisClusterException, redis.RedisError, OSError) as exc:
                    self._error = self._describe(exc)
                    raise ClusterUnreachable(self._error) from exc
            return self._client
        finally:
            self._lock.release()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.reach(), name)

    # Scripts are made before the Cluster is reached: their SHA needs only the encoder.
    def get_encoder(self) -> Encoder:
        return self._encoder

    def register_script(self, script: str) -> Script:
        return Script(self, script)  # type: ignore[arg-type]  # run through this stand-in

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
