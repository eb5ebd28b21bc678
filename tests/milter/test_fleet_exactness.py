"""Two milter processes sharing one Redis, as two MTAs of a fleet would: the count is exact."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable

from mailflow.milter.client import MilterClient
from tests.helpers.servers import MilterProcess

LIMIT = 50
SENDERS = 12  # concurrent SMTP sessions, spread over both milters
MESSAGES_PER_SENDER = 7  # 84 one-recipient messages offered for 50 tokens
# One recipient per message makes "exactly N" a sharp claim: with several, the last few tokens
# may legitimately stay unused when every remaining message needs more than is left.
RECIPIENTS_PER_MESSAGE = 1


def test_exactly_n_recipients_pass_across_two_milters(start_milter: Callable[..., MilterProcess], redis_url: str) -> None:
    config = {"store": {"url": redis_url, "timeout_ms": 2000}, "ratelimit": {"limits": [f"{LIMIT}/hour"]}}
    milters = [start_milter(config, name="mta1"), start_milter(config, name="mta2")]
    accepted: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    counter = itertools.count()

    def sender(milter: MilterProcess) -> None:
        try:
            for _ in range(MESSAGES_PER_SENDER):
                with MilterClient(milter.socket) as c:
                    c.connect("mua", "198.51.100.9", 1000)
                    c.mail("bob@shop.example", macros={"{auth_authen}": "bob@shop.example"})
                    ok = [r for r in range(RECIPIENTS_PER_MESSAGE)
                          if c.rcpt(f"r{next(counter)}@x.example").action == "continue"]
                    if not ok:
                        c.abort()
                        continue
                    c.header("From", "bob@shop.example")
                    if c.eom().action == "continue":  # the debit at end of message is the real test
                        with lock:
                            accepted.append(len(ok))
        except BaseException as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)

    threads = [threading.Thread(target=sender, args=(milters[i % 2],)) for i in range(SENDERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert sum(accepted) == LIMIT
    eom_lines = [d for m in milters for d in m.decisions() if d["stage"] == "eom"]
    assert {d["action"] for d in eom_lines} <= {"continue", "tempfail"}
    assert sum(int(d["cost"]) for d in eom_lines if d["action"] == "continue") == LIMIT
    assert all(any(d["action"] == "continue" for d in m.decisions()) for m in milters)  # both took part
