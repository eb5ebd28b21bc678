"""What follows each decision the engine makes, in one call: its log line, the metrics, the
account's counts for the views and, for a message that goes on at end of message, its sent
count and (held) the record `mailflow account release` releases.

None of it costs a store round trip (SentCounter and HeldRecorder write in the background) or
changes a decision: the engine decides, this keeps the books.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from mailflow import accounts, metrics
from mailflow.held import HeldMessage, HeldRecorder, parse_hold
from mailflow.log import DECISIONS, envelope_address, log_decision
from mailflow.model import Client, Decision, Message, Verdict, shown
from mailflow.sent import SentCounter
from mailflow.store.base import Store
from mailflow.why import why

GOES_ON = (Verdict.CONTINUE, Verdict.HOLD)  # at end of message: charged, counted as sent


class Aftermath:
    def __init__(self, store: Store, clock: Callable[[], datetime], monitor: bool) -> None:
        self.sent = SentCounter(store)  # per-account counts: the DNSBL watcher's and the views'
        self.held_mail = HeldRecorder(store)  # what `mailflow account release` releases
        self.clock = clock
        self.monitor = monitor

    def close(self) -> None:
        """The counts and hold records still in memory go to the store."""
        self.sent.stop()
        self.held_mail.stop()

    def decided(self, stage: str, client: Client, message: Message, decision: Decision, enforced: Decision,
                conn_id: str | None = None, qid: str = "", rcpt: str | None = None, cost: int | None = None,
                forgery: str | None = None, removed: str | None = None, local: bool = False) -> None:
        """One decision, as decided and as enforced (they differ in monitor mode). `cost` is given
        for the end of message's own decision (not an earlier refusal there): the message charged."""
        identity = message.identity
        metrics.RECORDER.decision(stage, decision, enforced, message)
        if identity is not None:  # what happened, for `mailflow top` (monitor: refused recipients went too)
            went = len(message.recipients) + (len(message.refused) if self.monitor else 0)
            sent = cost if cost is not None and enforced.verdict in GOES_ON else None
            self.sent.note(identity.account, identity.source, stage, enforced, went, sent or 0)
            if sent is not None and enforced.verdict is Verdict.HOLD:
                self._record_hold(identity.account, message, enforced, qid or message.queue_id)
        if not DECISIONS.isEnabledFor(logging.INFO):  # at level warning, skip gathering the fields
            return
        log_decision(
            logging.INFO,
            stage=stage,
            qid=qid or message.queue_id,
            conn=conn_id,
            account=identity.account if identity else None,
            source=identity.source if identity else None,
            identity=identity.identity if identity else None,
            client=client.address,
            sender=envelope_address(message.sender),
            rcpt=rcpt,
            recipients=len(message.recipients) if stage == "eom" else None,
            refused=len(message.refused) if stage == "eom" and message.refused else None,
            cost=cost,
            action=decision.verdict.value,
            mode="monitor" if self.monitor and decision.refuses else None,
            reason=decision.reason,
            reply=str(decision.reply) if decision.reply else None,
            why=why(decision.reason, decision.refuses, local),
            store="local" if local else None,  # on_error = "local" decided it (README, "Local fallback")
            forgery=forgery,
            removed=removed,
            php_script=message.php_script,
        )

    def _record_hold(self, account: str, message: Message, decision: Decision, queue_id: str) -> None:
        """Queue a record of a message going to the MTA's hold queue (written in the background)."""
        if decision.reason == "account_held":
            why_held = parse_hold(message.held)[1]
        else:
            why_held = decision.reply.text if decision.reply else decision.reason
        self.held_mail.add(HeldMessage(account, shown(queue_id, 32), int(self.clock().timestamp()), decision.reason,
                                       shown(why_held, 200), len(message.recipients),
                                       shown(accounts.domain_of(message.sender), 100)))
