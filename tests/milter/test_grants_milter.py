"""The real milter daemon and grants in the store: a grant given before the worker's first message
applies to it; one that runs out is ignored at once, logged as expired once, removed from the store."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable

from mailflow.ratelimit.grants import Grant, parse_grant_limits
from mailflow.store import open_store
from tests.helpers.servers import MilterProcess
from tests.milter.test_milter_protocol import AUTH, config, send

REFRESH_MS = 100


def test_a_grant_applies_from_the_first_message_and_expires_by_itself(
        start_milter: Callable[..., MilterProcess], store_url: str) -> None:
    milter = start_milter(config(store_url, store={"refresh_ms": REFRESH_MS}, ratelimit={"limits": ["2/hour"]}))
    store = open_store(store_url, timeout_ms=1000)
    try:
        until = time.time() + 2.0  # shorter than the CLI allows: written straight into the store
        store.swap_grant("shop.example", None, Grant(parse_grant_limits(["5/hour"]), until, "test", "tests",
                                                     time.time()).value())
        time.sleep(5 * REFRESH_MS / 1000)
        rcpt, eom = send(milter, "bob@shop.example", ["a@x.example", "b@x.example", "c@x.example", "d@x.example"], AUTH)
        assert rcpt == ["continue"] * 4 and eom == "continue"  # 2/hour without the grant

        time.sleep(max(0.0, until - time.time()) + 0.05)
        rcpt, eom = send(milter, "bob@shop.example", ["e@x.example"], AUTH)
        # At RCPT (SQLite reads the bucket), or at end of message (Redis estimates at RCPT from the
        # levels it saw lately, which were for the grant's limits: the debit decides).
        refusal = rcpt[0] if rcpt[0] != "continue" else eom
        assert refusal.startswith("451 4.7.1 Rate limit 2/hour for shop.example reached"), (rcpt, eom)
        deadline = time.monotonic() + 5
        while store.grants() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert store.grants() == {}  # removed lazily by the milter's refresh
        assert milter.log().count("grant of shop.example (5/hour) expired") == 1
    finally:
        store.close()


def test_one_grant_reaches_every_milter_of_a_fleet(start_milter: Callable[..., MilterProcess], redis_url: str) -> None:
    """Two milters sharing Redis: one command, and both apply the grant to the one shared bucket."""
    fleet = [start_milter(config(redis_url, store={"refresh_ms": REFRESH_MS}, ratelimit={"limits": ["2/hour"]}),
                          name=f"milter{i}") for i in (1, 2)]
    for milter in fleet:  # each has seen the account under the config's limit
        send(milter, "bob@other.example", ["x@x.example"], {"{auth_authen}": "bob@other.example"})
    given = subprocess.run([sys.executable, "-m", "mailflow", "ratelimit", "grant", "shop.example", "5/hour", "--for",
                            "1h", "--reason", "fleet test", "-c", str(fleet[0].config_path)],
                           capture_output=True, text=True, timeout=60)
    assert given.returncode == 0, given.stderr
    time.sleep(5 * REFRESH_MS / 1000)
    assert send(fleet[0], "bob@shop.example", ["a@x.example", "b@x.example", "c@x.example"], AUTH) == (
        ["continue"] * 3, "continue")
    assert send(fleet[1], "bob@shop.example", ["d@x.example", "e@x.example"], AUTH) == (["continue"] * 2, "continue")
    rcpt, eom = send(fleet[1], "bob@shop.example", ["f@x.example"], AUTH)  # the shared bucket is full
    assert (rcpt[0] if rcpt[0] != "continue" else eom).startswith("451 4.7.1 Rate limit 5/hour for shop.example")
