"""`mailflow health`: ask a running milter's /health, answer as a Nagios plugin.

Exit codes are Nagios's, not the rest of the CLI's: 0 OK, 1 WARNING, 2 CRITICAL (the milter
says its store is unreachable), 3 UNKNOWN (a bad argument or config, no [metrics] listen, the
endpoint not answering or answering something else). A bad argument is UNKNOWN, not the CLI's
usual exit 2, which a monitoring system would read as CRITICAL.
"""

from __future__ import annotations

import http.client
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import click

from mailflow.config import ConfigError, config_path, load_config
from mailflow.deadline import Deadline
from mailflow.urls import redact_text

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
CODES = {"ok": OK, "warning": WARNING, "critical": CRITICAL}
WORDS = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}
MAX_BODY = 1 << 16  # a health report is a few hundred bytes


def _line(code: int, summary: str, perf: str = "") -> str:
    text = " ".join(redact_text(summary).replace("|", "/").split())[:400]
    return f"MAILFLOW {WORDS[code]} - {text}" + (f" | {perf}" if perf else "")


def _url_from(config_file: str | None) -> str:
    try:
        config = load_config(config_path(config_file))
    except ConfigError as exc:
        raise ValueError(f"bad config: {exc.errors[-1]}") from None
    if config.metrics.listen is None:
        raise ValueError(f"{config.path}: metrics.listen is not set, so the milter serves no /health (or give --url)")
    host, port = config.metrics.listen
    if host in ("0.0.0.0", "::"):  # listening everywhere: ask it on loopback
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/health"


def fetch(url: str, timeout: float) -> tuple[int, dict[str, Any]]:
    """The HTTP status and the JSON report; ValueError says why there is none."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"--url {url!r}: expected http://HOST:PORT/health")
    try:  # --timeout bounds the whole exchange: an endpoint trickling its answer is cut there
        with Deadline(timeout, "mailflow-health-deadline") as deadline:
            try:
                with deadline.opener().open(url, timeout=timeout) as response:
                    status, body = response.status, response.read(MAX_BODY + 1)
            except urllib.error.HTTPError as exc:  # 503 carries the report too
                with exc:
                    status, body = exc.code, exc.read(MAX_BODY + 1)
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = f"no whole answer within {timeout:g} s" if deadline.cut_off else getattr(exc, "reason", exc)
        raise ValueError(f"no answer from {url}: {reason}") from None
    if deadline.cut_off:  # cut while reading the body: what was read is not the report
        raise ValueError(f"no answer from {url}: no whole answer within {timeout:g} s")
    try:
        report = json.loads(body[:MAX_BODY])
    except ValueError:
        raise ValueError(f"{url} answered HTTP {status} with no health report (is it mailflow's /health?)") from None
    if not isinstance(report, dict) or report.get("status") not in CODES:
        raise ValueError(f"{url} answered HTTP {status} with no health status (is it mailflow's /health?)")
    return status, report


def judge(report: dict[str, Any]) -> tuple[int, str, str]:
    """The exit code, the status line's summary and its perfdata."""
    code = CODES[report["status"]]
    store, config = report.get("store") or {}, report.get("config") or {}
    replica = report.get("replica")
    problems = [str(p) for p in report.get("problems") or []]
    summary = "; ".join(problems) or "store reachable"
    summary += f"; config generation {config.get('generation')}, loaded {config.get('age_seconds')} s ago"
    perf = [f"store_up={1 if store.get('reachable') else 0};;1:", f"config_age={config.get('age_seconds', 0)}s",
            f"generation={config.get('generation', 0)}"]
    if replica and replica.get("age_seconds") is not None:
        perf.append(f"replica_age={replica['age_seconds']}s")
    last = store.get("last_error")
    if last:
        perf.append(f"last_store_error_age={last.get('age_seconds')}s")
    return code, summary, " ".join(perf)


def run(config_file: str | None, url: str | None, timeout_text: str, extra: tuple[str, ...]) -> int:
    try:
        if extra:
            raise ValueError(f"unexpected argument {extra[0]!r} (mailflow health [-c CONFIG] [--url URL] [--timeout S])")
        try:
            timeout = float(timeout_text)
        except ValueError:
            timeout = -1.0
        if not 0 < timeout <= 300:
            raise ValueError(f"--timeout {timeout_text!r}: expected seconds, more than 0 and at most 300")
        status, report = fetch(url or _url_from(config_file), timeout)
    except ValueError as exc:
        click.echo(_line(UNKNOWN, str(exc)))
        return UNKNOWN
    code, summary, perf = judge(report)
    click.echo(_line(code, summary, perf))
    return code


class _NagiosCommand(click.Command):
    """A malformed command line is UNKNOWN too (click's own parse errors would exit 2)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            click.echo(_line(UNKNOWN, exc.format_message()))
            sys.exit(UNKNOWN)


def register(cli: click.Group, config_option: Callable[[Callable[..., None]], Callable[..., None]]) -> None:
    @cli.command("health", cls=_NagiosCommand, context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
    @config_option
    @click.option("--url", default=None, metavar="URL",
                  help="The milter's /health (default: from [metrics] listen in the config).")
    @click.option("--timeout", "timeout_text", default="10", metavar="SECONDS", show_default=True,
                  help="How long to wait for the answer.")
    @click.argument("extra", nargs=-1, type=click.UNPROCESSED)
    def health(config_file: str | None, url: str | None, timeout_text: str, extra: tuple[str, ...]) -> None:
        """Ask a running milter's /health; print one Nagios status line with perfdata. Exit 0 OK,
        1 WARNING, 2 CRITICAL, 3 UNKNOWN (also for a bad argument or config: not the usual 2)."""
        sys.exit(run(config_file, url, timeout_text, extra))
