"""The ladder itself, as a pure function of the figures, the rules, the standing and the time:
the same answer in the follower, the complaint reader, the replay shadow and the tests.

Up: at once, to the highest state any rule reaches now (a compromised account's 100 unknown
recipients block it without passing through warn). Down: never because one figure dipped; only
after `clean_days` in which no rule was above normal, counted from the later of the last move
and the last time a rule was seen above normal, and one step at a time (block -> hold ->
throttle -> warn -> normal), each after a clean period of its own: every step down lets more mail
through, and only that mail shows whether the list was cleaned.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone

from mailflow.reputation.model import BLOCK, NORMAL, STATES, THROTTLE, Standing, rank
from mailflow.reputation.rates import COMPLAINT_HOURS, HOUR, Rates
from mailflow.settings.reputation import Ladder, Rule

DAY = 86400
SEEN_STEP = HOUR  # `seen` is rewritten at most hourly: the store is not written on every batch
RESET_KEPT = COMPLAINT_HOURS * HOUR  # a reset's marker outlives the longest window before it


def reached(rates: Rates, rules: Ladder) -> tuple[str, Rule | None]:
    """The highest state any rule reaches (the first rule listed wins a tie), and that rule."""
    best: tuple[str, Rule | None] = (NORMAL, None)
    for rule in rules.rules:
        state = rule.reached(*rates.figure(rule.name))
        if rank(state) > rank(best[0]):
            best = (state, rule)
    return best


def _day(at: float) -> str:
    return datetime.fromtimestamp(at, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _standing(state: str, rules: Ladder, now: float, why: str, rule: str, rates: Rates) -> Standing:
    return Standing(state=state, since=now, why=why, rule=rule,
                    factor=rules.throttle_factor if state == THROTTLE else 1.0,
                    contact=rules.contact if state == BLOCK else "", rates=rates.plain(), seen=now)


def judge(rates: Rates, rules: Ladder, current: Standing | None, now: float) -> Standing | None:
    """The account's standing after these figures: `current` itself when nothing changes, a new
    Standing for a move (its `since` = now) or a newer `seen`, None for normal."""
    if rules.exempt:
        return current
    state, rule = reached(rates, rules)
    held = current.state if current is not None else NORMAL
    if rule is not None and rank(state) > rank(held):
        at = rule.thresholds[state]
        unit = "%" if rule.name in ("hard_bounces", "complaints") else ""
        why = f"{rates.describe(rule.name)} >= {at:g}{unit} ({rule.name} {state})"
        return _standing(state, rules, now, why, rule.name, rates)
    if current is None:
        return None
    if state != NORMAL:  # not clean: no step down; the clean period starts later
        return replace(current, seen=now) if now - current.seen >= SEEN_STEP else current
    if held == NORMAL:  # an admin's reset: kept while the windows still hold hours before it
        return None if now - current.since >= RESET_KEPT else current
    quiet = max(current.since, current.seen)
    if now - quiet < rules.clean_days * DAY:
        return current
    lower = STATES[rank(held) - 1]
    if lower == NORMAL:
        return None
    why = f"stepped down from {held}: no rule above normal since {_day(quiet)} ({rules.clean_days} days clean)"
    return replace(_standing(lower, rules, now, why, "clean", rates), seen=quiet)
