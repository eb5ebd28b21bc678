"""The real milter daemon and reputation standings in the store (SQLite, Redis, Cluster): throttle,
hold and block enforced from memory, monitor mode, a standing removed or unreadable, and the store
killed under it, all through the milter protocol."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mailflow.milter.client import MilterClient
from mailflow.reputation.model import BLOCK, HOLD, THROTTLE, Standing
from mailflow.store import open_store
from tests.helpers.redis_cluster import store_url_with_cluster  # noqa: F401 (store_url: a Cluster too)
from tests.helpers.redis_faults import RedisProcess
from tests.helpers.servers import MilterProcess, poll_until
from tests.milter.test_milter_protocol import config, send

pytestmark = pytest.mark.timing

REFRESH_MS = 100
WHY = "hard bounces 15.0% of 300 recipients in 24 h"
CONTACT = "abuse@provider.example"


def standing(state: str, **kw: float | str) -> str:
    return Standing(state=state, since=time.time(), why=WHY, rule="hard_bounces", **kw).value()  # type: ignore[arg-type]


def login(account: str) -> dict[str, str]:
    return {"{auth_authen}": f"user@{account}"}


def reputation_config(store_url: str, mode: str = "enforce") -> dict[str, object]:
    return config(store_url, store={"refresh_ms": REFRESH_MS}, ratelimit={"limits": ["4/hour"]},
                  reputation={"mode": mode})


def held_transaction(milter: MilterProcess, account: str) -> tuple[str, str | None]:
    """One message; the end of message's action and its quarantine (hold) reason."""
    with MilterClient(milter.socket) as c:
        c.connect("mua.example", "198.51.100.20", 40000)
        assert c.mail(f"user@{account}", macros=login(account)).action == "continue"
        assert c.rcpt("a@x.example").action == "continue"
        c.header("From", f"user@{account}")
        c.eoh()
        result = c.eom(macros={"i": "4HELD01"})
        return result.action, result.quarantine


def test_throttle_hold_and_block_from_the_store_and_back_to_normal(
        start_milter: Callable[..., MilterProcess], store_url: str) -> None:
    store = open_store(store_url, timeout_ms=1000)
    try:
        store.swap_reputation("slow.example", None, standing(THROTTLE, factor=0.5))
        store.swap_reputation("held.example", None, standing(HOLD))
        blocked = standing(BLOCK, contact=CONTACT)
        store.swap_reputation("blocked.example", None, blocked)
        store.swap_reputation("odd.example", None, '{"state": "block"')  # not a standing: ignored
        milter = start_milter(reputation_config(store_url))

        # throttle: 4/hour times 0.5, the recipient after the second refused with the rate reply
        rcpt, eom = send(milter, "user@slow.example", ["a@x.example", "b@x.example", "c@x.example"],
                         login("slow.example"))
        assert rcpt[:2] == ["continue"] * 2 and eom == "continue"
        assert rcpt[2].startswith("451 4.7.1 Rate limit 2/hour for slow.example reached"), rcpt

        # hold: accepted (250) into the hold queue, the record `mailflow account release` reads
        action, quarantine = held_transaction(milter, "held.example")
        assert action == "continue" and quarantine == f"account held.example is held: reputation: {WHY}"
        assert poll_until(lambda: [m.queue_id for m in store.held_messages("held.example")] == ["4HELD01"])
        [record] = store.held_messages("held.example")
        assert record.reason == "account_held" and record.why == f"reputation: {WHY}"

        # block: refused at MAIL, why and whom to contact (the adapter doubles % for the MTA's printf)
        rcpt, reply = send(milter, "user@blocked.example", ["a@x.example"], login("blocked.example"))
        assert reply.replace("%%", "%") == (f"550 5.7.1 account blocked.example is blocked for its mail's delivery reputation ({WHY}); "
                         f"contact {CONTACT}")
        decision = milter.decisions()[-1]
        assert (decision["stage"], decision["action"], decision["reason"]) == ("mail", "reject", "reputation_block")

        # an unreadable value: normal, said once
        assert send(milter, "user@odd.example", ["a@x.example"], login("odd.example")) == (["continue"], "continue")
        assert milter.log().count("reputation standing of odd.example in the store is unreadable") == 1

        # the standing removed (a reset): normal again within refresh_ms
        assert store.swap_reputation("blocked.example", blocked, None)
        removed = time.monotonic()
        assert poll_until(lambda: send(milter, "user@blocked.example", ["a@x.example"],
                                       login("blocked.example"))[1] == "continue", 5.0)
        assert time.monotonic() - removed < 10 * REFRESH_MS / 1000 + 1.0
        assert "reputation of blocked.example: normal again" in milter.log()
    finally:
        store.close()


def test_monitor_mode_enforces_nothing_and_logs_what_it_would_have(
        start_milter: Callable[..., MilterProcess], store_url: str) -> None:
    store = open_store(store_url, timeout_ms=1000)
    try:
        store.swap_reputation("blocked.example", None, standing(BLOCK, contact=CONTACT))
        store.swap_reputation("held.example", None, standing(HOLD))
    finally:
        store.close()
    milter = start_milter(reputation_config(store_url, mode="monitor"))
    assert send(milter, "user@blocked.example", ["a@x.example"], login("blocked.example")) == (["continue"], "continue")
    assert held_transaction(milter, "held.example") == ("continue", None)
    would = [d for d in milter.decisions() if d.get("mode") == "monitor"]
    assert [(d["account"], d["stage"], d["action"], d["reason"]) for d in would] == [
        ("blocked.example", "mail", "reject", "reputation_block"), ("held.example", "eom", "hold", "account_held")]
    assert would[0]["reply"].startswith("550 5.7.1 account blocked.example is blocked") and CONTACT in would[0]["reply"]


def test_the_store_killed_keeps_the_last_standings(start_milter: Callable[..., MilterProcess], tmp_path: Path) -> None:
    redis_server = RedisProcess(tmp_path).start()
    try:
        store = open_store(redis_server.url, timeout_ms=1000)
        store.swap_reputation("blocked.example", None, standing(BLOCK, contact=CONTACT))
        store.close()
        milter = start_milter(reputation_config(redis_server.url))
        assert send(milter, "user@blocked.example", ["a@x.example"], login("blocked.example"))[1].startswith("550 5.7.1")
        redis_server.kill()  # kill -9
        assert poll_until(lambda: "keeping the last ones" in milter.log(), 5.0)
        time.sleep(5 * REFRESH_MS / 1000)  # several failed refreshes
        for _ in range(3):  # still blocked from memory, at MAIL: no store call, so no on_error reply
            _, reply = send(milter, "user@blocked.example", ["a@x.example"], login("blocked.example"))
            assert reply.startswith("550 5.7.1 account blocked.example is blocked"), reply
        assert milter.log().count("cannot refresh reputation standings from the store") == 1
        blocked = [d for d in milter.decisions() if d.get("account") == "blocked.example"]
        assert {d["reason"] for d in blocked} == {"reputation_block"}  # no store_error among them
    finally:
        redis_server.kill()
