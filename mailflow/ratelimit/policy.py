"""Rate-limit decisions: pure functions over bucket levels, limits and counts."""

from __future__ import annotations

from collections.abc import Sequence

from mailflow.settings import RatePolicy
from mailflow.model import Decision, Reply, Verdict
from mailflow.ratelimit.bucket import first_shortfall, over_capacity


def cost_of(policy: RatePolicy, recipients: int) -> int:
    return recipients if policy.unit == "recipient" else 1


def capacity_refusal(policy: RatePolicy, account: str, cost: int) -> Decision | None:
    """A cost larger than a bucket can ever hold is refused for good, not deferred forever."""
    too_small = over_capacity(policy.limits, cost)
    if too_small is not None:
        what = f"{cost} recipients" if policy.unit == "recipient" else "this message"
        return Decision(
            Verdict.REJECT,
            "over_capacity",
            Reply(
                "550",
                "5.7.1",
                f"Message to {what} exceeds the {too_small} limit of {account}; "
                f"at most {too_small.capacity} per message, send the rest separately",
            ),
        )
    return None


def shortfall_refusal(policy: RatePolicy, account: str, levels: Sequence[float], cost: int) -> Decision | None:
    shortfall = first_shortfall(levels, policy.limits, cost)
    if shortfall is None:
        return None
    return Decision(
        Verdict.TEMPFAIL,
        "ratelimit",
        Reply(
            "451",
            "4.7.1",
            f"Rate limit {shortfall.limit} for {account} reached; try again in {shortfall.retry_after} seconds",
        ),
    )


def for_local_submission(decision: Decision, local_over_limit: str) -> Decision:
    """Postfix local submission (pickup) cannot take RCPT refusals, so it is judged at end of
    message: a full bucket defers the file in maildrop (pickup retries it) or holds it; a message
    too large for any bucket is rejected, which bounces it to the sender."""
    if decision.reason == "ratelimit" and local_over_limit == "hold":
        return Decision(Verdict.HOLD, decision.reason, decision.reply)
    return decision
