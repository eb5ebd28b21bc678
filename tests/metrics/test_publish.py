"""Counts of several worker processes, published to one directory, sum to what they counted:
a reload's old and new worker, or a worker that died, lose nothing."""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from mailflow.metrics.prom import PromRecorder
from mailflow.metrics.publish import Publisher
from mailflow.model import Decision, Message, Verdict

OK = Decision(Verdict.CONTINUE, "ok")


def count_in_child(directory: Path, messages: int, latencies: list[float]) -> None:
    """A forked worker: counts, publishes at its end, exits."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            recorder = PromRecorder()
            publisher = Publisher(recorder.registry, str(directory))
            message = Message(sender="")
            message.recipients = ["a", "b"]
            for _ in range(messages):
                recorder.decision("eom", OK, OK, message)
            for seconds in latencies:
                recorder.store_latency(seconds)
            publisher.close()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def summed(directory: Path) -> dict[str, float]:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


def test_workers_counts_sum(tmp_path: Path) -> None:
    count_in_child(tmp_path, 3, [0.0002, 0.003, 0.003])
    count_in_child(tmp_path, 4, [0.0002, 2.0])
    values = summed(tmp_path)
    assert values['mailflow_decisions_total{action="continue",reason="ok",stage="eom"}'] == 7
    assert values['mailflow_recipients_total{outcome="accepted"}'] == 14
    assert values['mailflow_store_roundtrip_seconds_bucket{le="0.0005"}'] == 2
    assert values['mailflow_store_roundtrip_seconds_bucket{le="0.005"}'] == 4  # cumulative, as scraped
    assert values['mailflow_store_roundtrip_seconds_bucket{le="1.0"}'] == 4
    assert values['mailflow_store_roundtrip_seconds_bucket{le="+Inf"}'] == 5
    assert values["mailflow_store_roundtrip_seconds_count"] == 5
    assert abs(values["mailflow_store_roundtrip_seconds_sum"] - 2.0064) < 1e-9


def test_publishing_again_does_not_add_twice(tmp_path: Path) -> None:
    recorder = PromRecorder()
    publisher = Publisher(recorder.registry, str(tmp_path))
    recorder.store_error()
    publisher.publish()
    publisher.publish()
    recorder.store_error()
    publisher.close()
    publisher.close()  # a second close is harmless
    assert summed(tmp_path)["mailflow_store_errors_total"] == 2
