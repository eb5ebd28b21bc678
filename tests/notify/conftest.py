from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mailflow import events
from tests.helpers.webhook_receiver import WebhookReceiver, write_secret


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    return write_secret(tmp_path)


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver()
    yield server
    server.close()


@pytest.fixture(autouse=True)
def no_leftover_subscribers() -> Iterator[None]:
    """A test's notifier must not hear the next test's events."""
    before = list(events._subscribers)
    yield
    events._subscribers[:] = before


@pytest.fixture(autouse=True)
def key_value_log_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    """Decision lines as key=value, whatever format an earlier test's setup_logging left."""
    from mailflow import log

    monkeypatch.setattr(log._formatter, "json", False)
