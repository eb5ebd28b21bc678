"""The store every contract test runs against: each backend in turn, a three-master Redis
Cluster (redis+cluster://) among them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mailflow.store import Store, open_store
from tests.helpers.redis_cluster import store_url_with_cluster  # noqa: F401 (store_url: a Cluster too)


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = open_store(store_url, timeout_ms=1000)
    yield s
    s.close()
