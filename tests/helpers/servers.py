"""Real servers for tests: redis-server and the mailflow milter, on free loopback ports.

Everything started here is stopped by pid; nothing listens beyond 127.0.0.1.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import tomli_w

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


@contextmanager
def redis_server(workdir: Path) -> Iterator[tuple[str, int]]:
    """A throw-away redis-server: no persistence, loopback only, stopped by pid."""
    port = free_port()
    pidfile = workdir / f"redis-{port}.pid"
    subprocess.run(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--daemonize", "yes", "--pidfile", str(pidfile), "--dir", str(workdir),
         "--logfile", str(workdir / f"redis-{port}.log")],
        check=True,
    )
    try:
        wait_for_port(port)
        yield f"redis://127.0.0.1:{port}/0", port
    finally:
        subprocess.run(["redis-cli", "-p", str(port), "shutdown", "nosave"], capture_output=True, timeout=10)
        _kill_pidfile(pidfile)


def _kill_pidfile(pidfile: Path) -> None:
    try:
        pid = int(pidfile.read_text().strip())
        os.kill(pid, 15)
    except (OSError, ValueError):
        pass


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(tomli_w.dumps(config))
    return path


class MilterProcess:
    """`python -m mailflow run` in a subprocess, with its log captured to a file."""

    def __init__(self, workdir: Path, config: dict[str, Any], name: str = "milter", port: int | None = None,
                 args: tuple[str, ...] = ()) -> None:
        self.port = port or free_port()
        self.args = args
        self.socket = f"inet:{self.port}@127.0.0.1"
        config = {**config, "milter": {**config.get("milter", {}), "socket": self.socket}}
        self.config_path = write_config(workdir / f"{name}.toml", config)
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> MilterProcess:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mailflow", "run", "-c", str(self.config_path), *self.args],
            stdout=log, stderr=log, cwd=REPO,
        )
        log.close()
        try:
            wait_for_port(self.port, proc=self.proc)
        except Exception:
            self.stop()
            raise RuntimeError(f"milter did not start:\n{self.log()}") from None
        return self

    def stop(self, graceful: bool = False) -> int | None:
        """SIGTERM (libmilter needs up to ~5 s to notice) or, by default, SIGKILL: all state is
        in the store, so tests need not wait for a graceful stop."""
        if self.proc and self.proc.poll() is None:
            if graceful:
                self.proc.terminate()
                try:
                    return self.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    pass
            self.proc.kill()
            self.proc.wait(timeout=5)
        return self.proc.returncode if self.proc else None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def decisions(self) -> list[dict[str, str]]:
        """The key=value decision lines logged so far, parsed."""
        import shlex

        lines = []
        for line in self.log().splitlines():
            if " stage=" not in line:
                continue
            fields = shlex.split(line[line.index(" stage=") + 1:])
            lines.append(dict(field.split("=", 1) for field in fields if "=" in field))
        return lines


def poll_until(check: Callable[[], bool], seconds: float = 5.0) -> bool:
    """Whether `check` came true within `seconds` (asked every 50 ms, and once more at the end)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()
