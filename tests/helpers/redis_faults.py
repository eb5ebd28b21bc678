"""Faults for the Redis store, made with real parts: a redis-server this test owns (kill -9,
SIGSTOP/SIGCONT, restart with or without its data), and a loopback TCP proxy that cuts a
connection in the middle of a reply.

Everything listens on 127.0.0.1 only and is stopped by pid or socket; every loop is bounded.
"""

from __future__ import annotations

import select
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import redis

from tests.helpers.servers import free_port, wait_for_port

T = TypeVar("T")


class RedisProcess:
    """One redis-server on a fixed loopback port, run in the foreground so its pid is ours."""

    def __init__(self, workdir: Path, *args: str, port: int | None = None, persist: bool = False) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.args = list(args)
        self.persist = persist  # an append-only file fsynced per write: data survives kill -9
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisProcess:
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.persist else ["--appendonly", "no"]
        log = self.workdir / f"redis-{self.port}.log"
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", *persistence,
             "--dir", str(self.workdir), "--appenddirname", f"aof-{self.port}", "--logfile", str(log), *self.args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, proc=self.proc)
        return self

    def kill(self) -> None:
        """kill -9: no goodbye to the clients beyond what the kernel sends."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a stopped process must die too
            self.proc.kill()
            self.proc.wait(timeout=10)

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def restart(self) -> RedisProcess:
        self.kill()
        return self.start()

    def client(self, password: str | None = None) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, password=password, decode_responses=True,
                           socket_timeout=5)

    def clients_connected(self, password: str | None = None) -> int:
        """Normal clients connected now, this query's own connection excluded."""
        with self.client(password) as admin:
            return len(admin.client_list(_type="normal")) - 1


@contextmanager
def redis_process(workdir: Path, *args: str, persist: bool = False) -> Iterator[RedisProcess]:
    server = RedisProcess(workdir, *args, persist=persist).start()
    try:
        yield server
    finally:
        server.kill()


class CuttingProxy:
    """A loopback TCP proxy in front of Redis. While `cut_after` is set, a data reply longer than
    that many bytes reaches the client only in part, then the connection is reset: Redis has run
    the command, the client sees a reply cut in the middle. A new connection's handshake (HELLO,
    CLIENT SETINFO) passes whole, so each cut falls on a command's own reply. While `trickle` is
    set, replies go out one byte every `trickle` seconds (a sick link or middlebox). While
    `delay_every` is set, every that many-th reply to a command is held `delay` seconds (a store
    failing some of the time)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.cut_after: int | None = None
        self.cuts = 0
        self.trickle: float | None = None
        self.delay_every: int | None = None
        self.delay = 0.0
        self._replies = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port = int(self._listener.getsockname()[1])
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                continue
            pump = threading.Thread(target=self._pump, args=(client,), daemon=True)
            self._threads.append(pump)
            pump.start()

    def _pump(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=2)
        except OSError:
            client.close()
            return
        request = b""
        with client, upstream:
            while not self._stop.is_set():
                ready, _, _ = select.select([client, upstream], [], [], 0.1)
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    if sock is client:
                        request = data[:40].upper()
                        upstream.sendall(data)
                        continue
                    cut = self.cut_after
                    handshake = b"HELLO" in request or b"CLIENT" in request
                    if cut is not None and len(data) > cut and not handshake:
                        client.sendall(data[:cut])
                        self.cuts += 1
                        # SO_LINGER 0: close with a reset, as a dying middlebox or peer would.
                        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        return
                    if not self._pass_on(client, data, handshake):
                        return

    def _pass_on(self, client: socket.socket, data: bytes, handshake: bool) -> bool:
        """A reply to the client, trickled or delayed as set; False once the client is gone."""
        every = self.delay_every
        if every and not handshake:
            self._replies += 1  # a lost increment under threads only shifts which reply waits
            if self._replies % every == 0:
                self._stop.wait(self.delay)
        try:
            if not self.trickle:
                client.sendall(data)
                return True
            for at in range(len(data)):
                gap = self.trickle
                if self._stop.is_set() or not gap:  # trickling ended: the rest at once
                    client.sendall(data[at:])
                    break
                client.sendall(data[at:at + 1])
                self._stop.wait(gap)
        except OSError:  # the client gave up on this reply and closed
            return False
        return True

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        for thread in self._threads:
            thread.join(timeout=2)


@dataclass
class Timed:
    """Results of calls made under a fault, with the slowest call's time."""

    results: list[object] = field(default_factory=list)
    worst: float = 0.0

    def add(self, result: object, seconds: float) -> None:
        self.results.append(result)
        self.worst = max(self.worst, seconds)


def timed(call: Callable[[], T]) -> tuple[T, float]:
    started = time.monotonic()
    result = call()
    return result, time.monotonic() - started


def burst(call: Callable[[], T], count: int, threads: int) -> Timed:
    """`count` calls on `threads` threads at once (the way libmilter's threads meet an outage)."""
    out = Timed()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for result, seconds in pool.map(lambda _: timed(call), range(count)):
            out.add(result, seconds)
    return out
