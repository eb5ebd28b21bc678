"""A real HTTP server on 127.0.0.1 standing in for a hosting panel's webhook: it answers each
POST as scripted ("500", "429", "timeout", "200", ...; the last answer repeats) and keeps what
it received. "timeout" holds the answer longer than the notifier waits, then answers 200 to no
one. Bounded: bodies up to 64 KiB, a socket timeout on every connection."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from mailflow.notify.payload import verify

MAX_BODY = 64 * 1024
SECRET = b"webhook-test-secret-0123456789abcdef"  # what the tests' webhook_secret_file holds


def write_secret(directory: Path) -> Path:
    """A webhook_secret_file as mailflow accepts it (mode 0600)."""
    path = directory / "webhook.key"
    path.write_bytes(SECRET + b"\n")
    path.chmod(0o600)
    return path


@dataclass
class Delivery:
    at: float  # monotonic
    headers: dict[str, str]
    body: bytes
    answer: str

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class WebhookReceiver:
    answers: list[str] = field(default_factory=lambda: ["200"])
    hold_seconds: float = 2.0  # how long "timeout" keeps the client waiting
    received: list[Delivery] = field(default_factory=list)

    def __post_init__(self) -> None:
        receiver = self
        self._lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            timeout = 5

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = min(int(self.headers.get("Content-Length") or 0), MAX_BODY)
                body = self.rfile.read(length)
                with receiver._lock:
                    answer = receiver.answers[min(len(receiver.received), len(receiver.answers) - 1)]
                    receiver.received.append(Delivery(time.monotonic(), dict(self.headers.items()), body, answer))
                if answer == "timeout":
                    time.sleep(receiver.hold_seconds)
                    answer = "200"
                headers = {"Retry-After": "0"} if answer == "429" else {}
                if answer.startswith("3"):  # a client that followed it would come back here: recorded too
                    headers["Location"] = "/elsewhere"
                try:
                    self.send_response(int(answer))
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:
                    pass  # the client gave up (its timeout)

            do_GET = do_POST  # noqa: N815 - what a followed redirect turns a POST into

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}/mailflow"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        daemon=True)
        self._thread.start()

    def events(self, secret: bytes) -> list[dict[str, Any]]:
        """The bodies of deliveries answered 2xx, each signature checked."""
        with self._lock:
            taken = [d for d in self.received if d.answer.startswith("2")]
        for delivery in taken:
            assert verify(secret, delivery.body, delivery.headers["X-Mailflow-Signature"]), delivery
        return [d.json() for d in taken]

    def wait(self, count: int, timeout: float = 20.0) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.received) >= count:
                    return list(self.received)
            time.sleep(0.05)
        raise TimeoutError(f"{len(self.received)} of {count} webhook deliveries arrived")

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
