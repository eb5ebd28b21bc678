"""Receivers' blocks as metrics, like the DNSBL watcher's: read at scrape time from the follower's
ReceiverWatch, on the follower's own /metrics (metrics/feedback.py). The outbound IP is the only
label (the config bounds it: [feedback] outbound_ips, the one [rbl] ip, or "unknown"); receiving
domains are client-chosen, so never a label, and accounts never are: the alert names them."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mailflow.feedback.receivers import ReceiverWatch


class ReceiverCollector(Collector):
    def __init__(self, watch: ReceiverWatch) -> None:
        self.watch = watch

    def collect(self) -> Iterator[Metric]:
        refusals = CounterMetricFamily("mailflow_receiver_blocks",
                                       "Refusals naming reputation or blocking, per outbound IP", labels=["ip"])
        for ip, n in sorted(dict(self.watch.refusals).items()):  # a copy: the follower's thread adds
            refusals.add_metric([ip], n)
        yield refusals
        blocked = GaugeMetricFamily("mailflow_receiver_blocked_domains",
                                    "Receiving domains refusing an outbound IP (a burst, not yet lifted)",
                                    labels=["ip"])
        for ip, n in sorted(dict(self.watch.blocked_by_ip).items()):
            blocked.add_metric([ip], n)
        yield blocked

