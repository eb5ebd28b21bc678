"""What the engine's decisions, the store and the adapter add to /metrics (real SQLite store)."""

from __future__ import annotations

from mailflow import metrics
from mailflow.model import Client, Decision, Message, Verdict
from mailflow.metrics.prom import MAX_DECISION_SERIES, PromRecorder
from tests.metrics.conftest import Running

WEB = Client("web", "192.0.2.5", 40000)


def send(running: Running, recipients: int) -> tuple[list[Decision], Decision | None]:
    engine = running.engine
    message, mail = engine.mail(WEB, "<news@web.example>", None)
    assert not mail.refuses
    rcpts = [engine.rcpt(WEB, message, f"<r{i}@dest.example>") for i in range(recipients)]
    if len(message.recipients) == 0:
        return rcpts, None
    engine.header(message, "From", "news@web.example")
    return rcpts, engine.eom(WEB, message)


def test_decisions_recipients_and_rate_limit_refusals_are_counted(running: Running) -> None:
    send(running, 2)  # fits the 3/hour bucket
    rcpts, eom = send(running, 2)  # one fits, the next is deferred at RCPT
    assert [d.verdict for d in rcpts] == [Verdict.CONTINUE, Verdict.TEMPFAIL] and eom is not None
    samples = running.scrape()
    assert samples['mailflow_recipients_total{outcome="accepted"}'] == 3
    assert samples['mailflow_recipients_total{outcome="refused"}'] == 1
    assert samples['mailflow_decisions_total{action="tempfail",reason="ratelimit",stage="rcpt"}'] == 1
    assert samples['mailflow_decisions_total{action="continue",reason="ok",stage="eom"}'] == 2
    assert samples['mailflow_ratelimit_refusals_total{reason="ratelimit",stage="rcpt"}'] == 1
    assert samples['mailflow_ratelimit_refusals_total{reason="over_capacity",stage="eom"}'] == 0
    assert samples["mailflow_store_roundtrip_seconds_count"] >= 2  # the debits at least
    assert samples["mailflow_store_errors_total"] == 0
    assert samples["mailflow_store_up"] == 1 and samples["mailflow_held_accounts"] == 0
    assert samples["mailflow_config_generation"] == 1


def test_no_label_names_an_account_address_or_ip(running: Running) -> None:
    send(running, 4)
    running.engine.store.hold_account("web.example", "test")
    text = "\n".join(running.scrape())
    for private in ("web.example", "dest.example", "192.0.2.5", "news@"):
        assert private not in text
    assert running.scrape()["mailflow_held_accounts"] == 1


def test_a_held_message_and_the_policy_time(running: Running) -> None:
    running.engine.store.hold_account("web.example", "spam-trap hits")
    _, eom = send(running, 1)
    assert eom is not None and eom.verdict is Verdict.HOLD
    metrics.RECORDER.policy_time(0.002)  # what the adapter reports at each end of message
    samples = running.scrape()
    assert samples["mailflow_held_messages_total"] == 1
    assert samples['mailflow_decisions_total{action="hold",reason="account_held",stage="eom"}'] == 1
    assert samples["mailflow_policy_seconds_count"] == 1
    assert samples['mailflow_policy_seconds_bucket{le="0.0025"}'] == 1


def test_store_errors_are_counted_and_shown_by_health(running: Running) -> None:
    running.engine.store_health.failed("redis: timed out after 250 ms")
    assert running.scrape()["mailflow_store_errors_total"] == 1


def test_decision_series_are_bounded() -> None:
    recorder = PromRecorder()  # nothing served: read through its registry
    message = Message(sender="")
    for i in range(MAX_DECISION_SERIES + 50):
        recorder.decision("mail", Decision(Verdict.REJECT, f"rule{i}"), Decision(Verdict.REJECT, f"rule{i}"), message)
    decisions = [s for family in recorder.registry.collect() if family.name == "mailflow_decisions"
                 for s in family.samples]
    assert len(decisions) == MAX_DECISION_SERIES + 1
    assert [s.value for s in decisions if s.labels["reason"] == "other"] == [50]


def test_histogram_buckets_are_less_or_equal() -> None:
    recorder = PromRecorder()
    for seconds in (0.0005, 0.0006, 5.0):
        recorder.store_latency(seconds)
    [family] = [f for f in recorder.registry.collect() if f.name == "mailflow_store_roundtrip_seconds"]
    buckets = {s.labels["le"]: s.value for s in family.samples if s.name.endswith("_bucket")}
    assert (buckets["0.0005"], buckets["0.001"], buckets["1.0"], buckets["+Inf"]) == (1, 2, 2, 3)
