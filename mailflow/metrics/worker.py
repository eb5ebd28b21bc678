"""In a milter worker: count into the shared directory, serve /metrics and /health on the
listener the supervisor bound (host.py), until the worker is told to stop."""

from __future__ import annotations

import json
import logging
import os
import platform
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from mailflow import __version__, metrics
from mailflow.metrics.health import Health
from mailflow.metrics.host import MetricsHost
from mailflow.metrics.prom import PromRecorder
from mailflow.metrics.publish import Publisher
from mailflow.metrics.reputation import accounts_family
from mailflow.settings import Config
from mailflow.store.base import Store, StoreError
from mailflow.store.health import StoreHealth

log = logging.getLogger("mailflow")
HTTP_TIMEOUT = 5.0  # a client that sends its request slower than this is dropped
# Any local process reaches a loopback listener (a shared host's customers too): each connection
# is a thread in the milter worker, so at most this many at once (more are closed unanswered), and
# each is cut this long after it came, however slowly it trickles its request or reads the answer.
HTTP_DEADLINE = 10.0
HTTP_MAX_CONNECTIONS = 8


class MilterCollector(Collector):
    """What is read at scrape time, from this worker: build, config, store, holds, replica."""

    def __init__(self, health: Health, store: Store) -> None:
        self.health, self.store = health, store

    def collect(self) -> Iterator[Metric]:
        build = GaugeMetricFamily("mailflow_build_info", "mailflow's version and Python's", labels=["version", "python"])
        build.add_metric([__version__, platform.python_version()], 1)
        yield build
        yield GaugeMetricFamily("mailflow_config_generation", "1 at start, one more for each reload",
                                value=self.health.generation)
        yield GaugeMetricFamily("mailflow_config_loaded_timestamp_seconds", "When the running config was loaded",
                                value=self.health.loaded_at)
        up, _ = self.health.store_up()
        yield GaugeMetricFamily("mailflow_store_up", "1 when the store answers a ping", value=1 if up else 0)
        yield GaugeMetricFamily("mailflow_store_fallback_active", "1 while on_error = \"local\" enforces locally",
                                value=1 if self.health.store_health.local_mode else 0)
        if up:
            try:
                held = len(self.store.held_accounts())
            except StoreError:
                pass
            else:
                yield GaugeMetricFamily("mailflow_held_accounts", "Accounts held now (the store's count, fleet-wide)",
                                        value=held)
            try:
                yield accounts_family(self.store.reputation_states())
            except StoreError:
                pass
        age = self.health.replica_age() if self.health.replica_age is not None else None
        if age is not None and age != float("inf"):
            yield GaugeMetricFamily("mailflow_store_replica_age_seconds",
                                    "Seconds since the Redis suppression replica last refreshed", value=age)


def _handler(registry: CollectorRegistry, health: Health | None) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = HTTP_TIMEOUT

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            path = self.path.partition("?")[0]
            if path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, generate_latest(registry))
            elif path == "/health" and health is not None:
                report = health.report()
                body = json.dumps(report, indent=2).encode() + b"\n"
                self._send(503 if report["status"] == "critical" else 200, "application/json", body)
            else:
                self._send(404, "text/plain; charset=utf-8", b"mailflow serves /metrics and /health\n")

        def _send(self, code: int, content_type: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - no access log
            pass

    return Handler


class _BoundedServer(ThreadingHTTPServer):
    """At most HTTP_MAX_CONNECTIONS at once, each for at most HTTP_DEADLINE seconds (the serving
    loop checks between polls)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._open: dict[socket.socket, float] = {}  # connection -> monotonic deadline
        self._open_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            full = len(self._open) >= HTTP_MAX_CONNECTIONS
            if not full:
                self._open[request] = time.monotonic() + HTTP_DEADLINE
        if full:
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._open_lock:
                self._open.pop(request, None)

    def service_actions(self) -> None:
        now = time.monotonic()
        with self._open_lock:
            late = [conn for conn, deadline in self._open.items() if deadline <= now]
        for conn in late:
            try:
                conn.shutdown(socket.SHUT_RDWR)  # its thread's blocked read or write returns at once
            except OSError:
                pass  # already closed by its thread


class Served:
    """An HTTP server answering on an inherited listening socket, in a daemon thread."""

    def __init__(self, sock: socket.socket, registry: CollectorRegistry, health: Health | None) -> None:
        server = _BoundedServer(sock.getsockname()[:2], _handler(registry, health), bind_and_activate=False)
        server.socket.close()
        server.socket = sock  # this process's copy: closed with the server
        server.daemon_threads = True
        self.server: ThreadingHTTPServer | None = server
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="mailflow-metrics",
                         daemon=True).start()

    def close(self) -> None:
        """Answer no more (another process may go on serving the same socket)."""
        server, self.server = self.server, None
        if server is not None:
            server.shutdown()
            server.server_close()


class Summed(Collector):
    """Every worker's published counts, this one's brought up to date first."""

    def __init__(self, publisher: Publisher, directory: str) -> None:
        self.publisher = publisher
        self.reader = MultiProcessCollector(None, path=directory)  # type: ignore[no-untyped-call]

    def collect(self) -> Iterator[Metric]:
        self.publisher.publish()
        yield from self.reader.collect()  # type: ignore[no-untyped-call]


class WorkerMetrics:
    def __init__(self, served: Served, publisher: Publisher) -> None:
        self.served, self.publisher = served, publisher

    def stop_serving(self) -> None:
        """Asked to stop: the next worker answers scrapes (and sums what this one still counts)."""
        self.served.close()

    def close(self) -> None:
        """Sessions drained: the last counts into the file, then no more."""
        self.served.close()
        self.publisher.close()
        metrics.RECORDER = metrics.Recorder()


def start(host: MetricsHost | None, config: Config, store: Store, store_health: StoreHealth) -> WorkerMetrics | None:
    """Count from now on and serve, when `[metrics] listen` is set; else nothing (RECORDER stays idle)."""
    if host is None or host.socket is None or host.directory is None:
        return None
    recorder = PromRecorder()
    publisher = Publisher(recorder.registry, host.directory)
    metrics.RECORDER = recorder
    replica = getattr(store, "replica", None) if config.suppression.enabled else None
    health = Health(store, store_health, config.store.timeout_ms, config.path, host.generation,
                    (lambda: replica.age) if replica is not None else None,
                    replica.stale_after if replica is not None else 5.0)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Summed(publisher, host.directory))
    registry.register(MilterCollector(health, store))
    return WorkerMetrics(Served(host.socket, registry, health), publisher)
