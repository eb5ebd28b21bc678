"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mailflow.store.sqlite import SqliteStore


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    """A real SQLite store of the test's own (a module may define its own `store` instead)."""
    s = SqliteStore(str(tmp_path / "state.db"))
    yield s
    s.close()
