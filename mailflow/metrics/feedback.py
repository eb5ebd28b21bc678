"""`mailflow feedback follow`'s own /metrics ([metrics] feedback_listen): what the follower read
and applied, how far behind the log it is, and the ladder's moves it made.

One process, so the values are read at scrape time from the Follower (metrics/rbl.py's way): the
tally's totals from the snapshot the follower's loop takes after each poll (`Follower.seen`, never
the tally it is changing), the rest from plain numbers it keeps. The count field is the only
label (feedback/model.py's FIELDS): never an account, address or domain.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mailflow.feedback.follow import Follower
from mailflow.feedback.model import COMPLAINT, FIELDS
from mailflow.metrics.host import bind
from mailflow.metrics.reputation import MovesCollector
from mailflow.metrics.worker import Served

LOG_FIELDS = tuple(name for name in FIELDS if name != COMPLAINT)  # complaints come from ARF reports, not the log


def lag_bytes(follower: Follower) -> int | None:
    """Bytes at the followed path not read yet: its size minus the read offset, or its whole size
    once it is another file (rotated; the rest of the old one, read within a poll, is not added).
    None before the follower has a file open. Only the path is stat'ed: the follower's descriptor
    belongs to its thread, which may close it at any moment."""
    reading = follower.file
    if reading is None:
        return None
    inode, offset = reading.inode, reading.offset
    try:
        now = os.stat(follower.path)
    except OSError:  # renamed away, not created again yet
        return 0
    if now.st_ino != inode or now.st_size < offset:  # rotated by rename, or truncated (copytruncate)
        return now.st_size
    return now.st_size - offset


class FeedbackCollector(Collector):
    def __init__(self, follower: Follower) -> None:
        self.follower = follower

    def collect(self) -> Iterator[Metric]:
        follower = self.follower
        seen = follower.seen  # one dict, replaced whole by the follower's loop
        yield CounterMetricFamily("mailflow_feedback_lines", "Log lines read (not those read again only to learn "
                                  "which account each queue id is)", value=seen.get("lines", 0))
        outcomes = CounterMetricFamily("mailflow_feedback_outcomes",
                                       "Delivery outcomes counted against accounts and applied to the store, by "
                                       "count field (an unknown recipient counts in bounce_5.1 too)", labels=["field"])
        for name in LOG_FIELDS:
            outcomes.add_metric([name], follower.applied.get(name, 0))
        yield outcomes
        yield CounterMetricFamily("mailflow_feedback_unattributed", "Delivery attempts read whose origin the log "
                                  "did not show (no account charged)", value=seen.get("unattributed", 0))
        yield CounterMetricFamily("mailflow_feedback_batches", "Batches applied to the store", value=follower.batches)
        yield CounterMetricFamily("mailflow_feedback_store_errors", "Store faults met (the batch is kept and "
                                  "retried)", value=follower.store_errors)
        yield GaugeMetricFamily("mailflow_feedback_last_batch_timestamp_seconds", "When the last batch was "
                                "applied (before the first: when the follower started)",
                                value=follower.last_batch or follower.started_at)
        lag = lag_bytes(follower)
        if lag is not None:
            yield GaugeMetricFamily("mailflow_feedback_lag_bytes", "Bytes of the followed log not read yet",
                                    value=lag)


@contextmanager
def served_feedback_metrics(address: tuple[str, int] | None, follower: Follower,
                            collectors: Iterable[Collector] = ()) -> Iterator[None]:
    """Serve /metrics while the follower runs; nothing when feedback_listen is unset. `collectors`:
    what else the follower's process learns (receivers' blocks) on the same listener."""
    if address is None:
        yield
        return
    registry = CollectorRegistry(auto_describe=False)
    for collector in (FeedbackCollector(follower), MovesCollector(), *collectors):
        registry.register(collector)
    served = Served(bind(address), registry, None)
    try:
        yield
    finally:
        served.close()
