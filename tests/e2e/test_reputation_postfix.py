"""Reputation standings through a real Postfix: a blocked account's message is refused at MAIL
FROM with the reply (why, whom to contact) in Postfix's own log; a held account's message goes to
Postfix's hold queue; a blocked account's local submission bounces to its sender with the reply."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from mailflow.reputation.model import BLOCK, HOLD, Standing
from mailflow.store import open_store
from tests.helpers import postfix
from tests.helpers.postfix import running_rig, wait_for

pytestmark = [
    pytest.mark.postfix,
    pytest.mark.skipif(not postfix.available(), reason="needs root and Debian's postfix (make test installs it)"),
]

USERS = {"bob@blocked.example": "secret", "bob@held.example": "secret"}
WHY = "unknown recipients 120 in the last hour"
CONTACT = "abuse@provider.example"


def on_hold(etc: Path) -> set[str]:
    out = subprocess.run(["postqueue", "-c", str(etc), "-j"], capture_output=True, text=True, timeout=30).stdout
    return {r["queue_id"] for r in map(json.loads, out.splitlines()) if r["queue_name"] == "hold"}


def test_blocked_refused_with_its_reply_and_held_in_the_hold_queue(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/state.db"
    store = open_store(url)
    for account, state in (("blocked.example", BLOCK), ("held.example", HOLD), ("blog.example", BLOCK)):
        assert store.swap_reputation(account, None, Standing(state, time.time(), WHY, "unknown_recipients",
                                                             contact=CONTACT).value())
    store.close()
    config = {"store": {"url": url, "refresh_ms": 100}, "ratelimit": {"limits": ["100/hour"]},
              "reputation": {"mode": "enforce"}}
    with running_rig(tmp_path, config, USERS) as (mta, milter):
        with mta.smtp() as smtp:
            smtp.login("bob@blocked.example", "secret")
            code, reply = smtp.mail("bob@blocked.example")
            assert code == 550, reply
            assert reply.decode() == (f"5.7.1 account blocked.example is blocked for its mail's delivery reputation "
                                      f"({WHY}); contact {CONTACT}")
        wait_for(lambda: "milter-reject: MAIL from" in mta.maillog(), timeout=10)
        [logged] = [line for line in mta.maillog().splitlines() if "milter-reject: MAIL from" in line]
        assert f"550 5.7.1 account blocked.example is blocked for its mail's delivery reputation ({WHY}); " \
               f"contact {CONTACT}" in logged, logged

        with mta.smtp() as smtp:
            smtp.login("bob@held.example", "secret")
            smtp.mail("bob@held.example")
            smtp.rcpt("someone@dest.example")
            code, reply = smtp.data(b"From: bob@held.example\nSubject: held\n\nhello\n")
            assert code == 250, reply
            queue_id = re.search(rb"queued as (\w+)", reply).group(1).decode()  # type: ignore[union-attr]
        wait_for(lambda: on_hold(mta.etc) == {queue_id}, timeout=20)
        assert "milter triggers HOLD action" in mta.maillog()
        [held] = [d for d in milter.decisions() if d.get("action") == "hold"]
        assert held["reply"] == f"250 2.7.0 account held.example is held: reputation: {WHY}"
        assert mta.delivered() == []

        # Local submission (pickup): judged at end of message; Postfix bounces it to the sender.
        assert mta.sendmail("wp@blog.example", ["reader@dest.example"],
                            "From: wp@blog.example\nSubject: post\n\nhello\n").returncode == 0
        wait_for(lambda: any(m["sender"] == "<>" for m in mta.delivered()), timeout=20)
        [bounce] = [m for m in mta.delivered() if m["sender"] == "<>"]
        assert bounce["recipients"] == ["<wp@blog.example>"]
        text = " ".join(str(bounce["text"]).split())
        assert f"account blog.example is blocked for its mail's delivery reputation ({WHY}); contact {CONTACT}" in text
        [refused] = [d for d in milter.decisions() if d.get("account") == "blog.example"]
        assert (refused["stage"], refused["reason"]) == ("eom", "reputation_block")
