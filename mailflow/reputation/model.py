"""An account's standing on the ladder, as stored (Store.swap_reputation) and as every reader
(the milter's overlay, the views, the metrics) sees it."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

NORMAL, WARN, THROTTLE, HOLD, BLOCK = "normal", "warn", "throttle", "hold", "block"
STATES = (NORMAL, WARN, THROTTLE, HOLD, BLOCK)  # in order: a move up goes right


def rank(state: str) -> int:
    return STATES.index(state) if state in STATES else 0


@dataclass(frozen=True)
class Standing:
    """Where an account stands. Accounts without one are NORMAL; a stored NORMAL standing is an
    admin's reset (`mailflow reputation reset`): the ladder counts the account's figures from its
    `since` on, so the hours before the reset cannot move it again (reputation/ladder.py)."""

    state: str  # one of STATES
    since: float  # unix time of the last move
    why: str  # one line: the rule and figures that moved it ("hard bounces 12.1% of 240 recipients in 24 h")
    rule: str = ""  # the rule's name ("hard_bounces"); "admin" for a reset
    evidence: tuple[str, ...] = ()  # a few log lines or complaints, each bounded
    factor: float = 1.0  # THROTTLE: the account's limits are multiplied by this
    contact: str = ""  # BLOCK: whom the refused customer should contact (from the config)
    rates: dict[str, float] = field(default_factory=dict)  # the figures at the move (views, events)
    seen: float = 0.0  # when a rule was last seen above normal (to the hour): the clean period starts there

    def value(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_value(cls, value: str) -> Standing | None:
        """The stored standing; None for a value this version cannot read (logged by the caller)."""
        try:
            data = json.loads(value)
            return cls(state=str(data["state"]), since=float(data["since"]), why=str(data["why"]),
                       rule=str(data.get("rule", "")), evidence=tuple(str(e) for e in data.get("evidence", ())),
                       factor=float(data.get("factor", 1.0)), contact=str(data.get("contact", "")),
                       rates={str(k): float(v) for k, v in dict(data.get("rates", {})).items()},
                       seen=float(data.get("seen", 0.0)))
        except (ValueError, TypeError, KeyError, AttributeError):
            return None
