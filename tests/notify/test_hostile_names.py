"""An account named by a customer (a sender domain Postfix's sendmail passes with a control
character in it: `sendmail -f 'php@ev<ESC>c.example'` reaches the milter as account `ev<ESC>c`)
never reaches a log line or the `mailflow held` listing raw: no terminal escape, no forged line."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from mailflow.config import parse_config
from mailflow.events import LIMIT_REFUSED, Event
from mailflow.held import HeldMessage
from mailflow.holdqueue import _lines
from mailflow.notify.notifier import Notifier
from mailflow.store import open_store

HOSTILE = "ev\x1bc\x1b]0;owned\x07\nFAKE mailflow: account release ok"
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
DETAIL: dict[str, str | int | float] = {"limit": "2/hour", "period": "hour", "window": 1795719600, "capacity": 2, "used": 2.0, "percent": 100}


def test_the_line_for_a_notice_another_milter_sent_is_printable(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = open_store(f"sqlite://{tmp_path}/state.db")
    try:
        event = Event(LIMIT_REFUSED, HOSTILE, DETAIL)
        assert store.claim(HOSTILE, f"{LIMIT_REFUSED}:hour:1795719600", 3600)  # the other milter won
        notifier = Notifier(parse_config({}), store, host="mx1")
        notifier.submit(event)
        with caplog.at_level(logging.INFO, logger="mailflow"):
            notifier.start()
            notifier.close(timeout=5)
    finally:
        store.close()
    [line] = [r.getMessage() for r in caplog.records if "sent by another milter" in r.getMessage()]
    assert not CONTROL.search(line), line


def test_the_queue_full_line_is_printable(caplog: pytest.LogCaptureFixture) -> None:
    notifier = Notifier(parse_config({"notify": {"queue_size": 1}}), None, host="mx1")  # not started: stays full
    with caplog.at_level(logging.WARNING, logger="mailflow"):
        for _ in range(2):
            notifier.submit(Event(LIMIT_REFUSED, HOSTILE, DETAIL))
    [line] = [r.getMessage() for r in caplog.records if "queue full" in r.getMessage()]
    assert not CONTROL.search(line), line


def test_the_held_listing_shows_a_hostile_account_printable() -> None:
    record = HeldMessage(HOSTILE, "4XyzAbC123", 1795720645, "lookalike", "held: lookalike", 1, "ev.example")
    [line] = list(_lines([record], as_json=False))
    assert not CONTROL.search(line), line
