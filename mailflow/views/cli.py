"""`mailflow top`, `mailflow ratelimit status`, `mailflow near-limit`: each with `--json` for
hosting panels (report.py's data as it is), else text (text.py)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import click

from mailflow import audit
from mailflow.config import Config
from mailflow.store.base import Store
from mailflow.views import report, text

json_option = click.option("--json", "as_json", is_flag=True, help="One JSON document, for machines.")


def _show(as_json: bool, data: Any, lines: Callable[[], list[str]]) -> None:
    click.echo(json.dumps(data, indent=2) if as_json else "\n".join(lines()))


def register(cli: click.Group, ratelimit: click.Group, load: Callable[[str | None], Config],
             store_of: Callable[[Config], AbstractContextManager[Store]],
             config_option: Callable[[Callable[..., None]], Callable[..., None]]) -> None:
    """Attach the views to the main CLI and its `ratelimit` group."""

    @ratelimit.command("status")
    @config_option
    @json_option
    @audit.account_argument()
    def status(config_file: str | None, as_json: bool, account: str) -> None:
        """What ACCOUNT sent this hour and in the last 24 hours, what is left under each limit,
        when the next message fits, its active grants."""
        config = load(config_file)
        with store_of(config) as store:
            data = report.status(config, store, account, time.time())
        _show(as_json, data, lambda: text.status(data))

    @cli.command("top")
    @config_option
    @click.option("--hour", "window", flag_value="hour", default=True, help="This clock hour (the default).")
    @click.option("--day", "window", flag_value="day", help="The last 24 hours.")
    @click.option("-n", "count", type=click.IntRange(1, 10_000), default=20, show_default=True,
                  help="How many accounts.")
    @json_option
    def top(config_file: str | None, window: str, count: int, as_json: bool) -> None:
        """Accounts by messages sent (fleet-wide on Redis), with refusals, holds, how much of their
        most used limit they use now, and where their mail comes from."""
        config = load(config_file)
        hours = report.hours_back(time.time(), report.DAY_HOURS if window == "day" else 1)
        with store_of(config) as store:
            rows = report.top(config, store, hours, count)
        label, since = "the last 24 hours" if window == "day" else "this hour", report.since(hours)
        data = {"window": window, "since": since, "accounts": rows}
        _show(as_json, data, lambda: text.top(rows, label, since))

    @cli.command("near-limit")
    @config_option
    @click.option("--over", type=click.FloatRange(0, 100, min_open=True), default=80.0, show_default=True,
                  metavar="PERCENT", help="List limits at least this much used.")
    @json_option
    def near_limit(config_file: str | None, over: float, as_json: bool) -> None:
        """Accounts at or above a share of any of their limits now (accounts with mail in the
        last 48 hours)."""
        config = load(config_file)
        with store_of(config) as store:
            rows, looked_at = report.near_limit(config, store, over / 100, time.time())
        data = {"over_percent": over, "accounts_looked_at": looked_at, "limits": rows}
        _show(as_json, data, lambda: text.near_limit(rows, over, looked_at))
