"""The ladder's metrics, no account label: how many accounts stand in each state, and the moves.

`mailflow_reputation_accounts{state}` is read from the standings (Store.reputation_states, the
same dict the milter's refresh reads): `accounts_family` builds it from that dict, so whichever
process holds the standings serves it (the milter's collector reads them at scrape time).
`mailflow_reputation_moves_total{state,direction}` counts the moves this process made (the
follower, the complaint reader, `mailflow reputation reset`): `moves_family` serves them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mailflow.reputation.model import NORMAL, STATES, Standing

DIRECTIONS = ("up", "down")
_lock = threading.Lock()
_moves = {(state, direction): 0 for state in STATES for direction in DIRECTIONS}


def count_move(state: str, direction: str) -> None:
    """One move to `state` (where it ended), "up" or "down"."""
    key = (state if state in STATES else NORMAL, direction if direction in DIRECTIONS else "up")
    with _lock:
        _moves[key] += 1


def moves() -> dict[tuple[str, str], int]:
    with _lock:
        return dict(_moves)


def accounts_by_state(standings: Mapping[str, str | Standing]) -> dict[str, int]:
    """Accounts per state above normal (a reset's stored NORMAL marker is normal: not counted);
    a value this version cannot read counts nowhere."""
    counts = dict.fromkeys(STATES[1:], 0)
    for value in standings.values():
        standing = value if isinstance(value, Standing) else Standing.from_value(value)
        if standing is not None and standing.state in counts:
            counts[standing.state] += 1
    return counts


def accounts_family(standings: Mapping[str, str | Standing]) -> GaugeMetricFamily:
    family = GaugeMetricFamily("mailflow_reputation_accounts",
                               "Accounts on each step of the reputation ladder above normal (fleet-wide)",
                               labels=["state"])
    for state, count in accounts_by_state(standings).items():
        family.add_metric([state], count)
    return family


def moves_family() -> CounterMetricFamily:
    family = CounterMetricFamily("mailflow_reputation_moves",
                                 "Reputation ladder moves this process made, by the state reached and direction",
                                 labels=["state", "direction"])
    for (state, direction), count in moves().items():
        family.add_metric([state, direction], count)
    return family


class MovesCollector(Collector):
    """For a process that moves accounts and serves /metrics (the follower's listener)."""

    def collect(self) -> Iterator[Metric]:
        yield moves_family()
