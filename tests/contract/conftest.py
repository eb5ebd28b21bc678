"""The store every contract test runs against: each backend in turn (tests/conftest.py's store_url)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mailflow.store import Store, open_store


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = open_store(store_url, timeout_ms=1000)
    yield s
    s.close()
