"""The store every contract test runs against: each backend in turn, a three-master Redis
Cluster (redis+cluster://) among them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mailflow.store import Store, open_store


@pytest.fixture(params=["sqlite", "redis", "cluster"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Overrides tests/conftest.py's for the contract tests: the Cluster store as a third backend."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path}/state.db"
    if request.param == "cluster":
        ports: list[int] = request.getfixturevalue("cluster_ports")
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in ports[:2])
    return str(request.getfixturevalue("redis_url"))


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = open_store(store_url, timeout_ms=1000)
    yield s
    s.close()
