"""The metrics directory on a full filesystem (a tmpfs this test mounts and fills). The worker's
files are mmapped: a write to a page the filesystem has no block for is SIGBUS, which killed
the milter worker before the fix. Run in a child process, so a SIGBUS fails the test instead
of ending pytest."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from tests.helpers.servers import REPO
from tests.helpers.sqlite_faults import tiny_filesystem

CHILD = """
import logging, sys
from pathlib import Path
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.multiprocess import MultiProcessCollector
from mailflow.metrics.publish import Publisher
from tests.helpers.sqlite_faults import fill

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stdout)
directory = Path(sys.argv[1])
registry = CollectorRegistry()
refused = Counter("refusals", "refusals by reason", ["reason"], registry=registry)
if sys.argv[2] == "full-at-start":
    filler = fill(directory)
    publisher = Publisher(registry, str(directory))
    refused.labels("x").inc()
    publisher.publish()
    print("alive", flush=True)
    sys.exit(0)
publisher = Publisher(registry, str(directory))
refused.labels("first").inc()
publisher.publish()
filler = fill(directory)
for n in range(1500):  # new label values: new keys, the file grows past what it has (64 KiB)
    refused.labels(f"reason-{n:04d}-" + "x" * 40).inc()
for _ in range(3):
    publisher.publish()
print("alive", flush=True)
filler.unlink()
publisher.publish()
total = sum(s.value for m in MultiProcessCollector(None, path=str(directory)).collect() for s in m.samples
            if s.name == "refusals_total")
print(f"total {total:.0f}", flush=True)
publisher.close()
"""


def child(directory: Path, how: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", CHILD, str(directory), how], capture_output=True, text=True,
                          timeout=60, cwd=REPO)


def test_a_full_metrics_filesystem_is_a_line_not_a_sigbus(tmp_path: Path) -> None:
    with tiny_filesystem(tmp_path / "metrics", size_kb=512) as directory:
        done = child(directory, "fill-then-grow")
    assert done.returncode != -signal.SIGBUS, "the worker died of SIGBUS"
    assert done.returncode == 0 and "alive" in done.stdout, done.stdout + done.stderr
    errors = [line for line in done.stdout.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1 and "cannot write this worker's counts (No space left on device)" in errors[0], done.stdout
    assert "counts written again" in done.stdout
    assert "total 1501" in done.stdout  # nothing counted in memory was lost


def test_metrics_files_that_cannot_be_made_are_a_line(tmp_path: Path) -> None:
    with tiny_filesystem(tmp_path / "metrics", size_kb=512) as directory:
        done = child(directory, "full-at-start")
    assert done.returncode == 0 and "alive" in done.stdout, done.stdout + done.stderr
    assert "ERROR metrics: cannot create this worker's files" in done.stdout
