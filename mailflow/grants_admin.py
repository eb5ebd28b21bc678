"""`mailflow ratelimit grant|extend|revoke|grants` and `mailflow audit`: temporary limits given by
command, kept in the store (ratelimit/grants.py), and the trail of every admin change (audit.py)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime, timezone

import click

from mailflow import audit, events
from mailflow.config import Config
from mailflow.ratelimit.grants import (MAX_SECONDS, MAX_TEXT, Grant, GrantError, active_grant, check_account, overlay,
                                       parse_duration, parse_grant_limits, read_grants, remove_expired)
from mailflow.store.base import Store

TRIES = 5  # compare-and-swap attempts against admins changing the same grant at once


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _left(seconds: float) -> str:
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    return (f"{days}d" if days else "") + f"{rest // 3600}h{rest % 3600 // 60:02d}m"


def _usage(call: Callable[[], object], hint: str) -> object:
    try:
        return call()
    except GrantError as exc:
        raise click.BadParameter(str(exc), param_hint=hint) from None


def _swap(store: Store, account: str, change: Callable[[Grant | None], Grant | None]) -> tuple[Grant | None, Grant | None]:
    """Apply `change` to the account's grant atomically: (before, after)."""
    for _ in range(TRIES):
        value, before = active_grant(store, account)
        after = change(before)
        if store.swap_grant(account, value, after.value() if after else None):
            return before, after
    raise click.ClickException(f"the grant of {account} kept changing under this command; try again")


def _describe(config: Config, account: str, grant: Grant) -> str:
    base = config.ratelimit.policy_for(account)
    effective = overlay(base, grant)
    replaced = [str(limit) for limit in base.limits if limit not in effective.limits]
    note = f" (in place of {', '.join(replaced)})" if replaced else ""
    exempt = "; the account is exempt, so no limit applies" if base.exempt else ""
    return (f"{grant.limits_text()}{note} until {_iso(grant.until)}; limits now: "
            f"{' '.join(str(limit) for limit in effective.limits)}{exempt}")


def register(cli: click.Group, load: Callable[[str | None], Config],
             store_of: Callable[[Config], AbstractContextManager[Store]],
             config_option: Callable[[Callable[..., None]], Callable[..., None]]) -> None:
    """Attach the grant commands to `ratelimit`, and `audit` to the main CLI."""
    ratelimit = cli.commands["ratelimit"]
    assert isinstance(ratelimit, click.Group)

    @ratelimit.command("grant")
    @config_option
    @click.option("--for", "duration", required=True, metavar="DURATION", help="How long: 90m, 24h, 7d, 1d12h.")
    @click.option("--reason", "--why", "why", required=True, metavar="TEXT", help="Why (shown in grants and audit).")
    @click.argument("account")
    @click.argument("limits", nargs=-1, required=True, metavar="LIMIT...")
    def grant(config_file: str | None, duration: str, why: str, account: str, limits: tuple[str, ...]) -> None:
        """Give ACCOUNT these limits (like 2000/hour 20000/day) for a while, in place of the
        configured limits of the same periods. Replaces a grant the account has."""
        name = str(_usage(lambda: check_account(account), "ACCOUNT"))
        parsed = _usage(lambda: parse_grant_limits(limits), "LIMIT")
        seconds = _usage(lambda: parse_duration(duration), "--for")
        assert isinstance(parsed, tuple) and isinstance(seconds, int)
        config = load(config_file)
        now = time.time()
        new = Grant(parsed, now + seconds, audit.bounded(why, MAX_TEXT), audit.who_runs(), now)
        with store_of(config) as store:
            before, _ = _swap(store, name, lambda _: new)
            replaced = f"; replaces {before.limits_text()} until {_iso(before.until)}" if before else ""
            click.echo(f"account {name}: granted {_describe(config, name, new)}{replaced} "
                       f"(milters apply it within {config.store.refresh_ms} ms)")
            events.publish(events.Event(events.GRANT_GIVEN, name, {**new.detail(), "how": "given"}))
            audit.record(store, "ratelimit grant", name, f"{new.limits_text()} for {duration.strip()}",
                         why, {"until": _iso(new.until)})

    @ratelimit.command("extend")
    @config_option
    @click.option("--for", "duration", required=True, metavar="DURATION", help="How much longer: 90m, 24h, 7d.")
    @audit.why_option()
    @click.argument("account")
    def extend(config_file: str | None, duration: str, why: str | None, account: str) -> None:
        """Make ACCOUNT's grant run DURATION longer (at most 90 days from now)."""
        name = str(_usage(lambda: check_account(account), "ACCOUNT"))
        seconds = _usage(lambda: parse_duration(duration), "--for")
        assert isinstance(seconds, int)
        config = load(config_file)

        def longer(current: Grant | None) -> Grant:
            if current is None:
                raise click.ClickException(f"account {name} has no grant to extend")
            until = min(current.until + seconds, time.time() + MAX_SECONDS)
            return Grant(current.limits, until, current.reason, current.by, current.given)

        with store_of(config) as store:
            _, after = _swap(store, name, longer)
            assert after is not None
            click.echo(f"account {name}: grant of {after.limits_text()} now ends {_iso(after.until)}")
            events.publish(events.Event(events.GRANT_GIVEN, name, {**after.detail(), "how": "extended"}))
            audit.record(store, "ratelimit extend", name, f"by {duration.strip()}", why, {"until": _iso(after.until)})

    @ratelimit.command("revoke")
    @config_option
    @audit.why_option()
    @click.argument("account")
    def revoke(config_file: str | None, why: str | None, account: str) -> None:
        """End ACCOUNT's grant now: the configured limits apply again (within refresh_ms)."""
        name = str(_usage(lambda: check_account(account), "ACCOUNT"))
        config = load(config_file)

        def gone(current: Grant | None) -> None:
            if current is None:
                raise click.ClickException(f"account {name} has no grant")

        with store_of(config) as store:
            before, _ = _swap(store, name, gone)
            assert before is not None
            click.echo(f"account {name}: grant of {before.limits_text()} revoked; configured limits apply "
                       f"(milters within {config.store.refresh_ms} ms)")
            events.publish(events.Event(events.GRANT_ENDED, name, {**before.detail(), "how": "revoked"}))
            audit.record(store, "ratelimit revoke", name, before.limits_text(), why)

    @ratelimit.command("grants")
    @config_option
    @click.option("--json", "as_json", is_flag=True, help="One JSON list, for panels.")
    @click.argument("account", required=False)
    def grants(config_file: str | None, as_json: bool, account: str | None) -> None:
        """Active grants (of ACCOUNT, or all), with the limits they leave in force."""
        name = str(_usage(lambda: check_account(account), "ACCOUNT")) if account is not None else None
        config = load(config_file)
        now = time.time()
        with store_of(config) as store:
            active = []
            for who, (value, grant) in sorted(read_grants(store).items()):
                if grant.until <= now:
                    remove_expired(store, who, value)
                elif name is None or who == name:
                    active.append((who, grant))
        if as_json:
            click.echo(json.dumps([{
                "account": who, "limits": [str(limit) for limit in grant.limits],
                "effective_limits": [str(limit) for limit in overlay(config.ratelimit.policy_for(who), grant).limits],
                "until": _iso(grant.until), "seconds_left": int(grant.until - now), "reason": grant.reason,
                "by": grant.by, "given": _iso(grant.given)} for who, grant in active], indent=1))
            return
        for who, grant in active:
            click.echo(f"{who:<32} {grant.limits_text():<22} until {_iso(grant.until)} ({_left(grant.until - now)} "
                       f"left)  by {grant.by}: {grant.reason}")
        if not active:
            click.echo(f"account {name} has no grant" if name else "no grants")

    @cli.command("audit")
    @config_option
    @click.option("--account", default=None, help="Only entries about this account.")
    @click.option("-n", "count", type=click.IntRange(1, audit.KEEP), default=50, show_default=True,
                  help="How many entries, newest first.")
    @click.option("--json", "as_json", is_flag=True, help="One JSON list, for panels.")
    def audit_(config_file: str | None, account: str | None, count: int, as_json: bool) -> None:
        """Who changed policy state (grants, resets, holds, suppressions, domains), when and why."""
        name = str(_usage(lambda: check_account(account), "--account")) if account is not None else None
        config = load(config_file)
        with store_of(config) as store:
            found = list(audit.entries(store, name, count))
        if as_json:
            click.echo(json.dumps([{**entry.__dict__, "at": _iso(entry.at)} for entry in found], indent=1,
                                  ensure_ascii=False))
            return
        for entry in found:
            click.echo(entry.line())
        if not found:
            click.echo("no audit entries" + (f" for {name}" if name else ""))
