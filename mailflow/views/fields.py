"""The fields of one account's counts in one hour, and what each enforced decision adds to them.

Kept by the milter (mailflow/sent.py), stored by store/redis_counts.py and store/sqlite_counts.py,
read by the views.
"""

from __future__ import annotations

from mailflow.model import Decision, Verdict

SENT, RECIPIENTS, HELD = "sent", "rcpts", "held"  # messages sent, their recipients, messages held
REFUSED = "refused:"  # + the decision's reason: refused:ratelimit, refused:suppressed, ...
SOURCE = "src:"  # + sasl | local | trusted_ip: one per message sent or held and per refusal


def count_fields(stage: str, decision: Decision, recipients: int) -> tuple[str, ...] | None:
    """What one enforced decision adds to its account's counts (one each), or None for nothing:
    a message sent (its recipients are added apart), held, or a refusal at any stage (a RCPT
    refusal is one per recipient refused)."""
    if decision.verdict in (Verdict.REJECT, Verdict.TEMPFAIL):
        return (REFUSED + decision.reason,)
    if stage != "eom":
        return None
    return (HELD,) if decision.verdict is Verdict.HOLD else (SENT,)
