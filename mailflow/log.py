"""Logging set-up and the one-line-per-decision format mail admins grep.

kv (default): `stage=rcpt qid=4Xyz conn=1f account=shop.example … sender=<a@shop.example> …`, one
line per decision, after a timestamp and level on stderr (syslog adds its own). json: one JSON
object per line, with an ISO 8601 UTC timestamp, level, logger, message and, for decision lines,
every field as a JSON field: nothing before the `{` on stderr, so a log shipper parses it as is.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import socket
import sys
from collections.abc import Mapping
from datetime import datetime, timezone

from mailflow.settings import LogSettings
from mailflow.urls import redact_text

DECISIONS = logging.getLogger("mailflow.decision")
log = logging.getLogger("mailflow")

_SAFE = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789@._-+:/<>,=")
_FIELDS = "mailflow_fields"  # the LogRecord attribute a decision line's fields travel in
_SUMMARY = ("stage", "event", "action", "reason")  # a JSON decision line's `message`


def setup_logging(settings: LogSettings) -> None:
    handler: logging.Handler | None = None
    if settings.target == "syslog":
        problem = syslog_problem(settings.syslog_socket)
        if problem is None:
            handler = _SysLog(address=settings.syslog_socket, facility=settings.facility)
        else:  # no syslog daemon (containers): say so once, and keep logging
            print(f"mailflow: warning: log.target: syslog unavailable ({problem}); logging to stderr",
                  file=sys.stderr)
    json_lines = settings.format == "json"
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_Json() if json_lines else
                             _Redacting("%(asctime)s mailflow[%(process)d] %(levelname)s %(message)s"))
    else:  # syslog stamps the time and level itself; the message part is still one JSON object
        handler.setFormatter(_Json(prefix="mailflow[%(process)d]: ") if json_lines else
                             _Redacting("mailflow[%(process)d]: %(message)s"))
    root = logging.getLogger("mailflow")
    root.handlers[:] = [handler]
    root.setLevel(settings.level.upper())
    root.propagate = False
    _formatter.json = json_lines


def syslog_problem(path: str) -> str | None:
    """Why the local syslog socket cannot take a line, or None. SysLogHandler itself ignores a
    missing socket and then prints a traceback for every line it cannot send."""
    problem = f"{path}: cannot connect"
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):  # rsyslog/journald: datagram; some: stream
        with socket.socket(socket.AF_UNIX, kind) as probe:
            try:
                probe.connect(path)
                return None
            except OSError as exc:
                problem = f"{path}: {exc.strerror}"
    return problem


class _SysLog(logging.handlers.SysLogHandler):
    """A line syslog cannot take (the daemon restarting) goes to stderr, with one warning per
    outage, not a traceback per line."""

    failing = False  # this outage was reported
    failed = False  # the line being written failed

    def emit(self, record: logging.LogRecord) -> None:
        self.failed = False
        super().emit(record)  # catches its own errors and calls handleError
        self.failing = self.failed

    def handleError(self, record: logging.LogRecord) -> None:
        self.failed = True
        if not self.failing:
            self.failing = True
            exc = sys.exc_info()[1]
            print(f"mailflow: warning: syslog {self.address} refused a line ({exc}); "
                  "lines go to stderr until it takes them again", file=sys.stderr)
        print(self.format(record), file=sys.stderr)


class _Redacting(logging.Formatter):
    """No log line shows a URL's password, wherever it came from (an exception's text, a
    traceback). Costs one substring search per line without `://`."""

    def format(self, record: logging.LogRecord) -> str:
        return _encodable(redact_text(super().format(record)))


def _encodable(text: str) -> str:
    """Client bytes that are not UTF-8 arrive as lone surrogates (surrogateescape); syslog and
    files need UTF-8, so they are written as \\udcXX escapes rather than losing the line."""
    return text if text.isascii() else text.encode("utf-8", "backslashreplace").decode("utf-8")


class _Json(logging.Formatter):
    def __init__(self, prefix: str = "") -> None:
        super().__init__()
        self.prefix = prefix

    def format(self, record: logging.LogRecord) -> str:
        fields: Mapping[str, object] | None = getattr(record, _FIELDS, None)
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": (" ".join(str(fields[k]) for k in _SUMMARY if k in fields) if fields is not None
                        else record.getMessage()),
        }
        if fields is not None:
            line.update((k, v) for k, v in fields.items() if k not in line)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        text = redact_text(json.dumps(line, ensure_ascii=False, default=str))
        return (self.prefix % {"process": record.process} if self.prefix else "") + _encodable(text)


class _LineFormatter:
    json = False

    def render(self, fields: Mapping[str, object]) -> str:
        return " ".join(f"{key}={_kv_value(value)}" for key, value in fields.items())


_formatter = _LineFormatter()


def _kv_value(value: object) -> str:
    text = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    if text and set(text) <= _SAFE:
        return text
    return json.dumps(text, ensure_ascii=False)


def envelope_address(address: str) -> str:
    """An envelope address as logs show it: always in angle brackets, `<>` for the null sender,
    however the MTA or a test handed it over."""
    return f"<{address.strip().removeprefix('<').removesuffix('>')}>"


def log_decision(level: int = logging.INFO, **fields: object) -> None:
    if not DECISIONS.isEnabledFor(level):  # render only lines that will be written
        return
    present = {k: v for k, v in fields.items() if v is not None and v != ""}
    if _formatter.json:  # the fields travel as they are; the JSON formatter writes them
        DECISIONS.log(level, "%s", "decision", extra={_FIELDS: present})
    else:
        # Escaped here too, not only by our formatters: any handler (an admin's, a test's capture)
        # gets a line it can encode, whatever surrogate escapes a client's bytes became.
        DECISIONS.log(level, "%s", _encodable(_formatter.render(present)))
