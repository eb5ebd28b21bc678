"""The suppression key filter: never "not listed" for a listed key; rarely "maybe" for others."""

from __future__ import annotations

import random

from hypothesis import given, strategies as st

from mailflow.suppression.keyfilter import MIN_CAPACITY, KeyFilter
from mailflow.suppression.keys import Keyring

KEYRING = Keyring(b"0123456789abcdef0123")
hex_keys = st.text("0123456789abcdef", min_size=32, max_size=32)


@given(st.lists(hex_keys | st.text(min_size=1), max_size=200))
def test_every_added_key_is_found(keys: list[str]) -> None:
    key_filter = KeyFilter(capacity=len(keys))
    for key in keys:
        key_filter.add(key)
    assert all(key_filter.might_contain(key) for key in keys)


def test_false_positives_stay_near_one_percent_at_the_planned_size() -> None:
    rng = random.Random(25)
    key_filter = KeyFilter(capacity=MIN_CAPACITY)
    for n in range(MIN_CAPACITY):
        key_filter.add(KEYRING.lookup_key("addr", f"listed{n}@{rng.random()}.example"))
    others = [KEYRING.lookup_key("addr", f"other{n}@dest.example") for n in range(20_000)]
    assert sum(key_filter.might_contain(key) for key in others) / len(others) < 0.02


def test_past_twice_its_size_it_asks_to_be_rebuilt() -> None:
    key_filter = KeyFilter(capacity=10)
    for n in range(2 * MIN_CAPACITY + 1):
        key_filter.add(f"{n:032x}")
    assert key_filter.overfull
