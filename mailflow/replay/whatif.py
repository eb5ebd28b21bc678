"""What-if: judge a day of logged traffic under a (new) config, in log time, touching nothing.

The engine runs in-process on a scratch SQLite store whose clock is the log's timestamps, so a
day replays in seconds yet the buckets drain as they would have that day. Decisions are the
enforce-mode ones, whatever `mode` the config says: this is what monitor mode would report.
A mail log has no headers, so the header checks see only a From: equal to the envelope sender:
a what-if judges accounts, envelope senders and rate limits, not header forgery.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path

from mailflow.config import Config
from mailflow.engine import Engine
from mailflow.model import Client, Verdict
from mailflow.replay.sessions import Session
from mailflow.store.sqlite import SqliteStore

ACTIONS = ("accepted", "deferred", "rejected", "held", "inbound")
_EOM_ACTION = {Verdict.CONTINUE: "accepted", Verdict.TEMPFAIL: "deferred", Verdict.REJECT: "rejected",
               Verdict.HOLD: "held"}


def what_if(config: Config, sessions: Iterable[Session]) -> dict[str, Counter[str]]:
    """Counts per account: messages by final action, plus `rcpt_deferred` for recipients refused at RCPT."""
    report: dict[str, Counter[str]] = defaultdict(Counter)
    enforce = dataclasses.replace(config, milter=dataclasses.replace(config.milter, mode="enforce"))
    now = [0.0]
    with tempfile.TemporaryDirectory(prefix="mailflow-whatif-") as scratch:
        store = SqliteStore(str(Path(scratch) / "whatif.db"), timeout_ms=5000, clock=lambda: now[0])
        engine = Engine(enforce, store)
        try:
            for session in sessions:
                now[0] = session.timestamp or now[0]
                client = Client(session.client.name, session.client.address, session.client.port)
                message, decision = engine.mail(client, session.mail_from, session.login)
                account = message.identity.account if message.identity else "(inbound)"
                counts = report[account]
                counts["messages"] += 1
                if decision.verdict is Verdict.ACCEPT:
                    counts["inbound"] += 1
                    continue
                for recipient in session.rcpt_to:
                    if engine.rcpt(client, message, recipient).refuses:
                        counts["rcpt_deferred"] += 1
                if not message.recipients:
                    counts["deferred"] += 1
                    continue
                for name, value in session.headers:
                    engine.header(message, name, value)
                final = engine.eom(client, message, queue_id=session.queue_id)
                counts[_EOM_ACTION.get(final.verdict, "accepted")] += 1
        finally:
            store.close()
    return dict(report)
