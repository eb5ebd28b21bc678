"""evaluate(): the ladder over the in-memory feedback and over real SQLite and Redis stores, with an
injected clock: moves stored by compare-and-swap, events with evidence, monitor mode stored and
marked, exempt accounts untouched, [reputation] absent -> nothing, a lost race read again once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mailflow import events
from mailflow.config import Config, parse_config
from mailflow.feedback.apply import apply_batch
from mailflow.feedback.model import BOUNCE_ADDRESS, DELIVERED, UNKNOWN_RECIPIENT, FeedbackBatch
from mailflow.metrics.reputation import accounts_by_state, moves
from mailflow.reputation.evaluate import LadderStore, evaluate, review
from mailflow.reputation.ladder import DAY
from mailflow.reputation.memory import MemoryFeedback
from mailflow.reputation.model import BLOCK, HOLD, NORMAL, THROTTLE, WARN, Standing
from mailflow.reputation.rates import HOUR
from mailflow.store.base import StoreError
from mailflow.store.redis import RedisStore
from mailflow.store.sqlite import SqliteStore

NOW = 1_800_000_000.0 - 1_800_000_000.0 % HOUR + 600


def config(tmp_path: Path, **reputation: Any) -> Config:
    return parse_config({"store": {"url": f"sqlite://{tmp_path}/s.db"},
                         "reputation": {"contact": "abuse@provider.example", **reputation}}, str(tmp_path))



@pytest.fixture(params=["memory", "sqlite", "redis"])
def ladder_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LadderStore]:
    if request.param == "memory":
        yield MemoryFeedback()
        return
    store: SqliteStore | RedisStore = (SqliteStore(str(tmp_path / "state.db")) if request.param == "sqlite"
                                       else RedisStore(request.getfixturevalue("redis_url")))
    yield store
    store.close()


def feed(store: LadderStore, account: str, at: float, seq: int, **counts: int) -> None:
    hour = int(at // HOUR)
    names = {"delivered": DELIVERED, "bounced": BOUNCE_ADDRESS, "unknown": UNKNOWN_RECIPIENT}
    store.add_feedback("host1:/var/log/mail.log", seq, {(hour, account, names[k]): n for k, n in counts.items()}, {})  # type: ignore[attr-defined]


def standing(store: LadderStore, account: str) -> Standing | None:
    value = store.reputation_states().get(account)
    return Standing.from_value(value) if value else None


def test_a_list_buyer_is_held_a_clean_account_untouched_then_steps_down(
        tmp_path: Path, ladder_store: LadderStore, published: list[events.Event]) -> None:
    cfg = config(tmp_path)
    feed(ladder_store, "buyer.example", NOW, 1, delivered=170, bounced=30)  # 15 % of 200
    feed(ladder_store, "clean.example", NOW, 1, delivered=990, bounced=10)  # 1 %
    before = moves()
    made = evaluate(cfg, ladder_store, ["buyer.example", "clean.example"], NOW,
                    {"buyer.example": ["to=<a@x.example> status=bounced (550 5.1.1 no such user)"] * 9})
    assert [(m.account, m.before, m.after.state if m.after else None) for m in made] == [("buyer.example", None, HOLD)]
    held = standing(ladder_store, "buyer.example")
    assert held is not None and held.state == HOLD and held.since == NOW and len(held.evidence) == 5
    assert standing(ladder_store, "clean.example") is None
    [event] = published
    assert event.kind == events.REPUTATION_RAISED and event.account == "buyer.example"
    assert event.detail["state"] == HOLD and event.detail["before"] == NORMAL and event.detail["mode"] == "enforce"
    assert event.detail["rate_attempted_24h"] == 200 and event.detail["rate_hard_bounce_percent"] == 15.0
    assert "550 5.1.1" in str(event.detail["evidence"]) and len(str(event.detail["evidence"])) <= 1000
    assert all(isinstance(v, (str, int, float)) for v in event.detail.values())
    assert moves()[(HOLD, "up")] == before[(HOLD, "up")] + 1
    assert accounts_by_state(ladder_store.reputation_states())[HOLD] == 1
    assert evaluate(cfg, ladder_store, ["buyer.example"], NOW + 60) == []  # nothing new: no move, no write

    # A week later the 24 h window is clean: the timer steps it down, one step per clean period.
    states = []
    for day in range(1, 30):
        for down in review(cfg, ladder_store, NOW + day * DAY):
            states.append((day, down.after.state if down.after else NORMAL))
    assert states == [(7, THROTTLE), (14, WARN), (21, NORMAL)]
    assert [e.kind for e in published[1:]] == [events.REPUTATION_LOWERED] * 3
    assert ladder_store.reputation_states() == {}


def test_a_compromised_account_is_blocked_at_once_with_whom_to_contact(
        tmp_path: Path, ladder_store: LadderStore, published: list[events.Event]) -> None:
    feed(ladder_store, "spray.example", NOW, 1, unknown=120, bounced=120)
    [move] = evaluate(config(tmp_path), ladder_store, ["spray.example"], NOW)
    assert move.after is not None and move.after.state == BLOCK and move.after.contact == "abuse@provider.example"
    assert published[0].detail["contact"] == "abuse@provider.example"


def test_monitor_mode_stores_and_reports_marked(tmp_path: Path, ladder_store: LadderStore,
                                                 published: list[events.Event]) -> None:
    cfg = config(tmp_path, mode="monitor", accounts={"loud.example": {"mode": "enforce"}})
    feed(ladder_store, "quiet.example", NOW, 1, unknown=150)
    feed(ladder_store, "loud.example", NOW, 1, unknown=150)
    assert len(evaluate(cfg, ladder_store, ["quiet.example", "loud.example"], NOW)) == 2
    assert {e.account: e.detail["mode"] for e in published} == {"quiet.example": "monitor", "loud.example": "enforce"}
    assert standing(ladder_store, "quiet.example") is not None  # stored: views and metrics see it
    assert cfg.reputation.mode_for("quiet.example") == "monitor"  # the milter's question


def test_exempt_accounts_and_a_missing_table_move_nothing(tmp_path: Path, ladder_store: LadderStore) -> None:
    feed(ladder_store, "vip.example", NOW, 1, unknown=500)
    assert evaluate(config(tmp_path, accounts={"vip.example": {"exempt": True}}), ladder_store,
                    ["vip.example"], NOW) == []
    off = parse_config({"store": {"url": f"sqlite://{tmp_path}/s.db"}}, str(tmp_path))
    assert not off.reputation.enabled and evaluate(off, ladder_store, ["vip.example"], NOW) == []
    assert ladder_store.reputation_states() == {}


def test_apply_batch_runs_the_ladder_once_per_seq(tmp_path: Path, ladder_store: LadderStore) -> None:
    batch = FeedbackBatch(counts={(int(NOW // HOUR), "spray.example", UNKNOWN_RECIPIENT): 100})
    cfg = config(tmp_path)
    made = apply_batch(cfg, ladder_store, batch, "host1:log", 7, NOW)  # type: ignore[arg-type]
    assert [m.after.state for m in made if m.after] == [BLOCK]
    assert apply_batch(cfg, ladder_store, batch, "host1:log", 7, NOW) == []  # type: ignore[arg-type]


def test_a_lost_race_is_read_again_once(tmp_path: Path) -> None:
    class Racing(MemoryFeedback):
        losses = 0

        def swap_reputation(self, account: str, expected: str | None, new: str | None) -> bool:
            if self.losses < 1:  # another evaluator warned it in between
                self.losses += 1
                self.standings[account] = Standing(WARN, NOW - 10, "other", seen=NOW - 10).value()
                return False
            return super().swap_reputation(account, expected, new)

    store = Racing()
    feed(store, "a.example", NOW, 1, unknown=100)
    [move] = evaluate(config(tmp_path), store, ["a.example"], NOW)
    assert move.before is not None and move.before.state == WARN and move.after is not None and move.after.state == BLOCK

    class Losing(MemoryFeedback):
        def swap_reputation(self, account: str, expected: str | None, new: str | None) -> bool:
            return False

    losing = Losing()
    feed(losing, "a.example", NOW, 1, unknown=100)
    assert evaluate(config(tmp_path), losing, ["a.example"], NOW) == []  # logged; the next batch judges again


def test_an_unreadable_standing_is_judged_as_normal_and_replaced(tmp_path: Path, ladder_store: LadderStore) -> None:
    ladder_store.swap_reputation("a.example", None, "{not json")
    feed(ladder_store, "a.example", NOW, 1, unknown=100)
    [move] = evaluate(config(tmp_path), ladder_store, ["a.example"], NOW)
    assert move.before is None and standing(ladder_store, "a.example") is not None


def test_an_unreadable_standing_of_a_clean_account_is_removed_once(tmp_path: Path, ladder_store: LadderStore) -> None:
    ladder_store.swap_reputation("a.example", None, "[]")
    assert review(config(tmp_path), ladder_store, NOW) == []
    assert ladder_store.reputation_states() == {}


class _ReplyLost:
    """The real store; its first swap_reputation is done, and its reply lost (Redis stopped or
    killed after the script ran: the caller sees a StoreError)."""

    def __init__(self, store: LadderStore) -> None:
        self.store, self.lost = store, False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def swap_reputation(self, account: str, expected: str | None, new: str | None) -> bool:
        done = self.store.swap_reputation(account, expected, new)
        if not self.lost:
            self.lost = True
            raise StoreError("redis: Timeout reading from socket")
        return done


def test_a_move_whose_swap_reply_was_lost_is_announced_by_the_next_run(
        tmp_path: Path, ladder_store: LadderStore, published: list[events.Event]) -> None:
    cfg = config(tmp_path)
    feed(ladder_store, "buyer.example", NOW, 1, delivered=170, bounced=30)
    flaky = _ReplyLost(ladder_store)
    with pytest.raises(StoreError):  # the follower keeps its batch and applies it again
        evaluate(cfg, flaky, ["buyer.example"], NOW)
    assert published == [] and standing(ladder_store, "buyer.example") is not None  # stored, not told
    [move] = evaluate(cfg, flaky, ["buyer.example"], NOW + 5)
    [event] = published
    assert event.kind == events.REPUTATION_RAISED and event.detail["state"] == HOLD and event.detail["before"] == NORMAL
    held = standing(ladder_store, "buyer.example")
    assert held is not None and held.state == HOLD and held.since == NOW and held.announcing == ""
    assert evaluate(cfg, ladder_store, ["buyer.example"], NOW + 60) == [] and len(published) == 1  # once
