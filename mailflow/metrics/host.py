"""The metrics listener as `mailflow run` keeps it across reloads.

The supervisor binds the port once, as it binds the milter socket, and every worker it forks
serves it (a reload never meets "address in use"). Each worker counts into its own small files
in one directory (prometheus-client's multiprocess mode) and a scrape sums every file there, the
old worker's too: a reload is no counter reset, and what the old worker counts while it finishes
its sessions is not lost. The directory is new for each `mailflow run` and removed at its end,
so counters start again from zero only when the process really restarts (Prometheus's rate()
and increase() take that as the counter reset it is).
"""

from __future__ import annotations

import ipaddress
import logging
import shutil
import socket
import tempfile

from mailflow.settings import MetricsSettings

log = logging.getLogger("mailflow")


class MetricsListenError(OSError):
    """The metrics port could not be bound (in use, no permission)."""


def bind(address: tuple[str, int]) -> socket.socket:
    """A listening TCP socket, non-blocking: processes sharing it all wake on a connection and
    the ones that lose the accept must not block in it."""
    host, port = address
    family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(64)
    except OSError as exc:
        sock.close()
        shown = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
        raise MetricsListenError(f"cannot listen for metrics on {shown}: {exc.strerror or exc} "
                                 "(in use, or no permission?)") from None
    sock.setblocking(False)
    return sock


class MetricsHost:
    def __init__(self, sock: socket.socket | None = None, directory: str | None = None) -> None:
        self.socket, self.directory = sock, directory
        self.generation = 1  # the config's: 1 at start, one more at each reload that starts a worker

    @classmethod
    def open(cls, settings: MetricsSettings) -> MetricsHost:
        if settings.listen is None:
            return cls()
        sock = bind(settings.listen)
        host, port = settings.listen
        log.info("metrics on http://%s:%d/metrics and /health", f"[{host}]" if ":" in host else host, port)
        return cls(sock, tempfile.mkdtemp(prefix="mailflow-metrics-"))

    def close(self) -> None:
        """At stop: no more scrapes; the files go (workers still finishing write to them unlinked)."""
        if self.socket is not None:
            self.socket.close()
            self.socket = None
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None
