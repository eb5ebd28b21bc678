"""A private Prometheus (Debian's package, never its system service): its own config, data
directory and loopback port, scraping given loopback targets every second."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from tests.helpers.servers import free_port, wait_for_port

BINARY = "/usr/bin/prometheus"
PROMTOOL = "/usr/bin/promtool"


def available() -> bool:
    return shutil.which(BINARY) is not None


class PrivatePrometheus:
    def __init__(self, port: int) -> None:
        self.port = port

    def query(self, expr: str) -> list[tuple[dict[str, str], float]]:
        """An instant query's vector: (labels, value) for each series."""
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=5) as response:
            answer = json.load(response)
        assert answer["status"] == "success", answer
        return [(item["metric"], float(item["value"][1])) for item in answer["data"]["result"]]

    def value(self, expr: str) -> float | None:
        """The one value of a query that yields at most one series (None: no series)."""
        result = self.query(expr)
        assert len(result) <= 1, result
        return result[0][1] if result else None

    def wait_for(self, expr: str, expected: float, timeout: float = 30.0) -> None:
        """Until the query answers `expected` (scrapes land every second), bounded."""
        deadline, seen = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            seen = self.value(expr)
            if seen == expected:
                return
            time.sleep(0.5)
        raise AssertionError(f"{expr}: {seen}, expected {expected} within {timeout} s")


def wait_until_ready(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Prometheus listens before its storage is open, and answers queries 503 until then: wait
    for /-/ready (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:  # 503 (urllib's HTTPError is an OSError) or not answering yet
            pass
        time.sleep(0.2)
    raise AssertionError(f"prometheus on port {port} not ready within {timeout} s (exit {proc.poll()})")


@contextmanager
def prometheus(workdir: Path, targets: dict[str, int], rule_files: tuple[Path, ...] = ()) -> Iterator[PrivatePrometheus]:
    """Prometheus scraping job -> 127.0.0.1:port every second, stopped afterwards."""
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{target}"]}]}
                           for job, target in targets.items()],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = open(workdir / "prometheus.log", "ab")
    proc = subprocess.Popen([BINARY, f"--config.file={workdir / 'prometheus.yml'}",
                             f"--storage.tsdb.path={workdir / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log, stderr=log)
    log.close()
    try:
        wait_for_port(port, timeout=30, proc=proc)
        wait_until_ready(port, proc, timeout=30)
        yield PrivatePrometheus(port)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
