"""A Redis Sentinel set on loopback: a master, one replica and three sentinels, all ours.

Sentinels notice a dead master after DOWN_AFTER_MS and fail over within a few seconds. The
master and replica are RedisProcess (kill -9, restart empty); everything is stopped by pid.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from tests.helpers.redis_faults import RedisProcess
from tests.helpers.servers import free_port, wait_for_port

SERVICE = "mfmaster"
DOWN_AFTER_MS = 500
FAILOVER_TIMEOUT_MS = 3000


class SentinelProcess:
    def __init__(self, workdir: Path, master_port: int, password: str | None) -> None:
        self.port = free_port()
        self.password = password
        self.conf = workdir / f"sentinel-{self.port}.conf"
        auth = [f"requirepass {password}", f"sentinel sentinel-pass {password}"] if password else []
        self.conf.write_text("\n".join([
            f"port {self.port}", "bind 127.0.0.1", f"dir {workdir}", f"logfile {workdir}/sentinel-{self.port}.log",
            f"sentinel monitor {SERVICE} 127.0.0.1 {master_port} 2",
            f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}",
            f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}",
            f"sentinel parallel-syncs {SERVICE} 1", *auth, ""]))
        self.proc = subprocess.Popen(["redis-server", str(self.conf), "--sentinel"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, proc=self.proc)

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, decode_responses=True,
                           socket_timeout=2)

    def master_port(self) -> int:
        with self.client() as c:
            return int(c.execute_command("SENTINEL", "get-master-addr-by-name", SERVICE)[1])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


class SentinelSet:
    """master + replica + three sentinels (quorum 2)."""

    def __init__(self, workdir: Path, sentinel_password: str | None = None) -> None:
        self.workdir = workdir
        self.master = RedisProcess(workdir)
        self.replica = RedisProcess(workdir, "--replicaof", "127.0.0.1", str(self.master.port))
        self.sentinels: list[SentinelProcess] = []
        self.sentinel_password = sentinel_password

    def start(self) -> None:
        self.master.start()
        self.replica.start()
        for _ in range(3):
            self.sentinels.append(SentinelProcess(self.workdir, self.master.port, self.sentinel_password))
        self.wait_ready()

    def url(self, query: str = "") -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}/0" + (f"?{query}" if query else "")

    def wait_ready(self, timeout: float = 15.0) -> None:
        """Until the replica is in sync and every sentinel knows the replica and the other two."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._ready():
                return
            time.sleep(0.1)
        raise TimeoutError("the sentinel set did not settle")

    def _ready(self) -> bool:
        with self.replica.client() as c:
            if c.info("replication").get("master_link_status") != "up":
                return False
        for sentinel in self.sentinels:
            with sentinel.client() as c:
                state = c.execute_command("SENTINEL", "MASTER", SERVICE)
            fields = dict(zip(state[::2], state[1::2])) if isinstance(state, list) else dict(state)
            if int(fields["num-slaves"]) < 1 or int(fields["num-other-sentinels"]) < 2:
                return False
        return True

    def wait_promoted(self, port: int, timeout: float = 15.0) -> float:
        """Until the server on `port` says ROLE master; the monotonic time it first did."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with redis.Redis(host="127.0.0.1", port=port, decode_responses=True, socket_timeout=1) as c:
                    if c.execute_command("ROLE")[0] == "master":
                        return time.monotonic()
            except redis.RedisError:
                pass
            time.sleep(0.02)
        raise TimeoutError(f"127.0.0.1:{port} was not promoted")

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        self.replica.kill()
        self.master.kill()


def readonly_errors(server: RedisProcess) -> int:
    """Writes this server refused as a replica (INFO errorstats, READONLY): 0 if it never was written to."""
    with server.client() as c:
        stats = c.info("errorstats")
    return int(stats.get("errorstat_READONLY", {}).get("count", 0))


@contextmanager
def sentinel_set(workdir: Path, sentinel_password: str | None = None) -> Iterator[SentinelSet]:
    fleet = SentinelSet(workdir, sentinel_password)
    try:
        fleet.start()
        yield fleet
    finally:
        fleet.stop()
