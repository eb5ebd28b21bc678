"""What an account's standing does to its mail, as pure functions over plain data, and the small
gate the engine asks (README, "Reputation: what each state does to mail").

- warn: nothing (the ladder's event is the warning);
- throttle: the account's limits (grants laid over) times `Standing.factor`, never below 1;
- hold: its accepted mail goes to the MTA's hold queue, as an admin's hold does;
- block: its mail is refused, 550 5.7.1, with why and whom to contact.

An account exempt from rate limits ([ratelimit] exempt) is not exempt from its reputation: a
reputation is about what its mail does to the provider's IPs, not about volume. A throttled exempt
account is limited to its configured limits times the factor until the throttle ends.

Every standing comes from memory (ReputationOverlay): deciding costs the milter no store round trip.
"""

from __future__ import annotations

import functools
import logging
import math

from mailflow.held import hold_reply_text
from mailflow.log import log_decision
from mailflow.model import Decision, Reply, Verdict, shown
from mailflow.ratelimit.grants import GrantOverlay
from mailflow.ratelimit.limits import Limit
from mailflow.reputation.model import BLOCK, HOLD, THROTTLE, Standing
from mailflow.reputation.overlay import ReputationOverlay
from mailflow.settings import RatePolicy
from mailflow.settings.reputation import ReputationSettings
from mailflow.store.base import Store
from mailflow.why import WHY

HOLD_PREFIX = "reputation: "  # a held message's reason, as the hold records and replies show it
WHY_MAX = 160  # the standing's words in a reply or hold record: bounded whatever the store holds
CONTACT_MAX = 120


def throttled(policy: RatePolicy, factor: float) -> RatePolicy:
    """Every limit's count (and a bucket's burst) times `factor`, at least 1; a factor that is not
    a number in (0, 1) leaves the limits alone (a throttle never raises one). An exempt account's
    configured limits apply, throttled (see the module's note)."""
    if not (math.isfinite(factor) and 0 < factor < 1):
        return policy

    def scaled(n: int) -> int:
        return max(1, math.floor(n * factor + 1e-9))

    limits = tuple(Limit(scaled(limit.count), limit.period,
                         scaled(limit.count) if limit.sliding else scaled(limit.capacity), limit.kind)
                   for limit in policy.limits)
    return RatePolicy(limits, policy.unit, exempt=False)


def block_decision(account: str, standing: Standing) -> Decision:
    """The refusal of a blocked account's mail: why, and whom to contact, each bounded."""
    why = shown(standing.why, WHY_MAX) or "complaints or bounces"
    contact = shown(standing.contact, CONTACT_MAX) or "your provider's support"
    return Decision(Verdict.REJECT, "reputation_block", Reply(
        "550", "5.7.1",
        f"account {shown(account)} is blocked for its mail's delivery reputation ({why}); contact {contact}"))


def hold_reason(standing: Standing) -> str:
    """Message.held for a held account's mail (held.py's parse_hold reads it as words, no time)."""
    return HOLD_PREFIX + (shown(standing.why, WHY_MAX) or "delivery reputation")


class ReputationGate:
    """The engine's one question per stage. Off ([reputation] absent): the grants' policies and
    nothing else, with no thread and no store read. [reputation] mode = "monitor" (or the account's
    own): what would have been decided is logged (mode=monitor), nothing changes; an account with
    `exempt = true` there is never held back by a standing still stored. The milter's own monitor
    mode needs nothing here: the engine logs and lets through what this decides."""

    def __init__(self, settings: ReputationSettings, store: Store, grants: GrantOverlay, refresh_seconds: float) -> None:
        self.grants = grants
        self.settings = settings
        self.overlay = ReputationOverlay(store, refresh_seconds) if settings.enabled else None
        # Limits are made once per (policy, factor), not per message.
        self._throttled = functools.lru_cache(maxsize=4096)(throttled)

    def start(self) -> None:
        if self.overlay is not None:
            self.overlay.start()

    def stop(self) -> None:
        if self.overlay is not None:
            self.overlay.stop()

    def _standing(self, account: str, state: str) -> tuple[Standing | None, bool]:
        """The account's standing when it is `state` and not exempt, and whether its mode monitors."""
        standing = self.overlay.standing(account) if self.overlay is not None else None
        if standing is None or standing.state != state or self.settings.exempt(account):
            return None, False
        return standing, self.settings.mode_for(account) == "monitor"

    def policy_for(self, account: str) -> RatePolicy:
        """The account's rate policy: the config's, grants laid over, throttled when it stands so."""
        policy = self.grants.policy_for(account)
        standing, monitor = self._standing(account, THROTTLE)
        if standing is None:
            return policy
        limited = self._throttled(policy, standing.factor)
        if monitor and limited is not policy:  # once per message: the engine keeps the policy
            log_decision(logging.INFO, event="reputation_monitor", account=account, state=THROTTLE, mode="monitor",
                         limits=_limits(policy), throttled=_limits(limited))
            return policy
        return limited

    def blocked(self, account: str, stage: str, conn_id: str = "", qid: str = "") -> Decision | None:
        """The refusal of a blocked account's mail, else None (monitor: logged, None)."""
        standing, monitor = self._standing(account, BLOCK)
        if standing is None:
            return None
        decision = block_decision(account, standing)
        if monitor:
            _would(account, "reject", decision.reason, decision.reply or Reply("550", "5.7.1", ""), stage, conn_id, qid)
            return None
        return decision

    def held(self, account: str, conn_id: str = "", qid: str = "") -> str | None:
        """Why a held account's accepted message goes to the hold queue, else None (monitor: logged)."""
        standing, monitor = self._standing(account, HOLD)
        if standing is None:
            return None
        reason = hold_reason(standing)
        if monitor:
            _would(account, "hold", "account_held", Reply("250", "2.7.0", hold_reply_text(account, reason)), "eom",
                   conn_id, qid)
            return None
        return reason


def _limits(policy: RatePolicy) -> str:
    return ", ".join(str(limit) for limit in policy.limits) or "none"


def _would(account: str, action: str, reason: str, reply: Reply, stage: str, conn_id: str, qid: str) -> None:
    """[reputation] mode = "monitor": a decision line as the milter's monitor mode writes one."""
    log_decision(logging.INFO, stage=stage, qid=qid or None, conn=conn_id or None, account=account, action=action,
                 mode="monitor", reason=reason, reply=str(reply), why=WHY.get(reason))
