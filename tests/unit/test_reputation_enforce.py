"""What a standing does to mail: the pure functions (throttle, block reply, hold reason), the
in-memory overlay (refresh, unreadable values, a store outage) and the engine on a real SQLite
store, in enforce and both monitor modes."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from mailflow.config import parse_config
from mailflow.engine import Engine
from mailflow.model import REPLY_TEXT_MAX, Client, Decision, Verdict
from mailflow.ratelimit.limits import parse_limit
from mailflow.reputation.enforce import block_decision, hold_reason, throttled
from mailflow.reputation.model import BLOCK, HOLD, THROTTLE, WARN, Standing
from mailflow.reputation.overlay import ReputationOverlay
from mailflow.settings import RatePolicy
from mailflow.store.base import StoreError
from mailflow.store.sqlite import SqliteStore

SMTP = Client("mua.example", "198.51.100.20", 40000)
PICKUP = Client("localhost", "127.0.0.1", 0)
LOGIN = "bob@shop.example"
NOW = 1_800_000_000.0


def standing(state: str, why: str = "hard bounces 12.0% of 300 recipients in 24 h", **kw: Any) -> Standing:
    return Standing(state=state, since=NOW, why=why, rule="hard_bounces", **kw)


# -- pure functions -------------------------------------------------------------------------

def test_throttled_scales_every_limit_and_burst_never_below_one() -> None:
    policy = RatePolicy((parse_limit("10/hour", burst=20), parse_limit("600/hour sliding"), parse_limit("3/day")))
    half = throttled(policy, 0.5)
    assert [(limit.count, limit.capacity, limit.kind) for limit in half.limits] == [
        (5, 10, "bucket"), (300, 300, "sliding"), (1, 1, "bucket")]
    tiny = throttled(policy, 0.0001)
    assert all(limit.count == 1 and limit.capacity == 1 for limit in tiny.limits)
    assert throttled(RatePolicy((parse_limit("30/hour"),)), 0.1).limits[0].count == 3  # 2.9999…: not 2
    for no_throttle in (1.0, 2.0, 0.0, -1.0, float("nan"), float("inf")):
        assert throttled(policy, no_throttle) is policy  # a throttle never raises a limit; nonsense: none


def test_an_exempt_account_is_throttled_to_its_configured_limits() -> None:
    exempt = RatePolicy((parse_limit("100/hour"),), "message", exempt=True)
    assert throttled(exempt, 0.5) == RatePolicy((parse_limit("50/hour"),), "message", exempt=False)


def test_block_reply_says_why_and_whom_to_contact_bounded() -> None:
    decision = block_decision("shop.example", standing(BLOCK, contact="abuse@provider.example"))
    assert (decision.verdict, decision.reason) == (Verdict.REJECT, "reputation_block")
    assert decision.reply is not None and (decision.reply.code, decision.reply.status) == ("550", "5.7.1")
    assert decision.reply.text == ("account shop.example is blocked for its mail's delivery reputation (hard bounces "
                                   "12.0% of 300 recipients in 24 h); contact abuse@provider.example")
    hostile = block_decision("a" * 5000, standing(BLOCK, why="x\r\n550 y" * 2000, contact="\x00c" * 3000))
    assert hostile.reply is not None
    text = hostile.reply.text
    assert len(text) < REPLY_TEXT_MAX and text.isprintable() and text.isascii() and "\r" not in text
    assert "; contact ?c?c" in text  # cut, never dropped
    bare = block_decision("shop.example", standing(BLOCK, why="", contact=""))
    assert bare.reply is not None and bare.reply.text.endswith("; contact your provider's support")


def test_hold_reason_is_bounded_words() -> None:
    assert hold_reason(standing(HOLD)) == "reputation: hard bounces 12.0% of 300 recipients in 24 h"
    long = hold_reason(standing(HOLD, why="é|" * 1000))
    assert long.startswith("reputation: ?|?|") and len(long) <= len("reputation: ") + 160


# -- the overlay ----------------------------------------------------------------------------

class FakeStore:
    """Only what the overlay asks of a store: its stored standings, or an outage."""

    def __init__(self) -> None:
        self.states: dict[str, str] = {}
        self.down = False
        self.reads = 0

    def reputation_states(self) -> dict[str, str]:
        self.reads += 1
        if self.down:
            raise StoreError("connection refused")
        return dict(self.states)


def test_overlay_reads_refreshes_ignores_unreadable_and_keeps_the_last_through_an_outage(
        caplog: pytest.LogCaptureFixture) -> None:
    store = FakeStore()
    store.states = {"shop.example": standing(HOLD).value(), "bad.example": "{not json", "odd.example":
                    standing("frozen").value(), "calm.example": standing("normal").value()}
    caplog.set_level(logging.INFO, "mailflow")
    overlay = ReputationOverlay(store, 3600)  # type: ignore[arg-type]
    assert overlay.standings() == {"shop.example": standing(HOLD)}
    overlay.refresh()
    overlay.refresh()
    unreadable = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(unreadable) == 2 and any("bad.example" in m for m in unreadable)  # once each, not per refresh

    store.down = True
    overlay.refresh()
    overlay.refresh()
    assert overlay.standing("shop.example") == standing(HOLD)  # kept
    assert sum("keeping the last ones" in r.getMessage() for r in caplog.records) == 1
    store.down = False
    store.states = {"shop.example": standing(BLOCK).value()}
    overlay.refresh()
    assert overlay.standing("shop.example") == standing(BLOCK)
    assert any("read from the store again" in r.getMessage() for r in caplog.records)
    store.states = {}
    overlay.refresh()
    assert overlay.standing("shop.example") is None
    assert any("shop.example: normal again" in r.getMessage() for r in caplog.records)
    overlay.stop()


# -- the engine, on a real SQLite store ------------------------------------------------------

def make_engine(tmp_path: Path, standings: dict[str, Standing], mode: str = "enforce", milter_mode: str = "enforce",
                **sections: Any) -> Engine:
    store = SqliteStore(str(tmp_path / "state.db"))
    for account, value in standings.items():
        assert store.swap_reputation(account, None, value.value())
    config = parse_config({"milter": {"mode": milter_mode}, "ratelimit": {"limits": ["4/hour"]},
                           "reputation": {"mode": mode}, **sections})  # sections may replace either table
    return Engine(config, store)


def smtp(engine: Engine, recipients: Sequence[str] = ("a@x.example",), client: Client = SMTP,
         login: str | None = LOGIN, sender: str = LOGIN) -> tuple[Decision, list[Decision], Decision | None]:
    message, mail = engine.mail(client, sender, login)
    if mail.refuses:
        return mail, [], None
    rcpts = [engine.rcpt(client, message, r) for r in recipients]
    engine.header(message, "From", sender)
    return mail, rcpts, engine.eom(client, message, "4ABCDEF")


def test_no_reputation_table_reads_no_standing(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "state.db"))
    store.swap_reputation("shop.example", None, standing(BLOCK).value())
    engine = Engine(parse_config({"ratelimit": {"limits": ["4/hour"]}}), store)
    assert engine.reputation.overlay is None
    assert smtp(engine)[2] is not None and not smtp(engine)[0].refuses
    engine.close()


def test_throttle_halves_the_limit(tmp_path: Path) -> None:
    engine = make_engine(tmp_path, {"shop.example": standing(THROTTLE, factor=0.5)})
    _, rcpts, eom = smtp(engine, [f"r{i}@x.example" for i in range(3)])
    assert [d.refuses for d in rcpts] == [False, False, True]
    assert rcpts[2].reply is not None and str(rcpts[2].reply).startswith("451 4.7.1 Rate limit 2/hour for shop.example")
    assert eom is not None and eom.verdict is Verdict.CONTINUE
    engine.close()


def test_hold_goes_to_the_hold_queue_like_an_admin_hold(tmp_path: Path) -> None:
    engine = make_engine(tmp_path, {"shop.example": standing(HOLD), "clean.example": standing(WARN)})
    mail, _, eom = smtp(engine)
    assert not mail.refuses and eom is not None
    assert (eom.verdict, eom.reason) == (Verdict.HOLD, "account_held")
    assert str(eom.reply) == ("250 2.7.0 account shop.example is held: reputation: hard bounces 12.0% of 300 "
                              "recipients in 24 h")
    _, _, clean = smtp(engine, login="ann@clean.example", sender="ann@clean.example")
    assert clean is not None and clean.verdict is Verdict.CONTINUE  # warn changes nothing
    engine.close()


def test_an_admin_hold_keeps_its_own_words(tmp_path: Path) -> None:
    engine = make_engine(tmp_path, {"shop.example": standing(HOLD)})
    engine.store.hold_account("shop.example", "fraud review")
    _, _, eom = smtp(engine)
    assert eom is not None and eom.verdict is Verdict.HOLD and eom.reply is not None
    assert eom.reply.text == "account shop.example is held: fraud review"
    engine.close()


def test_block_refuses_smtp_at_mail_and_local_at_end_of_message(tmp_path: Path) -> None:
    engine = make_engine(tmp_path, {"shop.example": standing(BLOCK, contact="abuse@provider.example"),
                                    "blog.example": standing(BLOCK)})
    mail, rcpts, eom = smtp(engine)
    assert mail.reason == "reputation_block" and mail.reply is not None and rcpts == [] and eom is None
    assert str(mail.reply).startswith("550 5.7.1 account shop.example is blocked for its mail's delivery reputation")
    assert mail.reply.text.endswith("contact abuse@provider.example")
    mail, rcpts, eom = smtp(engine, client=PICKUP, login=None, sender="wp@blog.example")
    assert not mail.refuses and not any(d.refuses for d in rcpts)
    assert eom is not None and eom.reason == "reputation_block" and eom.verdict is Verdict.REJECT
    assert engine.store.levels("blog.example", (parse_limit("4/hour"),)) == (0.0,)  # refused: not charged
    engine.close()


def test_exempt_accounts_are_held_blocked_and_throttled_too(tmp_path: Path) -> None:
    engine = make_engine(tmp_path, {"shop.example": standing(THROTTLE, factor=0.25)},
                         ratelimit={"limits": ["4/hour"], "exempt": ["shop.example"]})
    _, rcpts, _ = smtp(engine, ["a@x.example", "b@x.example"])
    assert [d.refuses for d in rcpts] == [False, True]  # 4/hour times 0.25
    engine.close()


def rendered(record: logging.LogRecord) -> str:
    """A decision line's fields as key=value, whether the log is set to text or JSON."""
    fields = getattr(record, "mailflow_fields", None)
    return " ".join(f"{k}={v}" for k, v in fields.items()) if isinstance(fields, dict) else record.getMessage()


@pytest.mark.parametrize("modes", [("monitor", "enforce"), ("enforce", "monitor")], ids=["reputation", "milter"])
def test_monitor_enforces_nothing_and_logs_what_it_would_have_done(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, modes: tuple[str, str]) -> None:
    caplog.set_level(logging.INFO, "mailflow")
    engine = make_engine(tmp_path, {"shop.example": standing(BLOCK), "held.example": standing(HOLD),
                                    "slow.example": standing(THROTTLE, factor=0.25)}, *modes)
    mail, _, eom = smtp(engine)
    assert not mail.refuses and eom is not None and eom.verdict is Verdict.CONTINUE
    _, _, eom = smtp(engine, login="h@held.example", sender="h@held.example")
    assert eom is not None and eom.verdict is Verdict.CONTINUE
    _, rcpts, _ = smtp(engine, ["a@x.example", "b@x.example"], login="s@slow.example", sender="s@slow.example")
    assert not any(d.refuses for d in rcpts)
    lines = [line for line in map(rendered, caplog.records) if "mode=monitor" in line]
    assert any("account=shop.example" in m and "reason=reputation_block" in m and "action=reject" in m for m in lines)
    assert any("account=held.example" in m and "action=hold" in m and "reputation: hard bounces" in m for m in lines)
    if modes[0] == "monitor":  # the reputation's monitor: the throttle said once per message
        assert any("account=slow.example" in m and "state=throttle" in m and "throttled=1/hour" in m for m in lines)
    else:  # the milter's monitor: the throttled limit's refusal, logged and let through
        assert any("account=slow.example" in m and "reason=ratelimit" in m for m in lines)
    engine.close()


def test_an_accounts_own_mode_and_exemption_in_reputation(tmp_path: Path) -> None:
    engine = make_engine(tmp_path, {"shop.example": standing(BLOCK), "vip.example": standing(BLOCK)},
                         reputation={"mode": "enforce", "accounts": {"shop.example": {"mode": "monitor"},
                                                                     "vip.example": {"exempt": True}}})
    assert not smtp(engine)[0].refuses
    assert not smtp(engine, login="v@vip.example", sender="v@vip.example")[0].refuses
    engine.close()
