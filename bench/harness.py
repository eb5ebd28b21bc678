"""Shared pieces of the benchmarks: processes started and stopped by pid, CPU from /proc, a scraper."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.helpers.servers import REPO, wait_for_port

TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str]:
    """/proc/PID/stat fields after the command name (which may hold spaces): [0] is the state."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int(_stat(int(entry.name))[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                pass  # gone meanwhile
    return found


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) of a process and its children, live ones (rspamd's workers)
    included; a child that has exited counts through the parent's cutime/cstime."""
    total = 0
    for member in [pid, *children(pid)]:
        try:
            total += sum(int(_stat(member)[i]) for i in (11, 12, 13, 14))
        except (OSError, ValueError, IndexError):
            pass  # a child that exited between the listing and the read
    return total / TICKS


@contextmanager
def python_process(module: str, *args: str, port: int, env: dict[str, str] | None = None,
                   cwd: Path | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m module` run from `cwd` (default this repository: its code), killed afterwards."""
    proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=cwd or REPO, env={**os.environ, **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc=proc)
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


def spread(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 4), "min": round(min(values), 4), "max": round(max(values), 4)}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


SCRAPE_SECONDS = 1.0


@contextmanager
def scraping(port: int, every: float = SCRAPE_SECONDS) -> Iterator[list[int]]:
    """Scrape mailflow's /metrics on 127.0.0.1:PORT every `every` seconds while inside, as
    Prometheus would (a bench measures the milter as an admin runs it, metrics on). Yields the
    scrape count so far ([0]): a run can check it was scraped. Loopback only; each request is
    bounded (5 s), and a failed one only waits for the next."""
    url, stop, done = f"http://127.0.0.1:{port}/metrics", threading.Event(), [0]

    def run() -> None:
        while not stop.wait(every):
            try:
                with urllib.request.urlopen(url, timeout=5) as reply:
                    reply.read()
                done[0] += 1
            except (OSError, urllib.error.URLError):
                pass  # a milter restarting: the next scrape tries again

    thread = threading.Thread(target=run, name="bench-scrape", daemon=True)
    thread.start()
    try:
        yield done
    finally:
        stop.set()
        thread.join(timeout=10)
