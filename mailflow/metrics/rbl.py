"""`mailflow rbl watch`'s own /metrics ([metrics] rbl_listen): what its last poll saw.

One process, so plain gauges read at scrape time from the last poll; the zone is a label (the
config names the zones), a watched IP never is: how many are listed per zone is the number to
alert on, and the alert or `mailflow rbl check` says which.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mailflow.metrics.host import bind
from mailflow.metrics.worker import Served
from mailflow.rbl.query import Poll


class RblCollector(Collector):
    def __init__(self) -> None:
        self.last: tuple[Poll, float] | None = None

    def collect(self) -> Iterator[Metric]:
        if self.last is None:
            return
        result, at = self.last
        listed = GaugeMetricFamily("mailflow_dnsbl_listed_ips", "Watched IPs a zone lists, at the last poll",
                                   labels=["zone"])
        blind = GaugeMetricFamily("mailflow_dnsbl_zone_blind",
                                  "1 when a zone cannot be trusted (its test entry not listed, or no answer)",
                                  labels=["zone"])
        for zone in result.zones:
            name = zone.zone.shown
            listed.add_metric([name], sum(1 for o in result.observations if o.zone.shown == name and o.status == "listed"))
            blind.add_metric([name], 1 if zone.blind else 0)
        yield listed
        yield blind
        yield GaugeMetricFamily("mailflow_dnsbl_unwatched_ips", "Watched IPs no configured zone can check",
                                value=len(result.unwatched))
        yield GaugeMetricFamily("mailflow_dnsbl_last_poll_timestamp_seconds", "When the last poll ended", value=at)
        yield GaugeMetricFamily("mailflow_dnsbl_poll_seconds", "How long the last poll took", value=result.seconds)


class RblMetrics:
    def __init__(self, address: tuple[str, int]) -> None:
        self.collector = RblCollector()
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self.collector)
        self.served = Served(bind(address), registry, None)

    def polled(self, result: Poll) -> None:
        self.collector.last = (result, time.time())

    def close(self) -> None:
        self.served.close()


@contextmanager
def served_rbl_metrics(address: tuple[str, int] | None) -> Iterator[Callable[[Poll], None] | None]:
    """What the watcher calls after each poll while /metrics is served; None when rbl_listen is unset."""
    if address is None:
        yield None
        return
    served = RblMetrics(address)
    try:
        yield served.polled
    finally:
        served.close()
