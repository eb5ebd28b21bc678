"""[reputation] of mailflow.toml: the ladder's rules and mode (mailflow/reputation/).

A rule reads one figure (reputation/rates.py) and names, per state, the figure at or above which
the account stands at least there. Each [reputation.accounts."NAME"] may replace a rule's
thresholds one by one, set `exempt = true` (never moves) or its own `mode`, factor and contact,
the way [forgery.accounts."NAME".rules] replace the forgery rules' actions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from mailflow.reputation.model import NORMAL, STATES
from mailflow.settings.table import Table

MODES = ("enforce", "monitor")
HARD_BOUNCES, COMPLAINTS, UNKNOWN_RECIPIENTS, UNIQUE_RECIPIENTS = (
    "hard_bounces", "complaints", "unknown_recipients", "unique_recipients")
RULE_NAMES = (HARD_BOUNCES, COMPLAINTS, UNKNOWN_RECIPIENTS, UNIQUE_RECIPIENTS)
PERCENT_RULES = (HARD_BOUNCES, COMPLAINTS)  # thresholds in percent; the others count recipients
LEVELS = tuple(s for s in STATES if s != NORMAL)  # the states a rule can name
MAX_CONTACT = 200


@dataclass(frozen=True)
class Rule:
    name: str  # one of RULE_NAMES
    thresholds: Mapping[str, float]  # state -> the figure at or above which the account stands there
    min_sample: int = 0  # the rule says nothing below this many recipients (its denominator)

    def reached(self, figure: float, sample: int) -> str:
        """The highest state this figure reaches; NORMAL below the minimum sample."""
        if sample < self.min_sample:
            return NORMAL
        return max((state for state, at in self.thresholds.items() if figure >= at),
                   key=STATES.index, default=NORMAL)


def _rule(name: str, min_sample: int, **thresholds: float) -> Rule:
    return Rule(name, MappingProxyType(thresholds), min_sample)


# The figures; README "Reputation ladder" argues each.
DEFAULT_RULES = (
    _rule(HARD_BOUNCES, 200, warn=5.0, throttle=7.5, hold=10.0),
    _rule(COMPLAINTS, 2000, warn=0.1, throttle=0.2, hold=0.3),
    _rule(UNKNOWN_RECIPIENTS, 0, block=100),
    _rule(UNIQUE_RECIPIENTS, 0, hold=500),
)


@dataclass(frozen=True)
class Ladder:
    """What the ladder applies to one account (`judge`'s `rules`)."""

    rules: tuple[Rule, ...] = DEFAULT_RULES
    mode: str = "enforce"
    exempt: bool = False
    throttle_factor: float = 0.5
    contact: str = ""
    clean_days: int = 7


@dataclass(frozen=True)
class ReputationSettings:
    enabled: bool = False  # on when the config has a [reputation] table
    mode: str = "enforce"  # enforce | monitor (the code's default; the shipped config says monitor)
    default: Ladder = Ladder()
    accounts: Mapping[str, Ladder] = field(default_factory=dict)  # lower-case account -> its own

    def ladder_for(self, account: str) -> Ladder:
        return self.accounts.get(account.lower(), self.default)

    def mode_for(self, account: str) -> str:
        """What the milter applies: "monitor" enforces nothing for this account."""
        return self.ladder_for(account).mode

    def exempt(self, account: str) -> bool:
        return self.ladder_for(account).exempt


def _number(t: Table, key: str, default: float, low: float, high: float | None = None) -> float:
    if key not in t:
        return default
    value = t.raw(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        t.report(key, f"expected a number, got {value!r}")
        return default
    if value < low or (high is not None and value > high):
        t.report(key, f"must be from {low:g} to {high:g}, got {value!r}" if high is not None
                 else f"must be at least {low:g}, got {value!r}")
        return default
    return float(value)


def _rules(t: Table, inherit: tuple[Rule, ...]) -> tuple[Rule, ...]:
    """`[….rules.NAME]` tables: each key replaces one threshold of the inherited rule; 0 turns
    that state off for the rule."""
    rules = {rule.name: rule for rule in inherit}
    for name in t.keys():
        if name not in RULE_NAMES:
            t.report(name, f"not a rule ({', '.join(RULE_NAMES)})")
            t.raw(name)
            continue
        sub, base = t.table(name), rules[name]
        high = 100.0 if name in PERCENT_RULES else None
        thresholds = dict(base.thresholds)
        for state in LEVELS:
            if state in sub:
                value = _number(sub, state, thresholds.get(state, 0.0), 0.0, high)
                if value > 0:
                    thresholds[state] = value
                else:
                    thresholds.pop(state, None)
        ordered = sorted(thresholds.items(), key=lambda item: STATES.index(item[0]))
        if any(a[1] > b[1] for a, b in zip(ordered, ordered[1:])):
            sub.report(ordered[0][0], "thresholds must not fall as the state rises "
                       f"({', '.join(f'{s} = {v:g}' for s, v in ordered)})")
        rules[name] = Rule(name, MappingProxyType(thresholds), sub.integer("min_sample", base.min_sample))
        sub.finish()
    t.finish()
    return tuple(rules[rule.name] for rule in inherit)


def _ladder(t: Table, inherit: Ladder, per_account: bool) -> Ladder:
    contact = " ".join(t.text("contact", inherit.contact).split())
    if len(contact) > MAX_CONTACT or not all(" " <= c <= "~" for c in contact):
        t.report("contact", f"at most {MAX_CONTACT} printable ASCII characters: it is part of an SMTP reply")
        contact = inherit.contact
    return replace(
        inherit,
        rules=_rules(t.table("rules"), inherit.rules),
        mode=t.choice("mode", inherit.mode, MODES),
        exempt=t.flag("exempt", inherit.exempt) if per_account else False,
        throttle_factor=_number(t, "throttle_factor", inherit.throttle_factor, 0.01, 1.0),
        contact=contact,
        clean_days=t.integer("clean_days", inherit.clean_days, minimum=1),
    )


def parse_reputation(t: Table, present: bool) -> ReputationSettings:
    default = _ladder(t, Ladder(), per_account=False)
    accounts: dict[str, Ladder] = {}
    per_account = t.table("accounts")
    for name in per_account.keys():
        sub = per_account.table(name)
        accounts[name.lower()] = _ladder(sub, default, per_account=True)
        sub.finish()
    per_account.finish()
    t.finish()
    return ReputationSettings(enabled=present, mode=default.mode, default=default, accounts=accounts)

