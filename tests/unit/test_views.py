"""What the engine counts for the views, when the counts reach the store, and the views' CLI:
bad arguments get one line and exit 2, account names are shown printable."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from mailflow.config import parse_config
from mailflow.engine import Engine
from mailflow.model import Client, Decision, Verdict
from mailflow.sent import SentCounter
from mailflow.store.sqlite import SqliteStore
from mailflow.views import text
from mailflow.views.fields import count_fields
from tests.helpers.cli import run_cli as run

CLIENT = Client("client.example", "198.51.100.20", 40000)


def send(engine: Engine, login: str, recipients: int) -> Decision | None:
    """As an MTA does: no end of message when every recipient was refused."""
    message, _ = engine.mail(CLIENT, f"news@{login.split('@')[1]}", login)
    accepted = [not engine.rcpt(CLIENT, message, f"r{n}@dest.example").refuses for n in range(recipients)]
    if not any(accepted):
        return None
    engine.header(message, "From", message.sender)
    return engine.eom(CLIENT, message)


@pytest.mark.parametrize("mode, expected", [
    ("enforce", {"sent": 1, "rcpts": 3, "refused:ratelimit": 2, "src:sasl": 3}),
    # Monitor mode refuses nothing: the same mail is counted as it went, all sent.
    ("monitor", {"sent": 2, "rcpts": 5, "src:sasl": 2}),
])
def test_the_engine_counts_what_happened(tmp_path: Path, mode: str, expected: dict[str, int]) -> None:
    config = parse_config({"milter": {"mode": mode}, "ratelimit": {"limits": ["3/hour"]}})
    store = SqliteStore(str(tmp_path / "s.db"))
    engine = Engine(config, store)
    send(engine, "bob@shop.example", 4)  # the 4th recipient is deferred at RCPT
    send(engine, "bob@shop.example", 1)  # the bucket is empty: deferred again
    engine.close()  # writes the counts
    hour = int(time.time()) // 3600
    assert store.account_counts(["shop.example"], [hour]) == {"shop.example": expected}
    store.close()


def test_counts_reach_the_store_without_more_mail(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "s.db"))
    counter = SentCounter(store, flush_every=0.2)
    counter.note("quiet.example", "local", "eom", Decision(Verdict.CONTINUE, "ok"), 1)
    hour = int(time.time()) // 3600
    deadline = time.monotonic() + 5
    while not store.active_accounts([hour]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert store.active_accounts([hour]) == {"quiet.example": 1}
    store.close()


def test_what_each_decision_counts() -> None:
    assert count_fields("rcpt", Decision(Verdict.TEMPFAIL, "ratelimit"), 0) == ("refused:ratelimit",)
    assert count_fields("mail", Decision(Verdict.REJECT, "envelope_domain"), 0) == ("refused:envelope_domain",)
    assert count_fields("eom", Decision(Verdict.HOLD, "account_held"), 2) == ("held",)
    assert count_fields("eom", Decision(Verdict.CONTINUE, "ok"), 2) == ("sent",)
    assert count_fields("rcpt", Decision(Verdict.CONTINUE, "ok"), 1) is None


@pytest.mark.parametrize("args", [["top", "-n", "0"], ["top", "--hour", "-n", "x"], ["near-limit", "--over", "0"],
                                  ["near-limit", "--over", "101"], ["ratelimit", "status"],
                                  # an empty name was held (and looked up) as account "": found by a new admin
                                  ["ratelimit", "status", ""], ["account", "hold", ""], ["account", "release", " "]])
def test_bad_arguments_get_one_line_and_exit_2(capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    code, out, err = run(capsys, *args)
    assert code == 2 and err.startswith("mailflow: ") and err.count("\n") == 1 and "Traceback" not in err, err


def test_account_names_are_shown_printable() -> None:
    hostile = "evil\x1b[2J\nexample"
    row: dict[str, Any] = {"account": hostile, "messages": 1, "recipients": 1, "refused": 0, "held": 0,
                           "limit": None, "limit_share": None, "source": "sasl", "refused_by_reason": {}}
    lines = text.top([row], "this hour", "2026-11-26T19:00:00Z")
    assert all("\x1b" not in line and "\n" not in line for line in lines) and "evil?[2J?example" in lines[-1]
