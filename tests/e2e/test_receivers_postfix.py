"""Refusing receivers through a real Postfix: recipient domains routed (transport_maps) to
smtp-sinks that refuse every RCPT with a chosen reply; the log lines Postfix writes for them,
parsed by the feedback parser, are classified by receiver_block: the 5.1.1 is no block, the
Spamhaus 5.7.1 and Gmail's 4.7.28 are, and a burst of them from one domain raises the alert."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest

from mailflow.config import parse_config
from mailflow.feedback.logline import parse_line
from mailflow.feedback.model import Outcome
from mailflow.feedback.receivers import ReceiverWatch, receiver_block
from mailflow.rbl.alerts import Alerter
from mailflow.store import open_store
from tests.helpers import postfix
from tests.helpers.postfix import PrivatePostfix, wait_for

pytestmark = [
    pytest.mark.postfix,
    pytest.mark.skipif(not postfix.available(), reason="needs root and Debian's postfix (make test installs it)"),
]

GONE = "550 5.1.1 <nobody@gone.example>: Recipient address rejected: User unknown in virtual mailbox table"
SPAMHAUS = "554 5.7.1 Service unavailable; Client host [198.51.100.7] blocked using zen.spamhaus.org"
GMAIL = ("421 4.7.28 Our system has detected an unusual rate of unsolicited mail originating from your IP"
         " address. - gsmtp")
REFUSING = {"gone.example": GONE, "blocked.example": SPAMHAUS, "slow.example": GMAIL}


def outcomes(log: str) -> list[Outcome]:
    out: list[Outcome] = []
    for line in log.splitlines():
        parsed = parse_line(line)
        if isinstance(parsed, tuple):
            out += parsed
    return out


def send(mta: PrivatePostfix, recipients: list[str]) -> None:
    with mta.smtp() as smtp:  # from 127.0.0.1: mynetworks may relay
        for rcpt in recipients:
            smtp.sendmail("shop@shop.example", [rcpt], b"From: shop@shop.example\r\nSubject: hi\r\n\r\nhello\r\n")


def by_domain(found: list[Outcome], domain: str, status: str) -> list[Outcome]:
    return [o for o in found if o.recipient.endswith("@" + domain) and o.status == status]


class Recorder(Alerter):
    def __init__(self, settings: Any) -> None:
        super().__init__(settings)
        self.sent: list[dict[str, Any]] = []

    def send(self, alert: dict[str, Any]) -> None:
        self.sent.append(alert)


def test_refusing_sinks_give_real_log_lines_that_receiver_block_classifies(tmp_path: Path) -> None:
    mta = PrivatePostfix(None, refusing=REFUSING).start()
    try:
        send(mta, ["ok@ok.example", "nobody@gone.example", "a@blocked.example", "b@slow.example"])
        mta.wait_delivered(1)
        wait_for(lambda: len(by_domain(outcomes(mta.maillog()), "gone.example", "bounced")) == 1
                 and len(by_domain(outcomes(mta.maillog()), "blocked.example", "bounced")) == 1
                 and by_domain(outcomes(mta.maillog()), "slow.example", "deferred"))
        found = outcomes(mta.maillog())
        [sent] = by_domain(found, "ok.example", "sent")
        [gone] = by_domain(found, "gone.example", "bounced")
        [blocked] = by_domain(found, "blocked.example", "bounced")
        slow = by_domain(found, "slow.example", "deferred")[0]
        # What Postfix logged: the receiver's words in the parenthesis, its DSN in dsn=.
        assert gone.dsn == "5.1.1" and "User unknown" in gone.reply
        assert blocked.dsn == "5.7.1" and "blocked using zen.spamhaus.org" in blocked.reply
        assert slow.dsn == "4.7.28" and "unusual rate of unsolicited mail" in slow.reply
        assert re.fullmatch(r"postfix/(smtp|relay)", blocked.service), blocked.service
        assert [receiver_block(o) for o in (sent, gone, blocked, slow)] == [None, None, "spamhaus", "gmail-rate"]
    finally:
        mta.stop()


def test_a_burst_of_real_refusals_raises_the_receiver_alert(tmp_path: Path) -> None:
    config = parse_config({"rbl": {"ips": ["198.51.100.7"]},
                           "feedback": {"receiver_burst": 5, "receiver_window_minutes": 10}})
    store = open_store(f"sqlite://{tmp_path}/state.db", timeout_ms=2000)
    alerter = Recorder(config.rbl)
    watch = ReceiverWatch(config, store, clock=time.time, alerter=alerter)
    mta = PrivatePostfix(None, refusing=REFUSING).start()
    try:
        send(mta, [f"r{n}@blocked.example" for n in range(6)] + [f"x{n}@gone.example" for n in range(6)])
        wait_for(lambda: len(by_domain(outcomes(mta.maillog()), "blocked.example", "bounced")) == 6
                 and len(by_domain(outcomes(mta.maillog()), "gone.example", "bounced")) == 6)
        for o in outcomes(mta.maillog()):
            watch.observe(o, "shop.example")
        [alert] = watch.flush()
        assert (alert["event"], alert["ip"], alert["receiver"], alert["kind"]) == (
            "receiver_blocked", "198.51.100.7", "blocked.example", "spamhaus")
        assert alert["refused"] == [{"account": "shop.example", "refused": 6}]
        assert watch.refusals == {"198.51.100.7": 6}  # the six 5.1.1s are not blocks
    finally:
        mta.stop()
        store.close()
