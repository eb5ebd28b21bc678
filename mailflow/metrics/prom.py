"""What the hot path counts: plain numbers under one lock, read as Prometheus metric families.

A count is a dict or list update under a lock (well under a microsecond); prometheus-client's
Counter.inc and Histogram.observe cost 1-2 µs each here, some 8 µs per message for the four
calls a message makes. The families built at read time are prometheus-client's, and publish.py
copies them to the directory every worker's counts are summed from. Labels are only stage,
action, reason and outcome: never an account, address or IP (an account label would be a time
series per customer).
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from mailflow.metrics import Recorder
from mailflow.model import Decision, Message, Verdict

# Seconds. Few buckets: each is a value to copy, store and scrape.
STORE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
POLICY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5)
RATE_REASONS = ("ratelimit", "over_capacity")
STAGES = ("mail", "rcpt", "eom")
OUTCOMES = ("accepted", "refused", "removed")
MAX_DECISION_SERIES = 500  # reasons come from code and rule names; a bound all the same
DELIVERED = (Verdict.CONTINUE, Verdict.ACCEPT, Verdict.HOLD)

HELP = {
    "mailflow_decisions": "Policy decisions logged, by stage (mail, rcpt, eom), action and reason; in monitor mode "
                          "the action decided, not enforced",
    "mailflow_recipients": "Recipients by what the MTA was told: accepted (in a message accepted or held at end of "
                           "message), refused (at RCPT, or with their whole message), removed (suppressed)",
    "mailflow_ratelimit_refusals": "Refusals for a rate limit (ratelimit: not now; over_capacity: never), by stage",
    "mailflow_held_messages": "Messages put in the MTA's hold queue",
    "mailflow_store_errors": "Store calls that failed on the hot path (on_error applied)",
    "mailflow_store_resets": "Times the store's master held another data set than before (Sentinel: an empty old master)",
    "mailflow_store_wait_short": "Debits acknowledged by fewer replicas than [store] wait_replicas within "
                                 "wait_timeout_ms (the debit stands)",
    "mailflow_store_roundtrip_seconds": "Store round trips (Redis) or calls (SQLite), failed ones too",
    "mailflow_policy_seconds": "Time mailflow spent on one message, MAIL to end of message",
    "mailflow_fallback_decisions": "RCPT lookups and debits answered by the local fallback while the store was down",
    "mailflow_fallback_reconciled": "Accounts whose local spend was added to the store's buckets once it answered",
}


class _Histogram:
    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # per bucket (the last: over every bound), not cumulated
        self.sum = 0.0

    def family(self, name: str) -> HistogramMetricFamily:
        cumulative, total = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts):
            total += count
            cumulative.append((floatToGoString(bound), total))  # type: ignore[no-untyped-call]
        return HistogramMetricFamily(name, HELP[name], buckets=cumulative, sum_value=self.sum)


class PromRecorder(Recorder, Collector):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._decisions: dict[tuple[str, Verdict, str], int] = {}  # the Verdict itself: .value costs more
        self._recipients = dict.fromkeys(OUTCOMES, 0)
        self._ratelimit = {(stage, reason): 0 for stage in STAGES for reason in RATE_REASONS}
        self._held = self._store_errors = self._store_resets = self._wait_short = 0
        self._fallback = [0, 0]  # decisions, accounts reconciled
        self._store = _Histogram(STORE_BUCKETS)
        self._policy = _Histogram(POLICY_BUCKETS)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def decision(self, stage: str, decided: Decision, enforced: Decision, message: Message) -> None:
        key = (stage, decided.verdict, decided.reason)
        rate = decided.refuses and decided.reason in RATE_REASONS
        recipients = self._recipients
        with self._lock:
            decisions = self._decisions
            if key not in decisions and len(decisions) >= MAX_DECISION_SERIES:
                key = (stage, key[1], "other")
            decisions[key] = decisions.get(key, 0) + 1
            if rate:
                self._ratelimit[(stage, decided.reason)] += 1
            if stage == "rcpt":
                recipients["refused"] += enforced.refuses
            elif stage == "eom":
                if enforced.verdict in DELIVERED:
                    recipients["accepted"] += len(message.recipients)
                    recipients["removed"] += len(enforced.remove_recipients)
                    self._held += enforced.verdict is Verdict.HOLD
                elif enforced.refuses:
                    recipients["refused"] += len(message.recipients)

    def store_latency(self, seconds: float) -> None:
        store = self._store
        i = bisect_left(store.bounds, seconds)  # Prometheus buckets are "less than or equal"
        with self._lock:
            store.counts[i] += 1
            store.sum += seconds

    def store_error(self) -> None:
        with self._lock:
            self._store_errors += 1

    def store_reset(self) -> None:
        with self._lock:
            self._store_resets += 1

    def store_wait_short(self) -> None:
        with self._lock:
            self._wait_short += 1

    def fallback_decision(self) -> None:
        with self._lock:
            self._fallback[0] += 1

    def fallback_reconciled(self, accounts: int) -> None:
        with self._lock:
            self._fallback[1] += accounts

    def policy_time(self, seconds: float) -> None:
        policy = self._policy
        i = bisect_left(policy.bounds, seconds)
        with self._lock:
            policy.counts[i] += 1
            policy.sum += seconds

    def collect(self) -> Iterator[Metric]:
        with self._lock:  # one consistent copy; families are built outside the hot path's lock
            decisions, recipients, ratelimit = dict(self._decisions), dict(self._recipients), dict(self._ratelimit)
            held, errors, resets, short = self._held, self._store_errors, self._store_resets, self._wait_short
            fallback_decisions, reconciled = self._fallback
            store, policy = self._store.family("mailflow_store_roundtrip_seconds"), \
                self._policy.family("mailflow_policy_seconds")
        family = CounterMetricFamily("mailflow_decisions", HELP["mailflow_decisions"], labels=["stage", "action", "reason"])
        for (stage, verdict, reason), value in decisions.items():
            family.add_metric([stage, verdict.value, reason], value)
        yield family
        family = CounterMetricFamily("mailflow_recipients", HELP["mailflow_recipients"], labels=["outcome"])
        for outcome, value in recipients.items():
            family.add_metric([outcome], value)
        yield family
        family = CounterMetricFamily("mailflow_ratelimit_refusals", HELP["mailflow_ratelimit_refusals"],
                                     labels=["stage", "reason"])
        for labels, value in ratelimit.items():
            family.add_metric(labels, value)
        yield family
        yield CounterMetricFamily("mailflow_held_messages", HELP["mailflow_held_messages"], value=held)
        yield CounterMetricFamily("mailflow_store_errors", HELP["mailflow_store_errors"], value=errors)
        yield CounterMetricFamily("mailflow_store_resets", HELP["mailflow_store_resets"], value=resets)
        yield CounterMetricFamily("mailflow_store_wait_short", HELP["mailflow_store_wait_short"], value=short)
        yield CounterMetricFamily("mailflow_fallback_decisions", HELP["mailflow_fallback_decisions"],
                                  value=fallback_decisions)
        yield CounterMetricFamily("mailflow_fallback_reconciled", HELP["mailflow_fallback_reconciled"], value=reconciled)
        yield store
        yield policy
