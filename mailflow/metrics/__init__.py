"""Prometheus metrics and /health: the one seam the engine, adapter and stores count through.

`RECORDER` does nothing until a milter worker with `[metrics] listen` set calls
`mailflow.metrics.worker.start` (which replaces it with a PromRecorder): callers look it up at
each call (`metrics.RECORDER.store_latency(...)`), so with metrics off the cost is one attribute
lookup and an empty call, and nothing here imports prometheus_client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mailflow.model import Decision, Message


class Recorder:
    """What the hot path reports; this base class ignores it all (metrics off)."""

    def decision(self, stage: str, decided: Decision, enforced: Decision, message: Message) -> None:
        """One decision logged by the engine (every end of message, every refusal)."""

    def store_latency(self, seconds: float) -> None:
        """One store round trip (Redis) or call (SQLite), failed or not."""

    def store_error(self) -> None:
        """A store call failed (on_error applied)."""

    def store_reset(self) -> None:
        """The store's data set changed under the milter (a new epoch: see store/redis_sentinel)."""

    def store_wait_short(self) -> None:
        """A debit acknowledged by fewer replicas than [store] wait_replicas (store/redis_wait)."""

    def policy_time(self, seconds: float) -> None:
        """The time mailflow spent on one message, MAIL to end of message."""

    def fallback_decision(self) -> None:
        """A RCPT lookup or debit answered by the local fallback (on_error = "local")."""

    def fallback_reconciled(self, accounts: int) -> None:
        """Accounts whose local spend was added to the store's buckets."""


RECORDER = Recorder()
