"""The ladder's metrics: accounts per state from the stored standings (the milter's /metrics, no
account label), and the moves a process made."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from mailflow.metrics.reputation import MovesCollector, accounts_by_state, count_move, moves
from mailflow.reputation.model import BLOCK, HOLD, NORMAL, WARN, Standing
from tests.metrics.conftest import Running


def test_the_milter_serves_accounts_per_state_without_naming_them(running: Running) -> None:
    store = running.engine.store
    assert running.scrape()['mailflow_reputation_accounts{state="hold"}'] == 0
    store.swap_reputation("buyer.example", None, Standing(HOLD, 1.0, "x").value())
    store.swap_reputation("spray.example", None, Standing(BLOCK, 1.0, "x").value())
    store.swap_reputation("reset.example", None, Standing(NORMAL, 1.0, "reset", rule="admin").value())
    store.swap_reputation("junk.example", None, "{")
    samples = running.scrape()
    assert {state: samples[f'mailflow_reputation_accounts{{state="{state}"}}']
            for state in ("warn", "throttle", "hold", "block")} == {"warn": 0, "throttle": 0, "hold": 1, "block": 1}
    assert not any("example" in key for key in samples)


def test_moves_are_counted_by_state_and_direction() -> None:
    before = moves()
    count_move(HOLD, "up")
    count_move(NORMAL, "down")
    after = moves()
    assert after[(HOLD, "up")] == before[(HOLD, "up")] + 1 and after[(NORMAL, "down")] == before[(NORMAL, "down")] + 1
    registry = CollectorRegistry()
    registry.register(MovesCollector())
    text = generate_latest(registry).decode()
    assert 'mailflow_reputation_moves_total{direction="up",state="hold"}' in text
    assert accounts_by_state({"a": Standing(WARN, 1.0, "x")}) == {"warn": 1, "throttle": 0, "hold": 0, "block": 0}
