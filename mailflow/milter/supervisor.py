"""The `mailflow run` process: owns the listening socket and the signals, forks the workers.

It never starts libmilter's threads (see server.py for why), so its Python signal handlers run:
- SIGHUP: read the config file again. Invalid: log why, with its key, and keep everything as it
  is. Valid: fork a worker with it; once that worker is ready, the old one stops accepting and
  finishes the sessions it has (bounded by the drain timeout). The socket stays open throughout,
  so no connection is refused and no session is cut. `[milter] socket` needs a restart.
- SIGTERM, SIGINT: every worker stops accepting and drains; exit 0 once they are gone.
- A worker that dies unexpectedly is logged and replaced (after a growing pause if it keeps
  dying young). A worker that reports a fatal error (the suppression key differs from the
  lists') stops everything with its exit code, as the single process did.
The supervisor holds no store, thread or libmilter state beyond the socket: workers are forked
from a process with one thread, and every thread (Redis replica, key watcher) starts in them.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType

from mailflow.config import Config
from mailflow.metrics.host import MetricsHost
from mailflow.milter.server import (Describe, Listener, ListenError, WorkerLink, close_listener, open_listener,
                                    serve_worker, set_socket_permissions)
from mailflow.urls import redact_url

log = logging.getLogger("mailflow")
DRAIN_SECONDS = 30.0  # default of `run --drain-timeout`
START_SECONDS = 30.0  # a worker not ready by then is killed (it has accepted nothing yet)
KILL_GRACE = 10.0  # beyond the drain: a stopping worker still there is killed
MAX_PAUSE = 30.0  # between restarts of a worker that keeps dying young
YOUNG = 10.0
BAD_INPUT = 2  # the exit code `describe` gives a bad config, store or file (cli.EXIT_USAGE)
SIGNALS = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)


class WorkerFailed(Exception):
    """The first worker could not start, or a worker stopped the milter (key mismatch)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Worker:
    pid: int
    link: WorkerLink
    config: Config
    started: float = field(default_factory=time.monotonic)
    ready: bool = False
    stopping_since: float | None = None
    fatal: tuple[int, str] | None = None
    buffer: bytes = b""


class Supervisor:
    def __init__(self, config: Config, reload_config: Callable[[], Config], describe: Describe,
                 drain_seconds: float = DRAIN_SECONDS, on_reload: Callable[[Config], None] | None = None) -> None:
        self.config, self.reload_config, self.describe = config, reload_config, describe
        self.drain_seconds, self.on_reload = drain_seconds, on_reload
        self.workers: list[Worker] = []
        self.active: Worker | None = None  # ready and serving
        self.starting: Worker | None = None  # forked, not ready yet
        self.stopping = False
        self.reload_again = False
        self.failure: WorkerFailed | None = None
        self.restart_at: float | None = None
        self.young_deaths = 0
        self.signals: list[int] = []

    def run(self) -> int:
        listener = open_listener(self.config.milter)
        self.listener: Listener = listener
        self.listener_closed = False
        self.metrics = MetricsHost()
        try:
            self.metrics = MetricsHost.open(self.config.metrics)  # kept across reloads, as the socket
        except OSError:
            self._close_listener()
            raise
        log.info("mailflow listening on %s (mode=%s, store=%s, on_error=%s, drain %gs)",
                 self.config.milter.socket, self.config.milter.mode, redact_url(self.config.store.url),
                 self.config.milter.on_error, self.drain_seconds)
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        self.wake_fds = (wake_r, wake_w)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in SIGNALS}
        old_wakeup = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        try:
            self.starting = self._fork(self.config)
            while not (self.stopping and not self.workers):
                self._wait(wake_r)
                self._step()
        finally:
            for worker in self.workers:  # only after an error in this loop: nothing must outlive it
                _kill(worker.pid)
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            os.close(wake_r)
            os.close(wake_w)
            self._close_listener()
        log.info("mailflow stopped")
        if self.failure:
            raise self.failure
        return 0

    # -- events ----------------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signals.append(signum)

    def _wait(self, wake_r: int) -> None:
        fds = [wake_r] + [w.link.status_r for w in self.workers]
        try:
            readable, _, _ = select.select(fds, [], [], 0.5)
        except InterruptedError:
            return
        if wake_r in readable:
            while _read(wake_r):
                pass

    def _step(self) -> None:
        while self.signals:
            signum = self.signals.pop(0)
            if signum == signal.SIGHUP:
                self._reload()
            elif signum in (signal.SIGTERM, signal.SIGINT):
                self._stop(f"{signal.Signals(signum).name} received")
        for worker in list(self.workers):
            self._read_status(worker)
        self._reap()
        self._timers()

    def _read_status(self, worker: Worker) -> None:
        while chunk := _read(worker.link.status_r):
            worker.buffer += chunk
        while b"\n" in worker.buffer:
            line, worker.buffer = worker.buffer.split(b"\n", 1)
            if line == b"ready":
                self._on_ready(worker)
            elif line == b"stopping":
                self._on_stopping(worker)
            elif line.startswith(b"fatal "):
                code, _, message = line[6:].decode("utf-8", "replace").partition(" ")
                self._on_fatal(worker, int(code) if code.isdigit() else 70, message)

    def _on_ready(self, worker: Worker) -> None:
        worker.ready = True
        if worker is not self.starting:
            return
        old, self.active, self.starting = self.active, worker, None
        if old is None:
            log.info("worker %d ready", worker.pid)
        else:
            log.info("config %s reloaded: worker %d serves new connections; worker %d finishes its sessions",
                     worker.config.path, worker.pid, old.pid)
            self._retire(old)
        self.config = worker.config
        if self.reload_again and not self.stopping:
            self.reload_again = False
            self._reload()

    def _on_stopping(self, worker: Worker) -> None:
        if self.stopping or worker.stopping_since is not None:
            return
        self._retire(worker)
        if worker is self.active:
            self.active = None
            log.warning("worker %d was stopped by a signal sent to it, not to this process (%d); starting another",
                        worker.pid, os.getpid())
            if self.starting is None:
                self.starting = self._fork(self.config)

    def _on_fatal(self, worker: Worker, code: int, message: str) -> None:
        worker.fatal = (code, message)
        if worker is self.starting and self.active is not None:
            log.error("reload refused: %s; the running config stays", message)
        elif code == 2 or worker is self.starting:  # a bad key or config: a restart would fail alike
            self.failure = self.failure or WorkerFailed(message, code)
            self._stop(f"worker {worker.pid} failed")

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = next((w for w in self.workers if w.pid == pid), None)
            if worker is not None:
                self._read_status(worker)  # a last line written just before exiting
                self._on_exit(worker, _exit_text(status))

    def _on_exit(self, worker: Worker, how: str) -> None:
        self.workers.remove(worker)
        os.close(worker.link.status_r)
        if worker.stopping_since is not None:
            log.info("worker %d %s", worker.pid, how)
        elif worker is self.starting:
            self.starting = None
            message = f"worker {worker.pid} {how} before it was ready"
            if worker.fatal is None and self.active is not None:
                log.error("reload failed: %s; the running config stays", message)
            elif worker.fatal is None:
                self.failure = self.failure or WorkerFailed(message, 70)
                self._stop("no worker could start")
            if self.reload_again and not self.stopping:
                self.reload_again = False
                self._reload()
        elif worker is self.active:
            self.active = None
            young = time.monotonic() - worker.started < YOUNG
            self.young_deaths = self.young_deaths + 1 if young else 0
            pause = min(MAX_PAUSE, 2.0 ** (self.young_deaths - 1)) if self.young_deaths else 0.0
            log.error("worker %d %s unexpectedly; starting another%s", worker.pid, how,
                      f" in {pause:g}s" if pause else "")
            self.restart_at = time.monotonic() + pause
        if worker is self.active:
            self.active = None

    def _timers(self) -> None:
        now = time.monotonic()
        for worker in self.workers:
            if worker.stopping_since is not None and now - worker.stopping_since > self.drain_seconds + KILL_GRACE:
                log.error("worker %d still running %gs after it was asked to stop; killing it",
                          worker.pid, now - worker.stopping_since)
                _kill(worker.pid)
                worker.stopping_since = now  # once per grace period
            elif not worker.ready and worker.stopping_since is None and now - worker.started > START_SECONDS:
                log.error("worker %d not ready after %gs; killing it", worker.pid, START_SECONDS)
                _kill(worker.pid)
        if self.restart_at is not None and now >= self.restart_at:
            self.restart_at = None
            if not self.stopping and self.active is None and self.starting is None:
                self.starting = self._fork(self.config)

    # -- actions ---------------------------------------------------------------------------

    def _reload(self) -> None:
        if self.stopping:
            return
        if self.starting is not None:
            log.info("reload requested while a worker is starting: reloading again once it is ready")
            self.reload_again = True
            return
        log.info("reload requested (SIGHUP): reading %s", self.config.path)
        try:
            new = self.reload_config()
        except Exception as exc:  # noqa: BLE001 - any bad file must leave the running milter as it is
            message, code = self.describe(exc)
            # A bad file is one line; anything else is a fault of ours: its traceback goes with it.
            (log.error if code == BAD_INPUT else log.exception)("reload refused, the running config stays: %s",
                                                                message)
            return
        old, old_metrics = self.config.milter, self.config.metrics
        if new.milter.socket != old.socket:
            log.warning("milter.socket changed from %s to %s: a restart applies it; still listening on %s",
                        old.socket, new.milter.socket, old.socket)
        elif self.listener.path and (new.milter.socket_mode, new.milter.socket_group) != (old.socket_mode,
                                                                                            old.socket_group):
            try:
                set_socket_permissions(self.listener.path, new.milter.socket_mode, new.milter.socket_group)
            except ListenError as exc:
                log.error("reload refused, the running config stays: %s", exc)
                return
        if new.metrics.listen != old_metrics.listen:
            log.warning("metrics.listen changed: a restart applies it; metrics stay as they are")
        if self.on_reload is not None:
            self.on_reload(new)
        self.metrics.generation += 1
        self.starting = self._fork(new)

    def _stop(self, why: str) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.restart_at = None
        log.info("stopping (%s): no new connections; open sessions get up to %gs", why, self.drain_seconds)
        for worker in self.workers:
            self._retire(worker)
        # The workers let go of the socket as they retire; with ours closed too, the kernel refuses
        # new connections at once (the MTA applies its milter_default_action now, not after its
        # connect timeout on a backlog nobody serves).
        self._close_listener()

    def _close_listener(self) -> None:
        if not self.listener_closed:
            self.listener_closed = True
            close_listener(self.listener)
            self.metrics.close()

    def _retire(self, worker: Worker) -> None:
        if worker.stopping_since is None:
            worker.stopping_since = time.monotonic()
            os.close(worker.link.control_w)  # the worker reads end of file: stop

    def _fork(self, config: Config) -> Worker:
        link = WorkerLink()
        pid = os.fork()
        if pid == 0:  # the worker: never returns into the supervisor's code
            code = 70
            try:
                self._become_worker(link)
                serve_worker(config, self.listener, link, self.drain_seconds, self.describe, self.metrics)
            except BaseException as exc:  # noqa: BLE001 - reported to the supervisor, one line
                message, code = self.describe(exc)
                if os.environ.get("MAILFLOW_TRACEBACK"):
                    log.exception("worker failed")
                try:
                    link.fatal(code, message)
                except OSError:
                    pass
            finally:
                os._exit(code)
        link.supervisor_side()
        worker = Worker(pid, link, config)
        self.workers.append(worker)
        log.info("worker %d started (config %s)", pid, config.path)
        return worker

    def _become_worker(self, link: WorkerLink) -> None:
        os.setpgid(0, 0)  # a terminal's Ctrl-C reaches the supervisor only (libmilter aborts on SIGINT)
        signal.set_wakeup_fd(-1)
        for sig in SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        # Pending until libmilter's own signal thread takes them (it stops, then we drain).
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP, signal.SIGTERM, signal.SIGINT})
        for fd in self.wake_fds:
            os.close(fd)
        for other in self.workers:  # the supervisor's ends of the others' pipes: theirs to close
            os.close(other.link.status_r)
            if other.stopping_since is None:
                os.close(other.link.control_w)
        link.worker_side()


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 4096)
    except BlockingIOError:
        return b""
    except OSError as exc:
        if exc.errno == errno.EBADF:
            return b""
        raise


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _exit_text(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with code {os.waitstatus_to_exitcode(status)}"
