"""A Redis Cluster on loopback: N masters, no replicas, each in its own directory, all ours.

`redis_cluster(directory, masters)` yields the master ports; every node is killed by pid after.
Start-up is bounded: each node must listen within 10 s and the cluster must report
`cluster_state:ok` on every node within READY_TIMEOUT seconds, else TimeoutError.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from tests.helpers.servers import free_port, wait_for_port

READY_TIMEOUT = 20.0
NODE_TIMEOUT_MS = 2000


def _start_node(directory: Path, port: int) -> subprocess.Popen[bytes]:
    node = directory / f"node-{port}"
    node.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         # The bus port is PORT+10000 unless given: past 65535 for a high free port.
         "--cluster-enabled", "yes", "--cluster-port", str(free_port()), "--cluster-config-file", str(node / "nodes.conf"),
         "--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--dir", str(node), "--repl-diskless-sync-delay", "0",
         "--logfile", str(node / "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port, proc=proc)
    return proc


def wait_cluster_ok(ports: list[int], timeout: float = READY_TIMEOUT, masters: int = 0) -> None:
    """Until every node says cluster_state:ok and knows `masters` masters (all `ports` by
    default), and every other node is a replica in sync with its master (bounded): a replica
    that never synced would not take over from its master."""
    masters = masters or len(ports)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(_node_ok(port, masters) for port in ports) and _synced(ports) == len(ports) - masters:
            return
        time.sleep(0.1)
    raise TimeoutError(f"cluster on {ports} not ok after {timeout}s")


def _node_ok(port: int, masters: int) -> bool:
    try:
        with redis.Redis(port=port, socket_timeout=1, decode_responses=True) as c:
            info = c.execute_command("CLUSTER", "INFO")
            text = info if isinstance(info, str) else str(info)
            known = sum(1 for line in str(c.execute_command("CLUSTER", "NODES")).splitlines()
                        if "master" in line and "fail" not in line)
            return "cluster_state:ok" in text and known == masters
    except redis.RedisError:
        return False


def _synced(ports: list[int]) -> int:
    """How many of the nodes are replicas with their link to the master up."""
    synced = 0
    for port in ports:
        try:
            with redis.Redis(port=port, socket_timeout=1, decode_responses=True) as c:
                replication = c.info("replication")
        except redis.RedisError:
            continue
        synced += replication.get("role") == "slave" and replication.get("master_link_status") == "up"
    return synced


@contextmanager
def redis_cluster(directory: Path, masters: int = 3, replicas: int = 0) -> Iterator[list[int]]:
    """`masters` cluster-enabled redis-servers on 127.0.0.1 (and `replicas` replicas of each),
    slots spread evenly by `redis-cli --cluster create`; yields their ports (which is a master:
    slot_owner, or ROLE)."""
    procs: list[subprocess.Popen[bytes]] = []
    ports: list[int] = []
    try:
        for _ in range(masters * (1 + replicas)):
            port = free_port()
            procs.append(_start_node(directory, port))
            ports.append(port)
        subprocess.run(["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
                        "--cluster-replicas", str(replicas), "--cluster-yes"],
                       check=True, capture_output=True, timeout=30)
        wait_cluster_ok(ports, masters=masters)
        yield ports
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        for proc in procs:
            proc.wait(timeout=10)


def flush_cluster(ports: list[int]) -> None:
    """Empty every master (between tests)."""
    for port in ports:
        with redis.Redis(port=port, socket_timeout=2) as c:
            c.flushall()


@pytest.fixture(scope="session")
def redis_cluster_ports(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[int]]:
    """One three-master cluster for the session (started on first use)."""
    with redis_cluster(tmp_path_factory.mktemp("redis-cluster")) as ports:
        yield ports


@pytest.fixture
def cluster_ports(redis_cluster_ports: list[int]) -> list[int]:
    """The session's cluster, emptied for this test."""
    flush_cluster(redis_cluster_ports)
    return redis_cluster_ports


@pytest.fixture(params=["sqlite", "redis", "cluster"], name="store_url")
def store_url_with_cluster(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """tests/conftest.py's store_url plus a three-master Cluster (redis+cluster://, given two of
    its nodes: the rest are found). Imported where a suite runs on every store (contract, milter
    protocol)."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path}/state.db"
    if request.param == "cluster":
        ports: list[int] = request.getfixturevalue("cluster_ports")
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in ports[:2])
    return str(request.getfixturevalue("redis_url"))


def node_id(port: int) -> str:
    with redis.Redis(port=port, socket_timeout=2, decode_responses=True) as c:
        return str(c.execute_command("CLUSTER", "MYID"))


def slot_owner(ports: list[int], slot: int) -> int:
    """The port of the master serving `slot` now (as the first reachable node sees it)."""
    with redis.Redis(port=ports[0], socket_timeout=2, decode_responses=True) as c:
        for start, end, master, *_ in c.execute_command("CLUSTER", "SLOTS"):
            if int(start) <= slot <= int(end):
                return int(master[1])
    raise LookupError(f"slot {slot} is served by no node")


def move_slot(ports: list[int], slot: int, target: int, batch: int = 100, max_rounds: int = 10_000,
              migrating: Callable[[int, int], None] | None = None) -> None:
    """Move one slot to the master on port `target` as `redis-cli --cluster reshard` does it:
    IMPORTING on the target, MIGRATING on the source, MIGRATE the keys in batches (clients get ASK
    meanwhile), then SETSLOT NODE everywhere (clients get MOVED after). Bounded in rounds.
    `migrating(source, target)` runs once the keys have moved and before SETSLOT NODE."""
    source = slot_owner(ports, slot)
    if source == target:
        return
    src_id, dst_id = node_id(source), node_id(target)
    with redis.Redis(port=source, socket_timeout=5, decode_responses=True) as src, \
            redis.Redis(port=target, socket_timeout=5, decode_responses=True) as dst:
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
        for _ in range(max_rounds):
            keys = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, batch)
            if not keys:
                break
            src.execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *keys)
        else:
            raise TimeoutError(f"slot {slot} still holds keys after {max_rounds} rounds")
        if migrating is not None:
            migrating(source, target)
        for port in (target, source, *(p for p in ports if p not in (source, target))):
            with redis.Redis(port=port, socket_timeout=5) as c:
                c.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
