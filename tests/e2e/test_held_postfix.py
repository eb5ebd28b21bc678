"""Held mail through a real Postfix, on both stores: a held account's messages go to Postfix's
hold queue with the reason in words, `mailflow held` lists them by queue id, and `mailflow
account release` releases them (delivered to the sink) or, with --drop, deletes them."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import postfix
from tests.helpers.postfix import PrivatePostfix, wait_for
from tests.helpers.servers import MilterProcess

pytestmark = [
    pytest.mark.postfix,
    pytest.mark.skipif(not postfix.available(), reason="needs root and Debian's postfix (make test installs it)"),
]

USERS = {"bob@shop.example": "secret"}


def cli(milter: MilterProcess, *args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "mailflow", *args, "-c", str(milter.config_path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def send_two(mta: PrivatePostfix, tag: str) -> list[str]:
    """Two messages from bob@shop.example; the queue ids Postfix gave them."""
    ids = []
    with mta.smtp() as smtp:
        smtp.login("bob@shop.example", "secret")
        for n in (1, 2):
            smtp.mail("bob@shop.example")
            smtp.rcpt(f"{tag}{n}@dest.example")
            code, reply = smtp.data(f"From: bob@shop.example\nSubject: {tag} {n}\n\nhello\n".encode())
            assert code == 250 and b"held" not in reply, reply
            ids.append(re.search(rb"queued as (\w+)", reply).group(1).decode())  # type: ignore[union-attr]
    return ids


def on_hold(mta: PrivatePostfix) -> set[str]:
    out = subprocess.run(["postqueue", "-c", str(mta.etc), "-j"], capture_output=True, text=True, timeout=30).stdout
    return {r["queue_id"] for r in map(json.loads, out.splitlines()) if r["queue_name"] == "hold"}


def held_ids(milter: MilterProcess) -> list[str]:
    return [json.loads(line)["queue_id"] for line in cli(milter, "held", "--json").splitlines()]


def test_held_messages_are_listed_released_and_dropped(tmp_path: Path, store_url: str) -> None:
    mta = PrivatePostfix(None, sasl_users=USERS)
    config = {"store": {"url": store_url, "refresh_ms": 100}, "ratelimit": {"limits": ["100/hour"]},
              "suppression": {"hash_key_env": "MAILFLOW_SUPPRESSION_KEY"},
              "accounts": {"postsuper": "/usr/sbin/postsuper", "postfix_config_dir": str(mta.etc)}}
    milter = MilterProcess(tmp_path, config).start()
    mta.milter_port = milter.port
    try:
        mta.start()
        cli(milter, "account", "hold", "shop.example")
        time.sleep(0.3)  # a Redis milter sees the hold at its next replica refresh (100 ms)

        first = send_two(mta, "release")
        wait_for(lambda: on_hold(mta) == set(first))
        # The reason in words, in mailflow's log line (Postfix logs only "milter triggers HOLD
        # action"; the client gets its plain "queued as"): no stored time, no separator.
        replies = [d["reply"] for d in milter.decisions() if d.get("action") == "hold"]
        assert replies == ["250 2.7.0 account shop.example is held: held by an admin"] * 2, replies
        wait_for(lambda: sorted(held_ids(milter)) == sorted(first), timeout=10)
        listing = cli(milter, "held", "--account", "shop.example")
        assert all(qid in listing for qid in first) and "held by an admin" in listing

        out = cli(milter, "account", "release", "shop.example")
        assert "2 released, 0 no longer on hold" in out, out
        delivered = mta.wait_delivered(2)
        assert sorted(r for m in delivered for r in m["recipients"]) == ["<release1@dest.example>", "<release2@dest.example>"]  # type: ignore[attr-defined]
        assert on_hold(mta) == set() and held_ids(milter) == []

        # --drop deletes them; one already gone (deleted by hand) is counted, not an error.
        cli(milter, "account", "hold", "shop.example")
        time.sleep(0.3)
        second = send_two(mta, "drop")
        wait_for(lambda: on_hold(mta) == set(second))
        # No wait for the records here: release waits until the milter has written them.
        subprocess.run(["postsuper", "-c", str(mta.etc), "-d", second[0]], capture_output=True, timeout=30, check=True)
        out = cli(milter, "account", "release", "--drop", "shop.example")
        assert "1 dropped, 1 no longer on hold" in out, out
        assert on_hold(mta) == set() and held_ids(milter) == []
        assert len(mta.delivered()) == 2  # nothing of the dropped ones reached the sink
    finally:
        mta.stop()
        milter.stop()
