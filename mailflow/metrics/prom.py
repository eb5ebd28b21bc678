"""The prometheus-client objects the hot path counts into, with their label children bound once.

Multiprocess mode (worker.py): each value lives in a small mmap file per worker process, so a
reload's new worker and the old one still finishing its sessions both count, and whichever
worker answers a scrape sums them all. Labels are only stage, action, reason and outcome: never
an account, address or IP (an account label would be a time series per customer).
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from mailflow.metrics import Recorder
from mailflow.model import Decision, Message, Verdict

# Seconds. Few buckets: each one is a value per observation in multiprocess mode.
STORE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
POLICY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5)
RATE_REASONS = frozenset({"ratelimit", "over_capacity"})
MAX_DECISION_SERIES = 500  # reasons come from code and rule names; a bound all the same
DELIVERED = (Verdict.CONTINUE, Verdict.ACCEPT, Verdict.HOLD)

COUNTERS = {  # name (without _total) -> help, labels
    "mailflow_decisions": ("Policy decisions logged, by stage (mail, rcpt, eom), action and reason; in monitor "
                           "mode the action decided, not enforced", ("stage", "action", "reason")),
    "mailflow_recipients": ("Recipients by what the MTA was told: accepted (in a message accepted or held at end of "
                            "message), refused (at RCPT, or with their whole message), removed (suppressed)",
                            ("outcome",)),
    "mailflow_ratelimit_refusals": ("Refusals for a rate limit (ratelimit: not now; over_capacity: never), by stage",
                                    ("stage", "reason")),
    "mailflow_held_messages": ("Messages put in the MTA's hold queue", ()),
    "mailflow_store_errors": ("Store calls that failed on the hot path (on_error applied)", ()),
}
HISTOGRAMS = {
    "mailflow_store_roundtrip_seconds": ("Store round trips (Redis) or calls (SQLite), failed ones too",
                                         STORE_BUCKETS),
    "mailflow_policy_seconds": ("Time mailflow spent on one message, MAIL to end of message", POLICY_BUCKETS),
}


class PromRecorder(Recorder):
    def __init__(self) -> None:
        def counter(name: str) -> Counter:
            help_text, labels = COUNTERS[name]
            return Counter(name, help_text, labels, registry=None)  # served by the multiprocess collector

        def histogram(name: str) -> Histogram:
            help_text, buckets = HISTOGRAMS[name]
            return Histogram(name, help_text, buckets=buckets, registry=None)

        self._decisions = counter("mailflow_decisions")
        recipients = counter("mailflow_recipients")
        self._accepted, self._refused, self._removed = (recipients.labels(o) for o in ("accepted", "refused", "removed"))
        self._ratelimit = counter("mailflow_ratelimit_refusals")
        self._held = counter("mailflow_held_messages")
        self._store_errors = counter("mailflow_store_errors")
        self._store_seconds = histogram("mailflow_store_roundtrip_seconds")
        self._policy_seconds = histogram("mailflow_policy_seconds")
        self._children: dict[tuple[str, str, str], Counter] = {}
        # Bound once, and present from the start: a rate of 0, not a missing series.
        self._rate_children = {(stage, reason): self._ratelimit.labels(stage, reason)
                               for stage in ("mail", "rcpt", "eom") for reason in RATE_REASONS}

    def _decision_child(self, stage: str, action: str, reason: str) -> Counter:
        key = (stage, action, reason)
        child = self._children.get(key)
        if child is None:
            if len(self._children) >= MAX_DECISION_SERIES:
                return self._decisions.labels(stage, action, "other")
            child = self._children[key] = self._decisions.labels(*key)
        return child

    def decision(self, stage: str, decided: Decision, enforced: Decision, message: Message) -> None:
        self._decision_child(stage, decided.verdict.value, decided.reason).inc()
        if decided.reason in RATE_REASONS and decided.refuses:
            self._rate_children[(stage, decided.reason)].inc()
        if stage == "rcpt":
            if enforced.refuses:
                self._refused.inc()
        elif stage == "eom":
            if enforced.verdict in DELIVERED:
                self._accepted.inc(len(message.recipients))
                if enforced.remove_recipients:
                    self._removed.inc(len(enforced.remove_recipients))
                if enforced.verdict is Verdict.HOLD:
                    self._held.inc()
            elif enforced.refuses:
                self._refused.inc(len(message.recipients))

    def store_latency(self, seconds: float) -> None:
        self._store_seconds.observe(seconds)

    def store_error(self) -> None:
        self._store_errors.inc()

    def policy_time(self, seconds: float) -> None:
        self._policy_seconds.observe(seconds)
