"""`mailflow reputation [ACCOUNT] [--json]` and `mailflow reputation reset ACCOUNT --reason TEXT`:
where accounts stand on the ladder and why, and an admin's way back to normal (audited)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime, timezone
from typing import Any

import click

from mailflow import audit
from mailflow.config import Config
from mailflow.model import shown
from mailflow.reputation.evaluate import Move, publish, read_standing
from mailflow.reputation.model import NORMAL, Standing, rank
from mailflow.reputation.rates import read_rates
from mailflow.settings.reputation import PERCENT_RULES
from mailflow.store.base import Store

WINDOWS = {"hard_bounces": "24 h", "complaints": "7 days", "unknown_recipients": "last hour",
           "unique_recipients": "last hour"}


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _standing(account: str, standing: Standing | None, config: Config) -> dict[str, Any]:
    settings = config.reputation
    data: dict[str, Any] = {"account": account, "state": standing.state if standing else NORMAL,
                            "mode": settings.mode_for(account), "exempt": settings.exempt(account),
                            "enabled": settings.enabled}
    if standing is not None:
        data.update(since=_iso(standing.since), since_unix=standing.since, why=standing.why, rule=standing.rule,
                    factor=standing.factor, contact=standing.contact, rates_at_move=standing.rates,
                    evidence=list(standing.evidence),
                    clean_since=_iso(max(standing.since, standing.seen)))
    return data


def account_view(config: Config, store: Store, account: str, now: float) -> dict[str, Any]:
    """One account: its standing and its figures now, each with its sample and threshold."""
    standing = read_standing(store.reputation_states().get(account), account)
    data = _standing(account, standing, config)
    start = standing.since if standing is not None and standing.state == NORMAL else None
    rates = read_rates(store, account, now, start)
    figures = {}
    for rule in config.reputation.ladder_for(account).rules:
        figure, sample = rates.figure(rule.name)
        figures[rule.name] = {"value": round(figure, 4), "unit": "percent" if rule.name in PERCENT_RULES else "count",
                              "sample": sample, "min_sample": rule.min_sample, "window": WINDOWS[rule.name],
                              "reaches": rule.reached(figure, sample), "thresholds": dict(rule.thresholds)}
    data["rates_now"] = figures
    data["counts_now"] = rates.plain()
    return data


def listing(config: Config, store: Store) -> list[dict[str, Any]]:
    """Every account above normal, worst first (then the longest standing first)."""
    rows = []
    for account, value in store.reputation_states().items():
        standing = read_standing(value, account)
        if standing is not None and standing.state != NORMAL:
            rows.append(_standing(account, standing, config))
    return sorted(rows, key=lambda row: (-rank(row["state"]), row["since_unix"], row["account"]))


def _mode(row: dict[str, Any]) -> str:
    if not row["enabled"]:
        return " ([reputation] is off: not enforced)"
    if row["exempt"]:
        return " (exempt)"
    return " (monitor: not enforced)" if row["mode"] == "monitor" else ""


def account_text(data: dict[str, Any]) -> list[str]:
    name = shown(data["account"])
    if data["state"] == NORMAL:
        lines = [f"account {name}: normal{_mode(data)}"]
        if "why" in data:
            lines.append(f"  reset {data['since'].replace('T', ' ')}: {data['why']} (figures counted from then)")
    else:
        lines = [f"account {name}: {data['state']} since {data['since'].replace('T', ' ')}{_mode(data)}",
                 f"  why: {data['why']}"]
        if data["state"] == "throttle":
            lines.append(f"  limits multiplied by {data['factor']:g}")
        if data["contact"]:
            lines.append(f"  refusals name: {data['contact']}")
        lines.append(f"  clean since: {data['clean_since'].replace('T', ' ')} (steps down after "
                     "clean_days with no rule above normal)")
    lines.append("  figures now:")
    for rule, figure in data["rates_now"].items():
        value = f"{figure['value']:.2f}% of {figure['sample']}" if figure["unit"] == "percent" else f"{figure['sample']}"
        limits = ", ".join(f"{state} {at:g}" for state, at in figure["thresholds"].items()) or "off"
        short = " (below the minimum sample)" if figure["sample"] < figure["min_sample"] else ""
        lines.append(f"    {rule:<19} {value:<18} {figure['window']:<10} -> {figure['reaches']}{short}  [{limits}]")
    if data.get("evidence"):
        lines.append("  evidence:")
        lines += [f"    {line}" for line in data["evidence"]]
    return lines


def listing_text(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return ["every account is normal"]
    return [f"{shown(row['account']):<40} {row['state']:<9} since {row['since'].replace('T', ' ')}{_mode(row)}  "
            f"{row['why']}" for row in rows]


class _Group(click.Group):
    """`reputation ACCOUNT` and `reputation reset ACCOUNT`: a first word that names no subcommand
    (an account, an option) goes to `show` whole."""

    def resolve_command(self, ctx: click.Context, args: list[str]) -> tuple[str | None, click.Command | None, list[str]]:
        if args and args[0] not in self.commands:
            return "show", self.commands["show"], args
        return super().resolve_command(ctx, args)


def register(cli: click.Group, load: Callable[[str | None], Config],
             store_of: Callable[[Config], AbstractContextManager[Store]],
             config_option: Callable[[Callable[..., None]], Callable[..., None]]) -> None:

    @cli.group("reputation", cls=_Group, invoke_without_command=True,
               context_settings={"ignore_unknown_options": True})
    @click.pass_context
    def reputation(ctx: click.Context) -> None:
        """Where accounts stand on the reputation ladder (normal, warn, throttle, hold, block):
        `reputation` lists every account not normal, `reputation ACCOUNT [--json]` shows one,
        `reputation reset ACCOUNT --reason TEXT` returns one to normal."""
        if ctx.invoked_subcommand is None:
            ctx.invoke(show)

    @reputation.command("show", hidden=True)
    @config_option
    @click.option("--json", "as_json", is_flag=True, help="One JSON document, for machines.")
    @click.argument("account", required=False, metavar="[ACCOUNT]")
    def show(config_file: str | None = None, as_json: bool = False, account: str | None = None) -> None:
        """One account's standing, figures and evidence; without ACCOUNT every account not normal."""
        checked = _checked(account) if account is not None else None
        config = load(config_file)
        with store_of(config) as store:
            if checked is None:
                rows = listing(config, store)
                click.echo(json.dumps(rows, indent=2) if as_json else "\n".join(listing_text(rows)))
            else:
                data = account_view(config, store, checked, time.time())
                click.echo(json.dumps(data, indent=2) if as_json else "\n".join(account_text(data)))

    @reputation.command("reset")
    @config_option
    @click.option("--reason", "--why", "why", required=True, metavar="TEXT", help="Why (shown in the audit log).")
    @audit.account_argument()
    def reset(config_file: str | None, why: str, account: str) -> None:
        """Return ACCOUNT to normal now; its figures count again from now (the hours before the
        reset cannot move it back). Audited; an event is published."""
        if not why.strip():
            raise click.BadParameter("give a reason", param_hint="--reason")
        config = load(config_file)
        now = time.time()
        marker = Standing(NORMAL, now, f"reset by {audit.bounded(audit.who_runs(), 100)}: {audit.bounded(why, 200)}",
                          rule="admin")
        with store_of(config) as store:
            for _ in range(5):
                value = store.reputation_states().get(account)
                before = read_standing(value, account)
                if before is None or before.state == NORMAL:
                    raise click.ClickException(f"account {shown(account)} is normal: nothing to reset")
                if store.swap_reputation(account, value, marker.value()):
                    break
            else:
                raise click.ClickException(f"the standing of {shown(account)} kept changing; try again")
            click.echo(f"account {shown(account)}: {before.state} -> normal; its figures count again from now")
            publish(config, Move(account, before, marker), now)
            audit.record(store, "reputation reset", account, f"from {before.state}", why)


def _checked(account: str) -> str:
    from mailflow.ratelimit.grants import GrantError, check_account

    try:
        return check_account(account)
    except GrantError as exc:
        raise click.BadParameter(str(exc), param_hint="ACCOUNT") from None
