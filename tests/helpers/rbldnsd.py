"""Debian's rbldnsd (the server most DNSBLs run) on a free loopback UDP port, for tests.

Each dataset is (zone, type, text): rbldnsd serves `zone` from a file of that text and type
(ip4set, ip6trie, ...); one zone may have several datasets, whose answers it combines (as
Spamhaus ZEN combines SBL, XBL and PBL). rbldnsd chroots to a fresh directory holding the files
and drops root for its own `rbldns` user; it is stopped by its pid.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import dns.exception
import dns.message
import dns.query

RBLDNSD = "/usr/sbin/rbldnsd"


def rbldnsd_available() -> bool:
    return Path(RBLDNSD).is_file()


@dataclass(frozen=True)
class Rbldnsd:
    pid: int
    server_address: tuple[str, int]  # the name the loopback stub uses too
    root: Path


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(port: int, zone: str) -> bool:
    """Any DNS answer (NXDOMAIN included) to a name under `zone`: the zones are loaded."""
    try:
        dns.query.udp(dns.message.make_query(f"1.0.0.127.{zone}", "A"), "127.0.0.1", port=port, timeout=0.2)
        return True
    except (dns.exception.Timeout, OSError):
        return False


@contextmanager
def rbldnsd(datasets: Sequence[tuple[str, str, str]], timeout: float = 10.0) -> Iterator[Rbldnsd]:
    if not datasets:
        raise ValueError("rbldnsd needs at least one dataset")
    root = Path(tempfile.mkdtemp(prefix="mailflow-rbldnsd-"))
    root.chmod(0o755)  # read by the rbldns user after it drops root
    specs = []
    for n, (zone, kind, text) in enumerate(datasets):
        path = root / f"{n}-{kind}-{zone}.txt"
        path.write_text(text)
        path.chmod(0o644)
        specs.append(f"{zone}:{kind}:{path.name}")
    port = _free_udp_port()
    log = (root / "rbldnsd.out").open("wb")  # its start-up messages, shown if it fails
    proc = subprocess.Popen([RBLDNSD, "-n", "-r", str(root), "-w", ".", "-b", f"127.0.0.1/{port}", "-c", "0", *specs],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while not _answers(port, datasets[0][0]):
            if proc.poll() is not None or time.monotonic() > deadline:
                output = (root / "rbldnsd.out").read_text(errors="replace").strip()
                raise RuntimeError(f"rbldnsd did not start on 127.0.0.1/{port}: {output}")
        yield Rbldnsd(proc.pid, ("127.0.0.1", port), root)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log.close()
        shutil.rmtree(root, ignore_errors=True)
