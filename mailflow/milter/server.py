"""The milter's listening socket, and the worker process that serves it with libmilter.

Why two processes (the supervisor is supervisor.py). libmilter (Debian 12: 8.17) owns the
signals of any process that runs it: smfi_main blocks SIGHUP, SIGTERM and SIGINT in every thread
and a thread of its own sigwait()s for them; SIGHUP and SIGTERM both call
mi_stop_milters(MILTER_STOP), SIGINT aborts. A Python handler never runs while the main thread is
inside runmilter, so a process that runs libmilter cannot reload: `kill -HUP` only stops it.

So the process systemd knows (the supervisor) never starts libmilter's threads. It opens the
listening socket once, through libmilter's own smfi_opensocket, and forks workers that serve it.
Facts from libmilter's source (listener.c) this relies on:
- mi_opensocket returns at once when its static `listenfd` is already valid, so a forked worker's
  smfi_main serves the socket the supervisor opened (the fd and libmilter's statics are
  inherited by fork; FD_CLOEXEC only matters on exec). The socket is never closed between
  workers: a connection made while one worker leaves and the next starts waits in the backlog.
- On stop, mi_closener unlinks the unix socket path it bound (when not root), even while another
  process still serves it. So it binds PATH.new and the supervisor renames that to PATH: the name
  libmilter remembers no longer exists, and nothing but the supervisor ever removes PATH.
- The listener holds a mutex across poll() (5 s timeout) and accept(): two workers polling one
  socket both wake, and the loser would block in accept() with the mutex held. The socket is made
  non-blocking (O_NONBLOCK is shared by every process's copy of it; accepted sockets do not
  inherit it on Linux), and libmilter's loop treats EAGAIN as "try again".
A worker stops without libmilter's help, because libmilter cannot stop without cutting sessions:
Debian builds it with _FFR_WORKERS_POOL, whose pool controller (worker.c) polls the open sessions
and ends with `if (mi_stop() != MILTER_CONT) break;`, so after smfi_stop (or its SIGTERM) no open
session ever gets its next command answered (and pymilter's main also clears the interpreter a
just-accepted connection needs). Instead the worker points the listening fd *number* at a pipe
nobody writes to (dup2): its listener accepts nothing more, at once, while the pool goes on
serving. It waits until its open milter connections (SMTP sessions in progress) have closed,
bounded by the drain timeout, then flushes, closes the store and exits. A SIGHUP/SIGTERM sent
to a worker itself is still libmilter's: that worker's open sessions are lost, and the
supervisor replaces it at once. Signal the main process only (systemd: KillMode=mixed).
"""

from __future__ import annotations

import grp
import logging
import os
import socket
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

import Milter

from mailflow.config import Config, MilterSettings
from mailflow.engine import Engine
from mailflow.metrics.host import MetricsHost
from mailflow.metrics.worker import WorkerMetrics
from mailflow.metrics.worker import start as start_metrics
from mailflow.milter.adapter import MailflowMilter
from mailflow.milter.socket_path import unix_socket_problem
from mailflow.notify.notifier import start_notifier
from mailflow.store import Store, StoreError, open_store
from mailflow.suppression.admin import key_check_scopes
from mailflow.suppression.keys import KeyMismatch, check_store_key
from mailflow.urls import redact_url

log = logging.getLogger("mailflow")
libmilter = Milter.milter  # pymilter's C module, the one runmilter calls
KEY_RETRY_SECONDS = 2.0
KEY_REFRESH_SECONDS = 6 * 3600.0
ACCEPT_GRACE = 0.5  # a connection accepted just before the stop negotiates within this
UNIX_PATH_MAX = 107  # sun_path holds 108 bytes with the NUL

Describe = Callable[[BaseException], tuple[str, int]]


class ListenError(OSError):
    """The milter socket could not be opened (in use, no permission, bad directory)."""


@dataclass(frozen=True)
class Listener:
    fd: int
    conn: str  # what libmilter bound (PATH.new for a unix socket)
    path: str | None  # the unix socket's name, which only the supervisor removes
    ident: tuple[int, int]  # (st_dev, st_ino) of the socket itself
    path_ident: tuple[int, int] | None  # of its name in the file system


def open_listener(settings: MilterSettings) -> Listener:
    """Open the socket with libmilter's smfi_opensocket: a unix one under umask 0177 (owner
    only, never wider than asked), given its mode and group before it gets its name."""
    kind, _, path = settings.socket.partition(":")
    unix = kind in ("unix", "local")
    conn = f"{kind}:{path}.new" if unix else settings.socket
    if unix and len(os.fsencode(path)) + 4 > UNIX_PATH_MAX:
        raise ListenError(f"cannot listen on {settings.socket}: the path is too long "
                          f"(at most {UNIX_PATH_MAX - 4} bytes; mailflow binds PATH.new and renames it)")
    if problem := unix_socket_problem(settings.socket):
        raise ListenError(f"cannot listen on {settings.socket}: {problem}")
    before = _listening_fds()
    libmilter.setconn(conn)
    libmilter.register("mailflow")  # smfi_opensocket needs a registered filter; no thread starts
    old_umask = os.umask(0o177) if unix else None
    try:
        libmilter.opensocket(True)
    except libmilter.error as exc:
        raise ListenError(f"cannot listen on {settings.socket}: {exc} (in use, or no permission?)") from None
    finally:
        if old_umask is not None:
            os.umask(old_umask)
    [fd] = _listening_fds() - before
    os.set_blocking(fd, False)
    if unix:
        set_socket_permissions(path + ".new", settings.socket_mode, settings.socket_group)
        os.rename(path + ".new", path)
    info, named = os.fstat(fd), os.stat(path) if unix else None
    return Listener(fd, conn, path if unix else None, (info.st_dev, info.st_ino),
                    (named.st_dev, named.st_ino) if named else None)


def close_listener(listener: Listener) -> None:
    """Remove the unix socket's name if it is still this socket's, then close it."""
    if listener.path is not None:
        try:
            info = os.stat(listener.path)
            if (info.st_dev, info.st_ino) == listener.path_ident:
                os.unlink(listener.path)
        except OSError:
            pass
    os.close(listener.fd)


def _listening_fds() -> set[int]:
    found = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            if not stat.S_ISSOCK(os.fstat(int(name)).st_mode):
                continue
            with socket.socket(fileno=os.dup(int(name))) as sock:
                if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                    found.add(int(name))
        except OSError:  # the fd of the listdir itself, closed by now
            continue
    return found


def set_socket_permissions(path: str, mode: int, group: str) -> None:
    """Group first, then mode: the socket is never open to a group it should not reach."""
    gid = os.getegid() if not group else (int(group) if group.isdigit() else grp.getgrnam(group).gr_gid)
    try:
        os.chown(path, -1, gid)
        os.chmod(path, mode)
    except OSError as exc:
        raise ListenError(f"milter socket {path}: cannot set group {group or gid} and mode {mode:04o}: "
                          f"{exc.strerror}") from None
    log.info("milter socket %s: mode %04o, group %s", path.removesuffix(".new"), mode, grp.getgrgid(gid).gr_name)


class WorkerLink:
    """A worker's two pipes to its supervisor. Supervisor to worker: nothing is ever written;
    its end closing (asked to stop, or the supervisor gone) means stop. Worker to supervisor:
    `ready`, `stopping` or `fatal CODE MESSAGE`, one line each (a write under PIPE_BUF is atomic)."""

    def __init__(self) -> None:
        self.control_r, self.control_w = os.pipe()
        self.status_r, self.status_w = os.pipe()

    def worker_side(self) -> None:
        os.close(self.control_w)
        os.close(self.status_r)

    def supervisor_side(self) -> None:
        os.close(self.control_r)
        os.close(self.status_w)
        os.set_blocking(self.status_r, False)

    def ready(self) -> None:
        os.write(self.status_w, b"ready\n")

    def stopping(self) -> None:
        """Stopping on its own (libmilter took a signal sent to this process): replace me."""
        os.write(self.status_w, b"stopping\n")

    def fatal(self, code: int, message: str) -> None:
        line = " ".join(message.split())[:1000]
        os.write(self.status_w, f"fatal {code} {line}\n".encode("utf-8", "replace"))

    def wait_for_stop(self) -> None:
        while os.read(self.control_r, 64):
            pass


class _Stopper:
    """The one way a worker ends: no more accepts, drain, flush, exit. The first caller does it;
    any other waits on the lock until the process is gone."""

    def __init__(self, listener: Listener, drain_seconds: float, finish: Callable[[], None]) -> None:
        self.listener, self.drain_seconds, self.finish = listener, drain_seconds, finish
        self.lock = threading.Lock()
        self._keep: int | None = None  # the pipe's write end: held open, so it never reads EOF

    def __call__(self, code: int, why: str, drain: bool = True) -> NoReturn:
        with self.lock:
            self._stop_accepting()
            if drain:
                log.info("worker stopping (%s): accepting no more connections; %d open, waiting up to %gs",
                         why, MailflowMilter.live, self.drain_seconds)
            cut = self._drain() if drain else MailflowMilter.live
            try:
                self.finish()
            except Exception:  # noqa: BLE001 - logged; the exit must happen all the same
                log.exception("worker: flushing or closing the store failed")
            finally:
                if not drain:
                    log.warning("worker stopped (%s): libmilter serves no session once stopped, so its %d "
                                "open connection(s) were cut; signal the main process, not a worker", why, cut)
                elif cut:
                    log.warning("worker stopped: %d connection(s) still open after %gs were cut "
                                "(the MTA applies milter_default_action to the rest of those sessions)",
                                cut, self.drain_seconds)
                else:
                    log.info("worker stopped: every session finished")
                for handler in logging.getLogger("mailflow").handlers:
                    handler.flush()
                os._exit(code)
        raise AssertionError("unreachable")  # for mypy: os._exit does not return

    def _stop_accepting(self) -> None:
        """libmilter polls the fd *number*: give it a pipe nobody writes to. Only if it still is
        the listening socket (a SIGTERM to this process may have had libmilter close it)."""
        never, self._keep = os.pipe()
        try:
            info = os.fstat(self.listener.fd)
            if (info.st_dev, info.st_ino) == self.listener.ident:
                os.dup2(never, self.listener.fd, inheritable=False)
        except OSError:
            pass
        os.close(never)

    def _drain(self) -> int:
        start = time.monotonic()
        while True:
            live, now = MailflowMilter.live, time.monotonic()
            if live <= 0 and now - start >= ACCEPT_GRACE:
                return 0
            if now - start >= self.drain_seconds:
                return live
            time.sleep(0.05)


def serve_worker(config: Config, listener: Listener, link: WorkerLink, drain_seconds: float,
                 describe: Describe, metrics_host: MetricsHost | None = None) -> NoReturn:
    """In a forked worker: validate what needs the store, then serve until told to stop."""
    store = open_store(config.store.url, config.store.timeout_ms, config.store.refresh_ms, config.store.group,
                       (config.store.wait_replicas, config.store.wait_timeout_ms))
    engine: Engine | None = None
    notifier = start_notifier(config, store)  # policy events: the log, webhook, e-mail (mailflow/notify)
    served: WorkerMetrics | None = None

    def finish() -> None:
        if engine is not None:
            engine.close()
        notifier.close()
        if served is not None:
            served.close()
        store.close()

    stop = _Stopper(listener, drain_seconds, finish)

    def on_stop_request() -> None:
        link.wait_for_stop()
        if served is not None:  # the next worker answers scrapes now (and sums what this one still counts)
            served.stop_serving()
        stop(0, "asked by the supervisor, or it is gone")

    def on_key_mismatch(exc: KeyMismatch) -> None:
        log.error("%s; stopping", exc)
        message, code = describe(exc)
        link.fatal(code, message)
        stop(code, "suppression key mismatch")

    try:
        store.ping()
        _check_suppression_key(config, store)  # a store that cannot be read or written: an outage too
    except StoreError as exc:  # the milter still starts: on_error covers an outage, and it recovers
        log.warning("store %s not answering at start (%s); on_error=%s applies until it does%s",
                    redact_url(config.store.url), exc, config.milter.on_error,
                    "; the suppression key is checked once it does" if config.suppression.enabled else "")
        if config.suppression.enabled:
            _watch_key(config, store, on_key_mismatch, KEY_RETRY_SECONDS)
    else:
        if config.suppression.enabled:
            _watch_key(config, store, on_key_mismatch, KEY_REFRESH_SECONDS)
    engine = MailflowMilter.engine = Engine(config, store)
    engine.grants.start()  # a grant given before this worker's first message applies to that message
    engine.reputation.start()  # and a standing (mailflow/reputation/overlay.py)
    served = start_metrics(metrics_host, config, store, engine.store_health)
    Milter.factory = MailflowMilter
    # Ask only for the actions we use, so the MTA knows what to expect (SETSYMLIST: see adapter).
    Milter.set_flags(Milter.QUARANTINE | Milter.ADDHDRS | Milter.CHGHDRS | Milter.DELRCPT | Milter.SETSYMLIST)
    # Last-resort net under our own per-callback guard.
    Milter.set_exception_policy(Milter.TEMPFAIL)
    threading.Thread(target=on_stop_request, name="mailflow-stop", daemon=True).start()
    log.info("worker serving %s (mode=%s, store=%s, on_error=%s, config %s)", config.milter.socket,
             config.milter.mode, redact_url(config.store.url), config.milter.on_error, config.path)
    link.ready()
    try:
        # libmilter reuses the inherited socket: `listener.conn` is never bound again.
        Milter.runmilter("mailflow", listener.conn, timeout=config.milter.timeout)
    except libmilter.error as exc:
        log.error("libmilter failed: %s", exc)
        link.stopping()
        stop(70, "libmilter failed", drain=False)
    # Only a SIGHUP/SIGTERM sent to this process itself gets here (libmilter's smfi_stop). Debian
    # builds libmilter with its workers pool, whose controller thread stops polling sessions once
    # stopped (`if (mi_stop() != MILTER_CONT) break;`): what is open can never finish. Go now.
    link.stopping()
    stop(0, "libmilter stopped on a signal sent to this process", drain=False)


def _check_suppression_key(config: Config, store: Store) -> None:
    if not config.suppression.enabled:
        return
    try:
        check_store_key(store, config.suppression.secret, key_check_scopes(config))
    except KeyMismatch:
        store.close()
        raise


def _watch_key(config: Config, store: Store, refused: Callable[[KeyMismatch], None], delay: float) -> None:
    """Check the key again after `delay`: soon when the store did not answer at start, else every
    few hours, which also keeps the fingerprint alive (Redis drops state strings after 30 days).
    A key that is not the lists' one (the lists were re-keyed under this milter) stops the
    milter with exit 2: every lookup would miss."""

    def check() -> None:
        wait = delay
        while True:
            time.sleep(wait)
            try:
                check_store_key(store, config.suppression.secret, key_check_scopes(config))
            except StoreError:
                wait = KEY_RETRY_SECONDS
                continue
            except KeyMismatch as exc:
                refused(exc)
                return
            if wait == KEY_RETRY_SECONDS:
                log.info("suppression key checked against the store")
            wait = KEY_REFRESH_SECONDS

    threading.Thread(target=check, name="mailflow-key-check", daemon=True).start()
