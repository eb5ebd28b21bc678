from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, settings

from mailflow import events

# Property tests check behaviour, not speed: no per-example deadline on a busy 2-core CI machine.
settings.register_profile("mailflow", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("mailflow")

from tests.helpers.redis_cluster import cluster_ports, redis_cluster_ports  # noqa: F401 (one Cluster per session)
from tests.helpers.servers import MilterProcess, redis_server

# The suppression key the test configs name (hash_key_env); milters and CLI runs inherit it.
os.environ.setdefault("MAILFLOW_SUPPRESSION_KEY", "mailflow-test-suppression-key-0123456789")


@pytest.fixture(autouse=True)
def _mailflow_logging_restored() -> Iterator[None]:
    """A test that runs a CLI command in-process (setup_logging) must not leave the next test its
    handler, level and line format: with INFO left on, a later test's captured log can hold a hostile client's
    bytes, which pytest-xdist cannot send to its controller (the worker dies)."""
    from mailflow import log as mailflow_log

    logger = logging.getLogger("mailflow")
    level, handlers, propagate = logger.level, logger.handlers[:], logger.propagate
    json_lines = mailflow_log._formatter.json  # [log] format = "json" renders decision lines differently
    yield
    logger.setLevel(level)
    logger.handlers[:] = handlers
    logger.propagate = propagate
    mailflow_log._formatter.json = json_lines


@pytest.fixture
def published() -> Iterator[list[events.Event]]:
    """The policy events published while the test runs."""
    seen: list[events.Event] = []
    stop = events.subscribe(seen.append)
    yield seen
    stop()


@pytest.fixture(scope="session")
def redis_instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    with redis_server(tmp_path_factory.mktemp("redis")) as instance:
        yield instance


@pytest.fixture
def redis_url(redis_instance: tuple[str, int]) -> str:
    """A real Redis, emptied before each test."""
    url = redis_instance[0]
    client = redis.Redis.from_url(url)
    client.flushall()
    client.close()
    return url


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test using this runs once per store backend."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path}/state.db"
    return str(request.getfixturevalue("redis_url"))


@pytest.fixture
def start_milter(tmp_path: Path) -> Iterator[Callable[..., MilterProcess]]:
    started: list[MilterProcess] = []

    def start(config: dict[str, Any], name: str = "milter") -> MilterProcess:
        milter = MilterProcess(tmp_path, config, name=name).start()
        started.append(milter)
        return milter

    yield start
    for milter in started:
        milter.stop()
