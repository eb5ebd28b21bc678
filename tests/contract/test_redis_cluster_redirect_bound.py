"""A node that answers MOVED in a loop (to itself), slowly: a real Cluster behind the store, the
misbehaving node a loopback socket (no Redis can be made to do it). Each call ends with a
StoreError (MOVED, or the timeout) after at most ROUNDS redirections, and no redirection answered past the
store's timeout is followed, and one followed has only what is left of it: the call ends within
the timeout (before: 2.5 timeouts with 250 ms replies and a 300 ms timeout)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
from redis.crc import key_slot

from mailflow.ratelimit.limits import parse_limit
from mailflow.store import StoreError, open_store
from mailflow.store.redis import limit_key
from mailflow.store.redis_cluster import RedisClusterStore
from mailflow.store.redis_cluster_routes import ROUNDS

ACCOUNT = "shop.example"
LIMITS = (parse_limit("50/hour"),)
SLOT = key_slot(limit_key(ACCOUNT, LIMITS[0]).encode())
HANDSHAKE = {b"HELLO": b"%2\r\n+proto\r\n:3\r\n+server\r\n+redis\r\n", b"CLIENT": b"+OK\r\n", b"AUTH": b"+OK\r\n"}


def _answer(conn: socket.socket, port: int, delay: float) -> None:
    """Every command answered MOVED to this port (the handshake OK), each after `delay`."""
    with conn:
        while data := conn.recv(65536):
            lines = data.split(b"\r\n")
            names = [lines[i + 2].upper() for i, line in enumerate(lines[:-2]) if line.startswith(b"*")]
            moved = any(name not in HANDSHAKE for name in names)
            if moved:
                time.sleep(delay)
            conn.sendall(b"".join(HANDSHAKE.get(name, f"-MOVED {SLOT} 127.0.0.1:{port}\r\n".encode())
                                  for name in names))


@pytest.fixture
def moved_loop() -> Iterator[tuple[int, list[float]]]:
    delay = [0.0]
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=_answer, args=(conn, port, delay[0]), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield port, delay
    server.close()


def test_a_moved_loop_ends_in_bounded_rounds_and_time(cluster_ports: list[int],
                                                      moved_loop: tuple[int, list[float]]) -> None:
    port, delay = moved_loop
    store = open_store(f"redis+cluster://127.0.0.1:{cluster_ports[0]}/0", timeout_ms=300)
    assert isinstance(store, RedisClusterStore)
    try:
        store.debit(ACCOUNT, LIMITS, 1)  # the slot table read
        routes = store._routes
        moved = rf"MOVED: slot {SLOT} is served by 127.0.0.1:{port}"
        # 250 ms replies: the first MOVED is followed with the 50 ms left, then the call ends.
        for pause, rounds, within, error in ((0.0, ROUNDS, 0.3, moved), (0.25, 1, 0.36, "no answer within 300 ms")):
            delay[0] = pause
            routes.close()  # fresh connections: each handler reads `delay` when it starts
            routes._table[SLOT] = ("127.0.0.1", port)
            before, began = routes.redirected["MOVED"], time.monotonic()
            with pytest.raises(StoreError, match=error):
                store.debit(ACCOUNT, LIMITS, 1)
            took = time.monotonic() - began
            assert routes.redirected["MOVED"] - before == rounds and took < within, (pause, took)
    finally:
        store.close()
