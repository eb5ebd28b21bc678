"""Where the ladder runs: after each batch of feedback, for the accounts it touched, and on a
timer for every account with a standing (`review`: the moves down).

Per account: its figures (three store calls, rates.py), `judge` (ladder.py), the new standing
stored by compare-and-swap (a writer that lost the race reads again once and judges again), then
an event with the evidence, a log line and a count for each move. In monitor mode the same
happens, the event says `mode=monitor`, and the milter enforces nothing. Exempt accounts never
move."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from mailflow import events
from mailflow.audit import bounded
from mailflow.config import Config
from mailflow.feedback.model import EVIDENCE_MAX, TEXT_MAX
from mailflow.log import log_decision
from mailflow.metrics.reputation import count_move
from mailflow.reputation.ladder import judge
from mailflow.reputation.model import NORMAL, Standing, rank
from mailflow.reputation.rates import FeedbackReader, read_rates

log = logging.getLogger("mailflow")
TRIES = 2  # a lost compare-and-swap reads again once; a second loss leaves it to the next batch
EVENT_EVIDENCE_MAX = 1000  # characters of evidence in an event (the lines joined)


class LadderStore(FeedbackReader, Protocol):
    """What the ladder needs of a store: Store has it, and so has memory.MemoryFeedback."""

    def reputation_states(self) -> dict[str, str]: ...

    def swap_reputation(self, account: str, expected: str | None, new: str | None) -> bool: ...


@dataclass(frozen=True)
class Move:
    account: str
    before: Standing | None  # None: normal
    after: Standing | None


def evaluate(config: Config, store: LadderStore, accounts: Iterable[str], now: float,
             evidence: Mapping[str, Sequence[str]] | None = None) -> list[Move]:
    """Read each account's feedback, move it on the ladder where a rule says so (stored, an event
    published with its evidence); the moves made. StoreError passes."""
    settings = config.reputation
    if not settings.enabled:
        return []
    wanted = sorted({a for a in accounts if not settings.exempt(a)})
    if not wanted:
        return []
    stored = store.reputation_states()
    moves = []
    for account in wanted:
        move = _evaluate_one(config, store, account, stored, now, (evidence or {}).get(account, ()))
        if move is not None:
            moves.append(move)
            publish(config, move, now)
    return moves


def review(config: Config, store: LadderStore, now: float) -> list[Move]:
    """Every account with a standing, judged again: the timer that steps accounts down (call it
    every few minutes; an account with no new feedback has no batch to judge it)."""
    return evaluate(config, store, store.reputation_states(), now)


def read_standing(value: str | None, account: str) -> Standing | None:
    standing = Standing.from_value(value) if value else None
    if value and standing is None:
        log.warning("reputation: the stored standing of %s is unreadable; judged as normal", bounded(account, 100))
    return standing


def _evaluate_one(config: Config, store: LadderStore, account: str, stored: dict[str, str], now: float,
                  lines: Sequence[str]) -> Move | None:
    ladder = config.reputation.ladder_for(account)
    for attempt in range(TRIES):
        value = stored.get(account)
        before = read_standing(value, account)
        start = before.since if before is not None and before.state == NORMAL else None  # a reset
        after = judge(read_rates(store, account, now, start), ladder, before, now)
        if after is before and not (value and before is None):  # an unreadable value is replaced
            return None
        raised = after is not None and rank(after.state) > rank(before.state if before else NORMAL)
        if raised and after is not None and lines:
            after = replace(after, evidence=tuple(bounded(line, TEXT_MAX) for line in lines[:EVIDENCE_MAX]))
        if store.swap_reputation(account, value, after.value() if after is not None else None):
            if after is not None:
                stored[account] = after.value()
            else:
                stored.pop(account, None)
            same = (before.state if before else NORMAL) == (after.state if after else NORMAL)
            return None if same else Move(account, before, after)
        if attempt + 1 < TRIES:
            fresh = store.reputation_states()
            stored.clear()
            stored.update(fresh)
    log.warning("reputation: the standing of %s kept changing under the ladder; judged again at the next batch",
                bounded(account, 100))
    return None


def direction(move: Move) -> str:
    return "up" if rank(state_of(move.after)) > rank(state_of(move.before)) else "down"


def state_of(standing: Standing | None) -> str:
    return standing.state if standing is not None else NORMAL


def detail(config: Config, move: Move) -> dict[str, str | int | float]:
    """The event's detail: plain values, each bounded (webhook payloads, e-mails, templates)."""
    after = move.after
    out: dict[str, str | int | float] = {
        "state": state_of(after), "before": state_of(move.before),
        "mode": config.reputation.mode_for(move.account),
        "why": bounded(after.why if after else "clean", TEXT_MAX),
        "rule": after.rule if after else "clean",
    }
    if after is not None:
        out.update({f"rate_{key}": value for key, value in sorted(after.rates.items())})
        if after.state == "throttle":
            out["factor"] = after.factor
        if after.contact:
            out["contact"] = after.contact
        if after.evidence:
            out["evidence"] = bounded(" | ".join(after.evidence), EVENT_EVIDENCE_MAX)
    return out


def publish(config: Config, move: Move, now: float) -> None:
    """The move's event, log line and count: for the ladder's moves and an admin's reset alike."""
    way = direction(move)
    fields = detail(config, move)
    events.publish(events.Event(events.REPUTATION_RAISED if way == "up" else events.REPUTATION_LOWERED,
                                move.account, fields, now))
    log_decision(logging.WARNING if way == "up" else logging.INFO, event="reputation", account=move.account,
                 direction=way, **{key: fields[key] for key in ("before", "state", "mode", "rule", "why")})
    count_move(state_of(move.after), way)
