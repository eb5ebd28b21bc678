"""Run the milter daemon: validate everything first, then bind the socket."""

from __future__ import annotations

import grp
import logging
import os
import threading
import time
from collections.abc import Callable

import Milter

from mailflow.config import Config, MilterSettings
from mailflow.engine import Engine
from mailflow.milter.adapter import MailflowMilter
from mailflow.store import Store, StoreError, open_store
from mailflow.suppression.admin import key_check_scopes
from mailflow.suppression.keys import KeyMismatch, check_store_key
from mailflow.urls import redact_url

log = logging.getLogger("mailflow")
libmilter = Milter.milter  # pymilter's C module, the one runmilter calls
KEY_RETRY_SECONDS = 2.0
KEY_REFRESH_SECONDS = 6 * 3600.0


class ListenError(OSError):
    """The milter socket could not be opened (in use, no permission, bad directory)."""


def serve(config: Config) -> None:
    store = open_store(config.store.url, config.store.timeout_ms, config.store.refresh_ms, config.store.group)
    key_refused: list[KeyMismatch] = []
    try:
        store.ping()
        _check_suppression_key(config, store)  # a store that cannot be read or written: an outage too
    except StoreError as exc:  # the milter still starts: on_error covers an outage, and it recovers
        log.warning("store %s not answering at start (%s); on_error=%s applies until it does%s",
                    redact_url(config.store.url), exc, config.milter.on_error,
                    "; the suppression key is checked once it does" if config.suppression.enabled else "")
        if config.suppression.enabled:
            _watch_key(config, store, key_refused, KEY_RETRY_SECONDS)
    else:
        if config.suppression.enabled:
            _watch_key(config, store, key_refused, KEY_REFRESH_SECONDS)
    engine = MailflowMilter.engine = Engine(config, store)
    Milter.factory = MailflowMilter
    # Ask only for the actions we use, so the MTA knows what to expect (SETSYMLIST: see adapter).
    Milter.set_flags(Milter.QUARANTINE | Milter.ADDHDRS | Milter.DELRCPT | Milter.SETSYMLIST)
    # Last-resort net under our own per-callback guard.
    Milter.set_exception_policy(Milter.TEMPFAIL)
    log.info("mailflow listening on %s (mode=%s, store=%s, on_error=%s)",
             config.milter.socket, config.milter.mode, redact_url(config.store.url), config.milter.on_error)
    try:
        with _socket_permissions(config.milter):
            Milter.runmilter("mailflow", config.milter.socket, timeout=config.milter.timeout)
    finally:
        engine.sent.flush()
        store.close()
        log.info("mailflow stopped")
    if key_refused:
        raise key_refused[0]


def _check_suppression_key(config: Config, store: Store) -> None:
    if not config.suppression.enabled:
        return
    try:
        check_store_key(store, config.suppression.secret, key_check_scopes(config))
    except KeyMismatch:
        store.close()
        raise


def _watch_key(config: Config, store: Store, refused: list[KeyMismatch], delay: float) -> None:
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
                refused.append(exc)
                log.error("%s; stopping", exc)
                libmilter.stop()
                return
            if wait == KEY_RETRY_SECONDS:
                log.info("suppression key checked against the store")
            wait = KEY_REFRESH_SECONDS

    threading.Thread(target=check, name="mailflow-key-check", daemon=True).start()


class _socket_permissions:
    """pymilter's runmilter creates the socket (milter.opensocket) and serves in one call; this
    wraps opensocket for that call so a unix socket is created under umask 0177 (owner only, never
    wider than asked) and gets the configured mode and group before libmilter accepts anything."""

    def __init__(self, settings: MilterSettings) -> None:
        self.settings = settings
        self.original: Callable[[bool], None] = libmilter.opensocket

    def __enter__(self) -> None:
        libmilter.opensocket = self._open

    def __exit__(self, *exc: object) -> None:
        libmilter.opensocket = self.original

    def _open(self, rmsock: bool) -> None:
        kind, _, path = self.settings.socket.partition(":")
        unix = kind in ("unix", "local")
        old_umask = os.umask(0o177) if unix else None
        try:
            self.original(rmsock)
        except libmilter.error as exc:
            raise ListenError(f"cannot listen on {self.settings.socket}: {exc} (in use, or no permission?)") from None
        finally:
            if old_umask is not None:
                os.umask(old_umask)
        if unix:
            set_socket_permissions(path, self.settings.socket_mode, self.settings.socket_group)


def set_socket_permissions(path: str, mode: int, group: str) -> None:
    """Group first, then mode: the socket is never open to a group it should not reach."""
    gid = os.getegid() if not group else (int(group) if group.isdigit() else grp.getgrnam(group).gr_gid)
    try:
        os.chown(path, -1, gid)
        os.chmod(path, mode)
    except OSError as exc:
        raise ListenError(f"milter socket {path}: cannot set group {group or gid} and mode {mode:04o}: "
                          f"{exc.strerror}") from None
    log.info("milter socket %s: mode %04o, group %s", path, mode, grp.getgrgid(gid).gr_name)
