"""WAIT after a debit ([store] wait_replicas): a spend acknowledged by N replicas before the
milter answers, so a failover that promotes one of them cannot lose it.

The WAIT is pipelined right behind the debit's EVALSHA, in the same exchange (no extra round
trip); Redis answers it once N replicas have acknowledged the connection's writes, or after
`wait_timeout_ms` with how many did. Fewer than N does not undo the debit (it was applied on the
master, and refusing the message would not take it back): the debit stands, the shortfall is
counted (`mailflow_store_wait_short_total`) and logged at most once a minute. WAIT does not make
Redis strongly consistent: a replica that acknowledged may still not be the one Sentinel
promotes, and the master may lose its own copy (README, "Durability").
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from mailflow import metrics

log = logging.getLogger("mailflow.store")

LOG_EVERY = 60.0  # seconds between two log lines about short acknowledgements, at least


class ReplicaWait:
    def __init__(self, replicas: int, timeout_ms: int) -> None:
        if replicas < 1 or timeout_ms < 1:  # WAIT with timeout 0 blocks for ever
            raise ValueError("wait_replicas and wait_timeout_ms must be at least 1")
        self.replicas, self.timeout_ms = replicas, timeout_ms
        self.command: list[Any] = ["WAIT", replicas, timeout_ms]
        self._lock = threading.Lock()
        self._short = 0  # since the last log line
        self._logged_at = float("-inf")

    def acknowledged(self, reply: Any) -> None:
        """WAIT's reply (the replicas that acknowledged): a shortfall counted, and logged at most every LOG_EVERY."""
        acked = int(reply)
        if acked >= self.replicas:
            return
        metrics.RECORDER.store_wait_short()
        now = time.monotonic()
        with self._lock:
            self._short += 1
            if now - self._logged_at < LOG_EVERY:
                return
            short, self._short, self._logged_at = self._short, 0, now
        log.warning("store: %d debit(s) acknowledged by fewer replicas than wait_replicas = %d within %d ms "
                    "(last: %d); the debits stand, a failover now may lose them", short, self.replicas,
                    self.timeout_ms, acked)
