"""The reputation shadow of `mailflow replay --from-log`: which accounts the ladder would have
moved, and when, had the follower read this log.

The same parts as the follower and the ladder: the log's delivery lines through the feedback
Tally (accounts by the milter's identity rules), the counts into the ladder's in-memory store
(reputation/memory.py), then `judge` (reputation/ladder.py) for every account a batch touched and
every account standing above normal, with the log's own stamps as the clock, one batch per
BATCH_SECONDS of log time (the follower's batches are smaller; five minutes of a log moves the
figures by as much as the ladder can see). Nothing is stored, published or sent: a shadow.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from mailflow.config import Config
from mailflow.feedback.tally import Tally, TallyStats
from mailflow.model import shown
from mailflow.reputation.ladder import judge
from mailflow.reputation.memory import MemoryFeedback
from mailflow.reputation.model import NORMAL, Standing
from mailflow.reputation.rates import read_rates

BATCH_SECONDS = 300


@dataclass(frozen=True)
class ShadowMove:
    account: str
    before: str  # state
    state: str
    at: float  # log time (unix seconds) of the batch that moved it
    why: str


@dataclass
class Shadow:
    moves: list[ShadowMove] = field(default_factory=list)
    standings: dict[str, Standing] = field(default_factory=dict)  # at the end of the log
    stats: TallyStats = field(default_factory=TallyStats)
    batches: int = 0


def shadow_run(config: Config, lines: Iterable[str], year: int | None = None,
               batch_seconds: int = BATCH_SECONDS) -> Shadow:
    """The ladder's moves over `lines` (one log, in order)."""
    tally = Tally(config, year=year)
    memory = MemoryFeedback()
    result = Shadow(stats=tally.stats)
    batch_end: float | None = None
    last: float | None = None  # the newest stamp in the current batch
    for line in lines:
        tally.stamps.at(line)  # remembered: the tally reads the same stamp again for nothing
        at = tally.stamps.last  # the newest stamp read (a line without one keeps it)
        if at is not None and batch_end is not None and last is not None and at >= batch_end:
            _judge_batch(config, tally, memory, result, last)
            batch_end = None
        tally.add_line(line)
        if at is not None:
            last = at
            if batch_end is None:
                batch_end = (at // batch_seconds + 1) * batch_seconds
    if last is not None:
        _judge_batch(config, tally, memory, result, last)
    return result


def _judge_batch(config: Config, tally: Tally, memory: MemoryFeedback, result: Shadow, now: float) -> None:
    batch = tally.take()
    result.batches += 1
    if batch.counts or batch.recipients:
        memory.add_feedback(None, result.batches, batch.counts, batch.recipients)
    for account in sorted(batch.accounts() | result.standings.keys()):
        current = result.standings.get(account)
        after = judge(read_rates(memory, account, now), config.reputation.ladder_for(account), current, now)
        if after is current:
            continue
        before_state = current.state if current is not None else NORMAL
        if after is None:
            result.standings.pop(account, None)
        else:
            result.standings[account] = after
        state = after.state if after is not None else NORMAL
        if state != before_state:
            result.moves.append(ShadowMove(account, before_state, state, now, after.why if after is not None else "clean"))


def shadow_report(config: Config, shadow: Shadow) -> list[str]:
    """The table `mailflow replay --from-log` prints: one line per move, in log order."""
    stats = shadow.stats
    where = "" if config.reputation.enabled else " ([reputation] is not in the config: its defaults)"
    out = [f"reputation shadow{where}: {stats.outcomes} deliveries read, {stats.attributed} tied to an account "
           f"({stats.unattributed} not, {stats.skipped} not customers' mail), {shadow.batches} batches of "
           f"{BATCH_SECONDS // 60} minutes of log time"]
    if not shadow.moves:
        return [*out, "no account would have moved on the ladder"]
    out.append(f"{'account':<32} {'state':<18} {'time (log, UTC)':<20} why")
    for move in shadow.moves:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(move.at))
        out.append(f"{shown(move.account, 32):<32} {move.before + '->' + move.state:<18} {stamp:<20} "
                   f"{shown(move.why, 200)}")
    return out
