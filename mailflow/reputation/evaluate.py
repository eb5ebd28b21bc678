"""Where the ladder runs: after each batch of feedback, for the accounts it touched, and on a
timer for every account above normal (the moves down). STUB: the ladder issue's helper fills it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from mailflow.config import Config
from mailflow.reputation.model import Standing
from mailflow.store.base import Store


@dataclass(frozen=True)
class Move:
    account: str
    before: Standing | None  # None: normal
    after: Standing | None


def evaluate(config: Config, store: Store, accounts: Iterable[str], now: float,
             evidence: Mapping[str, Sequence[str]] | None = None) -> list[Move]:
    """Read each account's feedback, move it on the ladder where a rule says so (stored, an event
    published with its evidence); the moves made."""
    return []
