"""Run the milter daemon: validate everything first, then bind the socket."""

from __future__ import annotations

import logging

import Milter

from mailflow.config import Config
from mailflow.engine import Engine
from mailflow.milter.adapter import MailflowMilter
from mailflow.store import open_store
from mailflow.urls import redact_url

log = logging.getLogger("mailflow")


def serve(config: Config) -> None:
    store = open_store(config.store.url, config.store.timeout_ms, config.store.refresh_ms)
    try:
        store.ping()
    except Exception as exc:  # the milter still starts: on_error covers an outage, and it recovers
        log.warning("store %s not answering at start (%s); on_error=%s applies until it does",
                    redact_url(config.store.url), exc, config.milter.on_error)
    engine = MailflowMilter.engine = Engine(config, store)
    Milter.factory = MailflowMilter
    # Ask only for the actions we use, so the MTA knows what to expect (SETSYMLIST: see adapter).
    Milter.set_flags(Milter.QUARANTINE | Milter.ADDHDRS | Milter.DELRCPT | Milter.SETSYMLIST)
    # Last-resort net under our own per-callback guard.
    Milter.set_exception_policy(Milter.TEMPFAIL)
    log.info("mailflow listening on %s (mode=%s, store=%s, on_error=%s)",
             config.milter.socket, config.milter.mode, redact_url(config.store.url), config.milter.on_error)
    try:
        Milter.runmilter("mailflow", config.milter.socket, timeout=config.milter.timeout)
    finally:
        engine.sent.flush()
        store.close()
        log.info("mailflow stopped")
