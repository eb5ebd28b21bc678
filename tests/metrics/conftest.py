"""A worker's metrics, started in this process as `mailflow run` starts them in a worker (real
SQLite store, a real listener on loopback), and put back to "off" afterwards."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mailflow import metrics
from mailflow.config import Config, parse_config
from mailflow.engine import Engine
from mailflow.metrics import worker
from mailflow.metrics.host import MetricsHost
from mailflow.store.base import Store
from mailflow.store.redis import RedisStore
from mailflow.store.sqlite import SqliteStore
from tests.helpers.servers import free_port


@dataclass
class Running:
    port: int
    engine: Engine
    served: worker.WorkerMetrics

    def scrape(self) -> dict[str, float]:
        return scrape(self.port)


def scrape(port: int) -> dict[str, float]:
    """Every sample of /metrics on 127.0.0.1:PORT: `name{label="value",...}` (labels sorted) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def engine_config(**extra: object) -> Config:
    return parse_config({"accounts": {"trusted_networks": ["192.0.2.0/28"], "ip_map": {"192.0.2.0/28": "web.example"}},
                         "ratelimit": {"limits": ["3/hour"]}, "suppression": {"hash_key_env": "MAILFLOW_SUPPRESSION_KEY"},
                         "metrics": {"listen": f"127.0.0.1:{free_port()}"}, **extra})


@contextmanager
def started(store: Store) -> Iterator[Running]:
    config = engine_config()
    host = MetricsHost.open(config.metrics)
    engine = Engine(config, store)
    served = worker.start(host, config, store, engine.store_health)
    assert served is not None and config.metrics.listen is not None
    try:
        yield Running(config.metrics.listen[1], engine, served)
    finally:
        served.close()
        host.close()
        store.close()
    assert type(metrics.RECORDER) is metrics.Recorder  # off again


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    with started(SqliteStore(str(tmp_path / "state.db"))) as run:
        yield run


@pytest.fixture
def running_redis(redis_url: str) -> Iterator[Running]:
    with started(RedisStore(redis_url, refresh_ms=100)) as run:
        yield run
