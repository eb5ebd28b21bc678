"""Logging set-up and the one-line-per-decision format mail admins grep."""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
from collections.abc import Mapping

from mailflow.settings import LogSettings
from mailflow.urls import redact_text

DECISIONS = logging.getLogger("mailflow.decision")
log = logging.getLogger("mailflow")

_SAFE = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789@._-+:/<>,=")


def setup_logging(settings: LogSettings) -> None:
    handler: logging.Handler | None = None
    if settings.target == "syslog":
        try:
            handler = logging.handlers.SysLogHandler(address="/dev/log", facility=settings.facility)
            handler.setFormatter(_Redacting("mailflow[%(process)d]: %(message)s"))
        except OSError as exc:  # no syslog daemon (containers): say so, and keep logging
            print(f"mailflow: syslog unavailable ({exc}); logging to stderr", file=sys.stderr)
            handler = None
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_Redacting("%(asctime)s mailflow[%(process)d] %(levelname)s %(message)s"))
    root = logging.getLogger("mailflow")
    root.handlers[:] = [handler]
    root.setLevel(settings.level.upper())
    root.propagate = False
    _formatter.json = settings.format == "json"


class _Redacting(logging.Formatter):
    """No log line shows a URL's password, wherever it came from (an exception's text, a
    traceback). Costs one substring search per line without `://`."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_text(super().format(record))


class _LineFormatter:
    json = False

    def render(self, fields: Mapping[str, object]) -> str:
        present = {k: v for k, v in fields.items() if v is not None and v != ""}
        if self.json:
            return json.dumps(present, ensure_ascii=False, default=str)
        return " ".join(f"{key}={_kv_value(value)}" for key, value in present.items())


_formatter = _LineFormatter()


def _kv_value(value: object) -> str:
    text = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    if text and set(text) <= _SAFE:
        return text
    return json.dumps(text, ensure_ascii=False)


def log_decision(level: int = logging.INFO, **fields: object) -> None:
    if DECISIONS.isEnabledFor(level):  # render only lines that will be written
        DECISIONS.log(level, "%s", _formatter.render(fields))
