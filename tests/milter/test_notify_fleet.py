"""Two milters on one Redis, as two MTAs of a fleet: both see an account reach and pass its
limit, both publish, and the claim in Redis lets exactly one webhook per event out."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from mailflow.milter.client import MilterClient
from tests.helpers.servers import MilterProcess
from tests.helpers.webhook_receiver import SECRET, WebhookReceiver, write_secret

LIMIT = 10
MESSAGES = 16  # alternating: each milter sees >= 80 % (8, 9, 10) and refusals (11..16)


def test_one_webhook_per_event_across_two_milters(start_milter: Callable[..., MilterProcess], redis_url: str,
                                                  tmp_path: Path) -> None:
    receiver = WebhookReceiver()
    try:
        run_fleet(start_milter, redis_url, tmp_path, receiver)
    finally:
        receiver.close()


def run_fleet(start_milter: Callable[..., MilterProcess], redis_url: str, tmp_path: Path,
              receiver: WebhookReceiver) -> None:
    config = {"store": {"url": redis_url, "timeout_ms": 2000}, "ratelimit": {"limits": [f"{LIMIT}/hour"]},
              "notify": {"webhook": receiver.url, "webhook_secret_file": str(write_secret(tmp_path))}}
    milters = [start_milter(config, name="mta1"), start_milter(config, name="mta2")]
    actions = []
    for i in range(MESSAGES):
        with MilterClient(milters[i % 2].socket) as c:
            c.connect("mua", "198.51.100.9", 1000)
            c.mail("bob@shop.example", macros={"{auth_authen}": "bob@shop.example"})
            if c.rcpt(f"r{i}@x.example").action != "continue":
                actions.append("refused")
                c.abort()
                continue
            c.header("From", "bob@shop.example")
            actions.append(c.eom().action)
    # Refused at RCPT, or at end of message when a milter's estimate of the levels was behind.
    assert actions[:LIMIT] == ["continue"] * LIMIT and set(actions[LIMIT:]) <= {"refused", "tempfail"}
    # Each milter logs that it published (its own memory), the store lets one send each.
    deadline = time.monotonic() + 10
    while len(receiver.received) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # room for a duplicate to arrive
    assert sorted(b["event"] for b in receiver.events(SECRET)) == ["limit_near", "limit_refused"]
    lines = [line for m in milters for line in m.log().splitlines()]
    assert len([line for line in lines if "event=notice" in line]) == 2
    assert len([line for line in lines if "sent by another milter" in line]) == 2  # both tried: the claim decided
