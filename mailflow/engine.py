"""The policy engine: what happens at each SMTP stage, independent of any MTA.

The milter adapter feeds it plain facts (Client, Message) and applies the Decision it
returns. Store failures become the configured `on_error` decision here, with a log line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from mailflow import accounts
from mailflow.config import Config
from mailflow.log import log, log_decision
from mailflow.model import PASS, Client, Decision, Message, Reply, Verdict
from mailflow.ratelimit.policy import capacity_refusal, cost_of, for_local_submission, shortfall_refusal
from mailflow.store.base import RateStore, StoreError

T = TypeVar("T")

INBOUND = Decision(Verdict.ACCEPT, "inbound")
STORE_DOWN_REPLY = Reply("451", "4.3.0", "Mail policy service temporarily unavailable; try again later")


class Engine:
    def __init__(self, config: Config, store: RateStore) -> None:
        self.config = config
        self.store = store
        self.monitor = config.milter.mode == "monitor"

    # -- what the MTA does when things break ---------------------------------------------

    def error_decision(self, what: str) -> Decision:
        """The `on_error` answer for a store outage or an unexpected fault."""
        if self.config.milter.on_error == "accept":
            return Decision(Verdict.CONTINUE, f"{what}_accepted")
        return Decision(Verdict.TEMPFAIL, what, STORE_DOWN_REPLY)

    def _store_call(self, call: Callable[[], T]) -> T | Decision:
        try:
            return call()
        except StoreError as exc:
            log.warning("store unavailable, applying on_error=%s: %s", self.config.milter.on_error, exc)
            return self.error_decision("store_error")

    # -- stages ---------------------------------------------------------------------------

    def mail(self, client: Client, sender: str, auth_login: str | None) -> tuple[Message, Decision]:
        message = Message(sender=sender)
        message.identity = accounts.identify(self.config.accounts, client, auth_login, sender)
        return message, (PASS if message.identity else INBOUND)

    def rcpt(self, client: Client, message: Message, recipient: str, conn_id: str = "") -> Decision:
        identity = message.identity
        if identity is None or client.is_postfix_pickup:
            # Pickup turns a RCPT refusal into a deferral of the whole message: judge at EOM.
            message.recipients.append(recipient)
            return PASS
        policy = self.config.ratelimit.policy_for(identity.account)
        if policy.exempt:
            message.recipients.append(recipient)
            return PASS
        if message.levels is None:
            levels = self._store_call(lambda: self.store.levels(identity.account, policy.limits))
            if isinstance(levels, Decision):
                return self._finish("rcpt", client, message, levels, conn_id=conn_id, rcpt=recipient)
            message.levels = levels
        # A recipient that does not fit is deferred, never rejected: the client retries it in a
        # later transaction, so it is delivered once the bucket refills. Only a whole message that
        # can never fit (judged at end of message) gets a 5xx.
        cost = cost_of(policy, len(message.recipients) + 1)
        decision = shortfall_refusal(policy, identity.account, message.levels, cost) or PASS
        if decision.refuses:
            message.refused.append(recipient)
            return self._finish("rcpt", client, message, decision, conn_id=conn_id, rcpt=recipient)
        message.recipients.append(recipient)
        return PASS

    def header(self, message: Message, name: str, value: str) -> None:
        if message.identity is None or message.identity.source != "local":
            return
        lname = name.lower()
        if lname == "x-php-originating-script" and message.php_script is None:
            message.php_script = value.strip()
        elif lname == "received" and message.msp_user is None:
            message.msp_user = accounts.msp_user(value)

    def eom(self, client: Client, message: Message, queue_id: str = "", conn_id: str = "") -> Decision:
        identity = message.identity
        if identity is None:
            return PASS
        if message.msp_user:
            identity = message.identity = accounts.refine_local_identity(
                self.config.accounts, identity, message.msp_user
            )
        policy = self.config.ratelimit.policy_for(identity.account)
        cost = cost_of(policy, len(message.recipients))
        decision: Decision
        if policy.exempt:
            decision = Decision(Verdict.CONTINUE, "exempt")
        else:
            refusal = capacity_refusal(policy, identity.account, cost)
            if refusal is not None:
                decision = refusal
            else:
                debit = self._store_call(lambda: self.store.debit(identity.account, policy.limits, cost))
                if isinstance(debit, Decision):
                    decision = debit
                elif debit.allowed:
                    decision = PASS
                else:
                    decision = shortfall_refusal(policy, identity.account, debit.levels, cost) or PASS
        if client.is_postfix_pickup:
            decision = for_local_submission(decision, self.config.ratelimit.local_over_limit)
        return self._finish("eom", client, message, decision, conn_id=conn_id, qid=queue_id, cost=cost)

    # -- one log line per decision --------------------------------------------------------

    def _finish(self, stage: str, client: Client, message: Message, decision: Decision, **extra: object) -> Decision:
        identity = message.identity
        enforced = decision
        if self.monitor and decision.refuses:
            enforced = Decision(Verdict.CONTINUE, decision.reason)
        log_decision(
            logging.INFO,
            stage=stage,
            qid=extra.pop("qid", None),
            conn=extra.pop("conn_id", None),
            account=identity.account if identity else None,
            source=identity.source if identity else None,
            identity=identity.identity if identity else None,
            client=client.address,
            sender=message.sender or "<>",
            rcpt=extra.pop("rcpt", None),
            recipients=len(message.recipients) if stage == "eom" else None,
            refused=len(message.refused) if stage == "eom" and message.refused else None,
            cost=extra.pop("cost", None),
            action=decision.verdict.value,
            mode="monitor" if self.monitor and decision.refuses else None,
            reason=decision.reason,
            reply=str(decision.reply) if decision.reply else None,
            php_script=message.php_script,
        )
        return enforced
