"""Held accounts and held messages: the reply names the reason in words, queue ids are checked
before any program sees them, and the engine records what it holds (real SQLite store)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailflow.config import parse_config
from mailflow.engine import Engine
from mailflow.held import HeldMessage, HeldRecorder, hold_reply_text, parse_hold, valid_queue_id
from mailflow.model import REPLY_TEXT_MAX, Reply, Verdict
from mailflow.store.base import Store, StoreError
from mailflow.store.sqlite import SqliteStore
from tests.helpers.engine_run import send_through


@pytest.mark.parametrize("value, parsed", [
    ("1795706233|3 spam-trap hits in 24 hours", (1795706233, "3 spam-trap hits in 24 hours")),
    ("1795706233|held by an admin", (1795706233, "held by an admin")),
    ("1795706233|", (1795706233, "")),
    ("no separator at all", (None, "no separator at all")),
    ("soon|why", (None, "soon|why")),  # not a time: all words, not taken apart
    ("|why", (None, "|why")),
    ("99999999999999999999|why", (None, "99999999999999999999|why")),
    ("", (None, "")),
    (None, (None, "")),
])
def test_parse_hold(value: str | None, parsed: tuple[int | None, str]) -> None:
    assert parse_hold(value) == parsed


def test_the_hold_reply_names_the_reason_in_words() -> None:
    text = hold_reply_text("shop.example", "1795706233|3 spam-trap hits")
    assert text == "account shop.example is held: 3 spam-trap hits"
    assert hold_reply_text("shop.example", "1795706233|held by an admin") == "account shop.example is held: held by an admin"
    assert hold_reply_text("shop.example", "1795706233|") == "account shop.example is held"


_NO_DIGITS = st.text(st.characters(blacklist_characters="|0123456789"), max_size=5000)


@given(_NO_DIGITS, _NO_DIGITS)
def test_any_stored_value_gives_a_bounded_reply_without_the_time(value: str, account: str) -> None:
    reply = Reply("250", "2.7.0", hold_reply_text(account, f"1795706233|{value}"))
    assert "1795706233" not in reply.text and "|" not in reply.text
    assert len(reply.text) <= REPLY_TEXT_MAX and reply.text.isascii() and "\n" not in reply.text


@pytest.mark.parametrize("qid, ok", [
    ("4AB1C2D3E4", True), ("4dZ1Ks0Xk3zJy", True), ("6AQFw43Y010977", True),
    ("ALL", False), ("all", False), ("-", False), ("-d", False), ("", False), ("4AB1", False),
    ("4AB1C2D3E4 ALL", False), ("../deferred", False), ("4AB1C2D3E4\n", False), ("A" * 33, False),
    ("4AB1C2D3É4", False),
])
def test_queue_ids_are_checked(qid: str, ok: bool) -> None:
    assert valid_queue_id(qid) is ok


def test_held_records_round_trip_and_bad_ones_never_raise() -> None:
    record = HeldMessage("shop.example", "4AB1C2D3E4", 1795706233, "account_held", "3 spam-trap hits", 2, "shop.example")
    assert HeldMessage.from_value("shop.example", record.value()) == record
    for bad in ("", "not json", "[]", '{"at": "soon"}', '{"rcpts": null}', "null"):
        assert HeldMessage.from_value("x", bad).account == "x"


class CountingStore(SqliteStore):
    """SQLite, counting the lookups the engine makes at RCPT."""

    lookups = 0

    def find_suppressions(self, *args: Any, **kwargs: Any) -> Any:
        self.lookups += 1
        return super().find_suppressions(*args, **kwargs)


@pytest.mark.parametrize("limits", [{"limits": ["100/hour"]}, {"limits": ["100/hour"], "exempt": True}])
def test_without_lists_the_hold_is_asked_once_per_message_exempt_or_not(tmp_path: Path, limits: dict[str, Any]) -> None:
    """No [suppression]: an admin's hold still applies (an exempt account too), learnt at the first
    RCPT; the others ask nothing (an exempt account asked at every RCPT, found in review)."""
    store = CountingStore(str(tmp_path / "state.db"))
    engine = Engine(parse_config({"ratelimit": {"accounts": {"shop.example": limits}}}), store)
    recipients = tuple(f"r{n}@dest.example" for n in range(5))
    assert send_through(engine, recipients=recipients).verdict is Verdict.CONTINUE
    assert store.lookups == 1
    store.hold_account("shop.example", "held by an admin")
    assert send_through(engine, recipients=recipients).verdict is Verdict.HOLD
    assert store.lookups == 2
    engine.close()
    store.close()


def test_the_engine_holds_with_words_and_records_the_queue_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILFLOW_TEST_KEY", "k" * 32)
    config = parse_config({"ratelimit": {"limits": ["100/hour"]},
                           "suppression": {"hash_key_env": "MAILFLOW_TEST_KEY"}})
    store = SqliteStore(str(tmp_path / "state.db"))
    store.hold_account("shop.example", "3 spam-trap hits")
    engine = Engine(config, store)
    decision = send_through(engine)
    assert decision.verdict is Verdict.HOLD and decision.reply is not None
    assert decision.reply.text == "account shop.example is held: 3 spam-trap hits"
    engine.close()  # writes the pending record
    [held] = store.held_messages("shop.example")
    assert (held.queue_id, held.reason, held.why, held.recipients, held.sender_domain) == (
        "4AB1C2D3E4", "account_held", "3 spam-trap hits", 2, "shop.example")
    store.close()


def mailflow(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailflow", *args], capture_output=True, text=True, timeout=60)


def test_release_without_postsuper_is_one_line_and_keeps_the_records(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'[store]\nurl = "sqlite://{tmp_path}/s.db"\n'
                      f'[accounts]\npostsuper = "{tmp_path}/no/postsuper"\npostfix_config_dir = "{tmp_path}"\n')
    assert mailflow("account", "hold", "shop.example", "-c", str(config)).returncode == 0
    store = SqliteStore(str(tmp_path / "s.db"))
    store.add_held_messages([HeldMessage("shop.example", "4AB1C2D3E4", int(time.time()), "account_held", "x", 1)])
    result = mailflow("account", "release", "shop.example", "-c", str(config))
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "account shop.example: released; its held messages were not released" in result.stderr
    assert "no/postqueue not found (see accounts.postsuper)" in result.stderr
    assert [r.queue_id for r in store.held_messages("shop.example")] == ["4AB1C2D3E4"]  # for the next try
    listing = mailflow("held", "--json", "-c", str(config))
    assert json.loads(listing.stdout)["queue_id"] == "4AB1C2D3E4"
    # Not held any more, but its held mail is still recorded: release may be run again.
    again = mailflow("account", "release", "shop.example", "-c", str(config))
    assert again.returncode == 2 and "account shop.example: not held;" in again.stderr
    store.forget_held_messages("shop.example", ["4AB1C2D3E4"])
    gone = mailflow("account", "release", "shop.example", "-c", str(config))
    assert gone.returncode == 1 and "account shop.example is not held" in gone.stderr
    store.close()


def test_the_postsuper_keys_are_read() -> None:
    accounts = parse_config({"accounts": {"postsuper": "/opt/postfix/sbin/postsuper",
                                          "postfix_config_dir": "/etc/postfix-out"}}).accounts
    assert (accounts.postsuper, accounts.postfix_config_dir) == ("/opt/postfix/sbin/postsuper", "/etc/postfix-out")
    assert parse_config({}).accounts.postsuper == "/usr/sbin/postsuper"


class _DownThenUp:
    """A store that is down for its first write: the recorder must keep the records for the next."""

    def __init__(self) -> None:
        self.calls = 0
        self.written: list[HeldMessage] = []

    def add_held_messages(self, records: list[HeldMessage]) -> None:
        self.calls += 1
        if self.calls == 1:
            raise StoreError("redis: connection refused")
        self.written += records


def test_the_recorder_keeps_records_while_the_store_is_down() -> None:
    store = _DownThenUp()
    recorder = HeldRecorder(cast(Store, store), flush_every=0.05)
    recorder.add(HeldMessage("shop.example", "4AB1C2D3E4", 1, "account_held", "x", 1))
    deadline = time.monotonic() + 5
    while not store.written and time.monotonic() < deadline:
        time.sleep(0.02)
    recorder.stop()
    assert store.calls == 2 and [r.queue_id for r in store.written] == ["4AB1C2D3E4"]
