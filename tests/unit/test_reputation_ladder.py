"""The ladder's pure parts: [reputation] settings, the figures from hourly counts, and `judge`
with an injected clock (moves up at once to the highest state any rule reaches; down one step per
clean period; exempt accounts never; a reset's marker)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from mailflow.config import ConfigError, parse_config
from mailflow.feedback.model import (BOUNCE_ADDRESS, BOUNCE_MAILBOX, BOUNCE_OTHER, BOUNCE_POLICY, COMPLAINT, DEFERRED,
                                     DELIVERED, UNKNOWN_RECIPIENT)
from mailflow.reputation.ladder import DAY, RESET_KEPT, judge, reached
from mailflow.reputation.memory import MemoryFeedback
from mailflow.reputation.model import BLOCK, HOLD, NORMAL, THROTTLE, WARN, Standing, rank
from mailflow.reputation.rates import HOUR, Rates, read_rates
from mailflow.settings.reputation import DEFAULT_RULES, Ladder, ReputationSettings, parse_reputation
from mailflow.settings.table import Table

NOW = 1_800_000_000.0 - 1_800_000_000.0 % HOUR + 30 * 60  # half past a clock hour
LADDER = Ladder(contact="abuse@provider.example")


def settings(raw: dict[str, Any]) -> ReputationSettings:
    t = Table(raw, "reputation")
    parsed = parse_reputation(t, True)
    t.check()
    return parsed


def errors(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        settings(raw)
    return caught.value.errors


def bounces(percent: float, attempted: int = 1000) -> Rates:
    return Rates(attempted_24h=attempted, hard_bounces_24h=int(attempted * percent / 100))


# settings

def test_defaults_are_the_issues_figures() -> None:
    s = settings({})
    assert s.enabled and s.mode == "enforce" and s.default.clean_days == 7 and s.default.throttle_factor == 0.5
    rules = {rule.name: (dict(rule.thresholds), rule.min_sample) for rule in s.default.rules}
    assert rules == {"hard_bounces": ({WARN: 5.0, THROTTLE: 7.5, HOLD: 10.0}, 200),
                     "complaints": ({WARN: 0.1, THROTTLE: 0.2, HOLD: 0.3}, 2000),
                     "unknown_recipients": ({BLOCK: 100}, 0), "unique_recipients": ({HOLD: 500}, 0)}
    assert ReputationSettings().enabled is False  # no [reputation] table: off


def test_per_account_overrides_replace_thresholds_one_by_one() -> None:
    s = settings({"mode": "monitor", "contact": "abuse@p.example", "throttle_factor": 0.25, "clean_days": 3,
                  "rules": {"hard_bounces": {"hold": 12, "block": 30}},
                  "accounts": {"Big.Example": {"rules": {"hard_bounces": {"warn": 0, "min_sample": 1000}},
                                               "mode": "enforce"},
                               "vip.example": {"exempt": True}}})
    assert s.mode == "monitor" and s.mode_for("other") == "monitor" and s.mode_for("BIG.example") == "enforce"
    big = {r.name: r for r in s.ladder_for("big.example").rules}["hard_bounces"]
    assert dict(big.thresholds) == {THROTTLE: 7.5, HOLD: 12, BLOCK: 30} and big.min_sample == 1000
    assert s.exempt("vip.example") and not s.exempt("big.example")
    assert s.ladder_for("vip.example").contact == "abuse@p.example" and s.ladder_for("x").throttle_factor == 0.25


@pytest.mark.parametrize("raw, needle", [
    ({"mode": "loud"}, "reputation.mode: 'loud' is not one of enforce, monitor"),
    ({"throttle_factor": 0}, "reputation.throttle_factor: must be from 0.01 to 1"),
    ({"throttle_factor": "half"}, "reputation.throttle_factor: expected a number"),
    ({"clean_days": 0}, "reputation.clean_days: must be at least 1"),
    ({"rules": {"bounces": {}}}, "reputation.rules.bounces: not a rule"),
    ({"rules": {"complaints": {"warn": 101}}}, "reputation.rules.complaints.warn: must be from 0 to 100"),
    ({"rules": {"hard_bounces": {"hold": 4}}}, "reputation.rules.hard_bounces.warn: thresholds must not fall"),
    ({"rules": {"hard_bounces": {"min_sample": -1}}}, "reputation.rules.hard_bounces.min_sample: must be at least 0"),
    ({"rules": {"hard_bounces": {"soon": 1}}}, "reputation.rules.hard_bounces.soon: unknown key"),
    ({"exempt": ["a"]}, "reputation.exempt: unknown key"),
    ({"accounts": {"a": {"exempt": "yes"}}}, "reputation.accounts.a.exempt: expected true or false"),
    ({"contact": "x" * 300}, "reputation.contact: at most 200 printable ASCII characters"),
    ({"contact": "abuse@p.example\u0007"}, "reputation.contact: at most 200 printable ASCII"),
    ({"contact": "abus\u00e9@p.example"}, "reputation.contact: at most 200 printable ASCII"),
])
def test_bad_keys_are_one_line_each(raw: dict[str, Any], needle: str) -> None:
    found = errors(raw)
    assert any(needle in e for e in found) and all("\n" not in e for e in found), found


def test_check_config_lists_every_bad_key(tmp_path: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"reputation": {"mode": "x", "clean_days": -1}}, str(tmp_path))
    assert len([e for e in caught.value.errors if "reputation." in e]) == 2


# rates

def test_figures_and_their_denominators() -> None:
    store, hour = MemoryFeedback(), int(NOW // HOUR)
    counts = {(hour, "a", DELIVERED): 880, (hour, "a", BOUNCE_ADDRESS): 100, (hour, "a", BOUNCE_MAILBOX): 5,
              (hour, "a", BOUNCE_OTHER): 5, (hour, "a", BOUNCE_POLICY): 10, (hour, "a", DEFERRED): 500,
              (hour - 30, "a", DELIVERED): 1000, (hour - 30, "a", BOUNCE_ADDRESS): 1000,  # beyond 24 h
              (hour - 100, "a", COMPLAINT): 3, (hour - 200, "a", COMPLAINT): 50,  # in 7 days; beyond
              (hour, "a", UNKNOWN_RECIPIENT): 40, (hour - 1, "a", UNKNOWN_RECIPIENT): 60}
    store.add_feedback(None, 0, counts, {(hour, "a"): {f"r{i}" for i in range(300)},
                                         (hour - 1, "a"): {f"r{i}" for i in range(200, 600)}})
    rates = read_rates(store, "a", NOW)
    assert rates.attempted_24h == 1000 and rates.hard_bounces_24h == 110  # 5.7 and deferrals not blamed
    assert rates.hard_bounce_percent == 11.0 and rates.figure("hard_bounces") == (11.0, 1000)
    assert rates.delivered_7d == 1880 and rates.complaints_7d == 3
    assert rates.unknown_last_hour == 40 + 30  # half the previous hour is still within 60 minutes
    assert rates.unique_last_hour == 300 + 150  # 300 new in the previous hour, half of them counted
    assert read_rates(store, "nobody", NOW) == Rates()
    after_reset = read_rates(store, "a", NOW, start=NOW - 60)  # the figures start at the reset's hour
    assert after_reset.unknown_last_hour == 40 and after_reset.unique_last_hour == 300 and after_reset.complaints_7d == 0
    assert "hard bounces 11.0% (110 of 1000 recipients in 24 h)" == rates.describe("hard_bounces")


# judge

def test_below_the_minimum_sample_no_share_rule_speaks() -> None:
    assert judge(bounces(50, attempted=199), LADDER, None, NOW) is None
    assert judge(Rates(delivered_7d=1999, complaints_7d=10), LADDER, None, NOW) is None
    assert judge(bounces(4.9), LADDER, None, NOW) is None


@pytest.mark.parametrize("rates, state, rule", [
    (bounces(5), WARN, "hard_bounces"), (bounces(7.5), THROTTLE, "hard_bounces"), (bounces(10), HOLD, "hard_bounces"),
    (Rates(delivered_7d=2000, complaints_7d=2), WARN, "complaints"),
    (Rates(delivered_7d=2000, complaints_7d=4), THROTTLE, "complaints"),
    (Rates(delivered_7d=2000, complaints_7d=6), HOLD, "complaints"),
    (Rates(unknown_last_hour=100), BLOCK, "unknown_recipients"), (Rates(unknown_last_hour=99), NORMAL, ""),
    (Rates(unique_last_hour=500), HOLD, "unique_recipients"),
])
def test_each_rule_at_its_thresholds(rates: Rates, state: str, rule: str) -> None:
    after = judge(rates, LADDER, None, NOW)
    assert ((after.state, after.rule) if after else (NORMAL, "")) == (state, rule)


def test_up_at_once_to_the_highest_state_any_rule_reaches() -> None:
    rates = Rates(attempted_24h=1000, hard_bounces_24h=60, unknown_last_hour=150)
    after = judge(rates, LADDER, None, NOW)
    assert after is not None and after.state == BLOCK and after.rule == "unknown_recipients"
    assert after.since == NOW and after.contact == "abuse@provider.example" and after.factor == 1.0
    assert after.why == "150 unknown recipients in the last hour >= 100 (unknown_recipients block)"
    assert after.rates["unknown_last_hour"] == 150 and after.rates["hard_bounce_percent"] == 6.0
    throttled = judge(bounces(8), LADDER, None, NOW)
    assert throttled is not None and throttled.factor == 0.5 and throttled.contact == ""
    assert throttled.why == "hard bounces 8.0% (80 of 1000 recipients in 24 h) >= 7.5% (hard_bounces throttle)"
    assert reached(rates, LADDER)[0] == BLOCK


def test_a_higher_figure_raises_a_standing_a_lower_one_keeps_it() -> None:
    warned = judge(bounces(5), LADDER, None, NOW)
    assert warned is not None and warned.state == WARN
    held = judge(bounces(12), LADDER, warned, NOW + HOUR)
    assert held is not None and held.state == HOLD and held.since == NOW + HOUR
    assert judge(bounces(6), LADDER, held, NOW + 2 * HOUR - 1) is held  # lower, and seen less than an hour ago
    kept = judge(bounces(6), LADDER, held, NOW + 3 * HOUR)
    assert kept is not None and kept.state == HOLD and kept.since == NOW + HOUR and kept.seen == NOW + 3 * HOUR


def test_down_one_step_per_clean_period_never_on_a_dip() -> None:
    clock = NOW
    standing = judge(Rates(unknown_last_hour=200), LADDER, None, clock)
    path = []
    for _ in range(40):  # a day at a time, bounded
        clock += DAY
        dirty = clock < NOW + 3 * DAY  # days 1 and 2: a lower figure, still above normal
        standing = judge(Rates(unknown_last_hour=10) if not dirty else bounces(6), LADDER, standing, clock)
        path.append(standing.state if standing else NORMAL)
        if standing is None:
            break
    # seen at day 2 (the last dirty day): block until day 9, then a step each 7 days
    days = {state: path.index(state) + 1 for state in (HOLD, THROTTLE, WARN, NORMAL)}
    assert days == {HOLD: 9, THROTTLE: 16, WARN: 23, NORMAL: 30}, path
    assert path[:8] == [BLOCK] * 8


def test_a_step_down_says_why_and_keeps_the_factor_and_contact_of_its_state() -> None:
    held = Standing(HOLD, NOW, "x", rule="hard_bounces", seen=NOW)
    down = judge(Rates(), LADDER, held, NOW + 7 * DAY)
    assert down is not None and down.state == THROTTLE and down.factor == 0.5 and down.rule == "clean"
    assert down.since == NOW + 7 * DAY and "stepped down from hold" in down.why and "7 days clean" in down.why
    assert judge(Rates(), LADDER, held, NOW + 7 * DAY - 1) is held
    blocked = Standing(BLOCK, NOW, "x", seen=NOW, contact="abuse@provider.example")
    stepped = judge(Rates(), LADDER, blocked, NOW + 7 * DAY)
    assert stepped is not None and stepped.state == HOLD and stepped.contact == ""  # no refusal to explain


def test_clean_days_is_per_account() -> None:
    quick = Ladder(clean_days=1)
    warned = Standing(WARN, NOW, "x", seen=NOW)
    assert judge(Rates(), quick, warned, NOW + DAY) is None


def test_exempt_accounts_never_move() -> None:
    exempt = Ladder(exempt=True)
    assert judge(Rates(unknown_last_hour=10_000), exempt, None, NOW) is None
    blocked = Standing(BLOCK, NOW, "x")
    assert judge(Rates(), exempt, blocked, NOW + 100 * DAY) is blocked


def test_a_reset_marker_is_normal_moves_up_on_new_figures_and_goes_after_a_week() -> None:
    reset = Standing(NORMAL, NOW, "list cleaned", rule="admin")
    assert judge(Rates(), LADDER, reset, NOW + DAY) is reset
    assert judge(Rates(), LADDER, reset, NOW + RESET_KEPT) is None
    raised = judge(Rates(unique_last_hour=600), LADDER, reset, NOW + DAY)
    assert raised is not None and raised.state == HOLD


def test_disabled_thresholds_and_default_rules_are_independent() -> None:
    assert DEFAULT_RULES[0].reached(50.0, 10_000) == HOLD  # no block threshold by default
    assert DEFAULT_RULES[0].reached(50.0, 10) == NORMAL


def test_the_shipped_commented_block_parses_when_uncommented() -> None:
    import re
    import tomllib
    from pathlib import Path

    text = (Path(__file__).parents[2] / "conf/mailflow.toml").read_text()
    block = text[text.index("# [reputation]\n"):text.index("[rbl]\n")]
    lines = [line[2:].split("#")[0].rstrip() for line in block.splitlines() if line.startswith("# ")]
    raw = tomllib.loads("\n".join(line for line in lines if re.match(r"^\[|^\w+ = ", line)))
    shipped = settings(raw["reputation"])
    assert shipped.mode == "monitor" and shipped.default.rules == DEFAULT_RULES  # the comments show the defaults
    assert shipped.exempt("monitoring.example") and shipped.mode_for("lists.example") == "monitor"


def test_a_contact_is_one_line() -> None:
    assert settings({"contact": " abuse@p.example\r\n250 ok "}).default.contact == "abuse@p.example 250 ok"


figures = st.builds(Rates, attempted_24h=st.integers(0, 5000), hard_bounces_24h=st.integers(0, 800),
                    delivered_7d=st.integers(0, 20_000), complaints_7d=st.integers(0, 100),
                    unknown_last_hour=st.integers(0, 200), unique_last_hour=st.integers(0, 1000))


@hyp_settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(figures, st.integers(1, 10 * DAY)), min_size=1, max_size=40))
def test_any_history_moves_up_at_once_and_down_only_one_step_after_a_clean_period(
        history: list[tuple[Rates, int]]) -> None:
    clock, standing, last_dirty = NOW, None, None
    for rates, step in history:
        clock += step
        target, _ = reached(rates, LADDER)
        after = judge(rates, LADDER, standing, clock)
        before_rank, after_rank = rank(standing.state if standing else NORMAL), rank(after.state if after else NORMAL)
        assert after_rank >= rank(target)  # never below what a rule reaches now
        if after_rank < before_rank:
            assert standing is not None
            assert target == NORMAL and after_rank == before_rank - 1  # clean now, one step
            assert last_dirty is None or clock - last_dirty >= LADDER.clean_days * DAY - HOUR
            assert clock - standing.since >= LADDER.clean_days * DAY
        if after_rank > before_rank:
            assert after is not None and after.since == clock and after_rank == rank(target)
        if target != NORMAL:
            last_dirty = clock
        standing = after
