"""What the engine publishes, on a real SQLite store: limit_near at the configured share,
limit_refused once per window however many refusals (RCPT and end of message alike), nothing
repeated in monitor mode either, and an account_held once when trap hits hold an account."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mailflow import events
from mailflow.config import parse_config
from mailflow.engine import Engine
from mailflow.events import Event
from mailflow.model import Client
from mailflow.store.sqlite import SqliteStore

CLIENT = Client("mua", "198.51.100.9", 40000)


@pytest.fixture
def published() -> Iterator[list[Event]]:
    seen: list[Event] = []
    stop = events.subscribe(seen.append)
    yield seen
    stop()


def engine(tmp_path: Path, **config: Any) -> Engine:
    return Engine(parse_config({"ratelimit": {"limits": ["5/hour"]}, **config}),
                  SqliteStore(str(tmp_path / "state.db")))


def send(engine: Engine, recipients: int = 1, login: str = "bob@shop.example") -> str:
    message, mail = engine.mail(CLIENT, login, login)
    for i in range(recipients):
        if engine.rcpt(CLIENT, message, f"r{i}@dest.example").refuses:
            return "refused at rcpt"
    engine.header(message, "From", login)
    return engine.eom(CLIENT, message).verdict.value


@pytest.mark.parametrize("mode", ["enforce", "monitor"])
def test_near_at_the_share_and_one_refusal_notice_per_window(tmp_path: Path, published: list[Event],
                                                             mode: str) -> None:
    eng = engine(tmp_path, notify={"near_limit": 60}, milter={"mode": mode})
    outcomes = [send(eng) for _ in range(8)]
    if mode == "enforce":
        assert outcomes == ["continue"] * 5 + ["refused at rcpt"] * 3
    kinds = [(e.kind, e.account, e.detail["limit"]) for e in published]
    assert kinds == [("limit_near", "shop.example", "5/hour"), ("limit_refused", "shop.example", "5/hour")]
    near, refused = published
    assert near.detail["percent"] == 60 and refused.detail["percent"] == 100
    assert ("mode" in refused.detail) == (mode == "monitor")


def test_no_near_notice_when_off(tmp_path: Path, published: list[Event]) -> None:
    eng = engine(tmp_path, notify={"near_limit": 0})
    for _ in range(6):
        send(eng)
    assert [e.kind for e in published] == ["limit_refused"]


def test_a_refusal_at_end_of_message_is_noticed_too(tmp_path: Path, published: list[Event]) -> None:
    eng = engine(tmp_path, ratelimit={"limits": ["5/hour"], "unit": "message"}, notify={"near_limit": 0})
    store = eng.store
    store.debit("shop.example", eng.config.ratelimit.default.limits, 5)  # another milter spent it all
    message, _ = eng.mail(CLIENT, "bob@shop.example", "bob@shop.example")
    message.levels, message.levels_confirmed = (0.0,), True  # what RCPT believed
    assert not eng.rcpt(CLIENT, message, "r@dest.example").refuses
    eng.header(message, "From", "bob@shop.example")
    assert eng.eom(CLIENT, message).verdict.value == "tempfail"
    assert [e.kind for e in published] == ["limit_refused"]


def test_trap_hits_that_hold_an_account_publish_once(tmp_path: Path, published: list[Event]) -> None:
    from mailflow.suppression.entries import GLOBAL

    eng = engine(tmp_path, suppression={"hash_key_env": "MAILFLOW_SUPPRESSION_KEY", "trap_hits_before_hold": 2})
    assert eng.matcher is not None
    eng.store.add_suppressions(GLOBAL, [eng.matcher.make_entry("trap@traps.example", "trap", "test", 0)])
    for _ in range(3):
        message, _ = eng.mail(CLIENT, "bob@shop.example", "bob@shop.example")
        eng.rcpt(CLIENT, message, "trap@traps.example")
    held = [e for e in published if e.kind == "account_held"]
    assert [(e.account, e.detail["by"], e.detail["hits_24h"]) for e in held] == [("shop.example", "trap_hits", 2)]
