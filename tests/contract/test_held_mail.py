"""Held-message records, on every store (SQLite and a real redis-server): kept, listed, bounded."""

from __future__ import annotations

import time

import pytest

from mailflow import held
from mailflow.held import HeldMessage, HeldRecorder
from mailflow.store import Store
from tests.helpers.engine_run import send_through


def record(account: str, qid: str, at: int | None = None, reason: str = "account_held") -> HeldMessage:
    return HeldMessage(account, qid, int(time.time()) if at is None else at, reason, "3 spam-trap hits", 2,
                       "shop.example")


def test_records_are_listed_per_account_and_all(store: Store) -> None:
    now = int(time.time())
    store.add_held_messages([record("shop.example", "4AB1C2D3E4", now - 5), record("shop.example", "4AB1C2D3E5", now),
                             record("blog.example", "5BC1C2D3E4", now - 1, reason="lookalike")])
    mine = store.held_messages("shop.example")
    assert [r.queue_id for r in mine] == ["4AB1C2D3E4", "4AB1C2D3E5"]
    assert mine[0] == record("shop.example", "4AB1C2D3E4", now - 5)
    assert [(r.account, r.queue_id) for r in store.held_messages()] == [
        ("shop.example", "4AB1C2D3E4"), ("blog.example", "5BC1C2D3E4"), ("shop.example", "4AB1C2D3E5")]
    assert store.held_messages("nobody.example") == []


def test_forget_removes_only_the_named_ids(store: Store) -> None:
    store.add_held_messages([record("shop.example", "4AB1C2D3E4"), record("shop.example", "4AB1C2D3E5")])
    assert store.forget_held_messages("shop.example", ["4AB1C2D3E4", "NOTTHERE99"]) == 1
    assert [r.queue_id for r in store.held_messages("shop.example")] == ["4AB1C2D3E5"]
    assert store.forget_held_messages("blog.example", ["4AB1C2D3E5"]) == 0
    store.forget_held_messages("shop.example", ["4AB1C2D3E5"])
    assert store.held_messages() == []  # an account with none left is not listed


def test_records_are_bounded_by_age_and_count(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    for module in ("mailflow.store.redis_held", "mailflow.store.sqlite_held"):
        monkeypatch.setattr(f"{module}.HELD_PER_ACCOUNT", 3)
    now = int(time.time())
    old = record("shop.example", "OLD1234567", now - held.HELD_TTL - 60)
    store.add_held_messages([old, *(record("shop.example", f"NEW12345{i:02d}", now - 10 + i) for i in range(5))])
    assert [r.queue_id for r in store.held_messages("shop.example")] == ["NEW1234502", "NEW1234503", "NEW1234504"]


def test_recorder_writes_in_the_background(store: Store) -> None:
    recorder = HeldRecorder(store, flush_every=0.2)
    recorder.add(record("shop.example", "4AB1C2D3E4"))
    recorder.add(record("shop.example", "4AB1C2D3E5"))
    deadline = time.monotonic() + 5
    while len(store.held_messages("shop.example")) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(store.held_messages("shop.example")) == 2
    recorder.add(record("blog.example", "5BC1C2D3E4"))
    recorder.stop()  # writes what is pending at once
    assert [r.queue_id for r in store.held_messages("blog.example")] == ["5BC1C2D3E4"]


def test_an_admin_hold_applies_without_suppression_lists(store: Store) -> None:
    """Found by a new admin: with no [suppression] table, `mailflow account hold` let mail flow."""
    from mailflow.config import parse_config
    from mailflow.engine import Engine
    from mailflow.model import Verdict

    store.hold_account("shop.example", "held by an admin")
    engine = Engine(parse_config({"ratelimit": {"limits": ["100/hour"]}}), store)
    try:
        decision = send_through(engine)
        assert decision.verdict is Verdict.HOLD and decision.reply is not None
        assert decision.reply.text == "account shop.example is held: held by an admin"
    finally:
        engine.close()
