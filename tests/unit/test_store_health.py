"""The outage log: one line at the start, one every few seconds with a count, one at the end."""

from __future__ import annotations

import logging

import pytest

from mailflow.store.health import StoreHealth


def test_an_outage_is_logged_every_few_seconds_with_a_count(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    health = StoreHealth("tempfail", every=5.0, clock=lambda: now[0])
    logger = logging.getLogger("mailflow")
    propagate, logger.propagate = logger.propagate, True
    caplog.set_level(logging.INFO, logger="mailflow")
    try:
        health.succeeded()  # nothing to say while all is well
        for _ in range(300):  # 300 calls over 12 s
            health.failed("redis: no answer within 250 ms")
            now[0] += 0.04
        assert health.down
        health.succeeded()
        health.succeeded()
    finally:
        logger.propagate = propagate
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "store unavailable for 0 s: 1 call failed, applying on_error=tempfail; last error: redis: no answer within 250 ms",
        "store unavailable for 5 s: 125 calls failed, applying on_error=tempfail; last error: redis: no answer within 250 ms",
        "store unavailable for 10 s: 125 calls failed, applying on_error=tempfail; last error: redis: no answer within 250 ms",
        "store answering again after 12 s; 300 calls failed meanwhile",
    ]
    assert not health.down


def test_a_store_failing_some_of_the_time_is_one_degraded_period(caplog: pytest.LogCaptureFixture) -> None:
    """Every third call fails for 15 s: a line every 5 s with a count, not one per failure."""
    now = [100.0]
    health = StoreHealth("tempfail", every=5.0, clock=lambda: now[0])
    logger = logging.getLogger("mailflow")
    propagate, logger.propagate = logger.propagate, True
    caplog.set_level(logging.INFO, logger="mailflow")
    try:
        for n in range(1500):  # 15 s at 100 calls a second
            if n % 3 == 0:
                health.failed("redis: no answer within 250 ms")
            else:
                health.succeeded()
            now[0] += 0.01
        now[0] += 5.0
        health.succeeded()  # quiet for 5 s: the period ends
        health.succeeded()
    finally:
        logger.propagate = propagate
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) <= 8, lines
    assert lines[0].startswith("store unavailable for 0 s: 1 call failed")
    assert "store unavailable for 5 s: 167 of 500 calls failed in the last 5 s" in lines[2], lines
    assert lines[-1].startswith("store answering again; ") and "calls failed in the last" in lines[-1], lines
    assert not health.down and not health._watching
