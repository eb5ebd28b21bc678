"""Races run for real: several threads trying one compare-and-swap at once."""

from __future__ import annotations

import threading
from collections.abc import Callable


def exactly_one_wins(swap: Callable[[str], bool], threads: int = 8) -> None:
    """`swap(new)` from `threads` threads at once, each from the same expected value: one wins."""
    wins: list[bool] = []
    racers = [threading.Thread(target=lambda i=i: wins.append(swap(f"v{i}"))) for i in range(threads)]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(timeout=10)
    assert sorted(wins) == [False] * (threads - 1) + [True]
