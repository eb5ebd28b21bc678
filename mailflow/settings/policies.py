"""Readers for the policy sections of mailflow.toml: ratelimit, forgery, bulk, rbl."""

from __future__ import annotations

import os
import re

from mailflow.forgery.names import ACTIONS, RULES
from mailflow.ratelimit.limits import KINDS, Limit, LimitSyntaxError, parse_limit
from mailflow.rbl.zones import Zone, default_zones, expand_ips, merge_zones
from mailflow.settings import (BulkPolicy, BulkSettings, ForgeryAccount, ForgerySettings, RateLimitSettings,
                               RatePolicy, RblSettings)
from mailflow.settings.sections import secret_file
from mailflow.settings.table import Table

def _rate_policy(t: Table, inherit: RatePolicy, per_account: bool) -> RatePolicy:
    """[ratelimit] itself and each [ratelimit.accounts."NAME"] share these keys; only an
    account table has `exempt = true|false` (the top level lists exempt accounts instead)."""
    return RatePolicy(
        limits=_limits(t) if "limits" in t else inherit.limits,
        unit=t.choice("unit", inherit.unit, ("recipient", "message")),
        exempt=t.flag("exempt", inherit.exempt) if per_account else False,
    )


def _limits(t: Table) -> tuple[Limit, ...]:
    entries = t.raw("limits")
    if not isinstance(entries, list) or not entries:
        t.report("limits", 'expected a non-empty list such as ["600/hour", "5000/day sliding"]')
        return RateLimitSettings().default.limits
    limits: list[Limit] = []
    for i, entry in enumerate(entries):
        key = f"limits[{i}]"
        try:
            if isinstance(entry, dict):
                sub = t.child(entry, key)
                limit = parse_limit(sub.text("limit", ""), burst=sub.integer("burst", None, minimum=1),
                                    kind=sub.choice("kind", "bucket", KINDS) if "kind" in sub else None)
                sub.finish()
            else:
                limit = parse_limit(entry)
        except LimitSyntaxError as exc:
            t.report(key, str(exc))
            continue
        if any(other.period == limit.period for other in limits):
            t.report(key, f"a second limit per {limit.period}: give one limit per period")
            continue
        limits.append(limit)
    return tuple(limits)


def parse_ratelimit(t: Table) -> RateLimitSettings:
    default = _rate_policy(t, RateLimitSettings().default, per_account=False)
    accounts: dict[str, RatePolicy] = {}
    for name in t.texts("exempt", []):
        accounts[name.lower()] = RatePolicy(default.limits, default.unit, exempt=True)
    per_account = t.table("accounts")
    for name in per_account.keys():
        sub = per_account.table(name)
        accounts[name.lower()] = _rate_policy(sub, accounts.get(name.lower(), default), per_account=True)
        sub.finish()
    per_account.finish()
    settings = RateLimitSettings(
        default=default,
        accounts=accounts,
        local_over_limit=t.choice("local_over_limit", "defer", ("defer", "hold")),
    )
    t.finish()
    return settings


def _rule_actions(t: Table) -> dict[str, str]:
    actions = {}
    for rule in t.keys():
        if rule not in RULES:
            t.report(rule, f"not a rule ({', '.join(RULES)})")
            t.raw(rule)  # reported once, not again as an unknown key
            continue
        actions[rule] = t.choice(rule, "", ACTIONS)
    t.finish()
    return actions


def parse_forgery(t: Table, base_dir: str) -> ForgerySettings:
    d = ForgerySettings()
    maps = t.text("sender_login_maps", "")
    if maps:
        maps = maps if os.path.isabs(maps) else os.path.join(base_dir, maps)
        from mailflow.forgery.ownership import read_sender_login_map

        try:
            read_sender_login_map(maps)
        except (OSError, ValueError) as exc:
            t.report("sender_login_maps", str(exc))
    brands = t.texts("protected_brands", [])
    actions = {**d.actions, **_rule_actions(t.table("rules"))}
    accounts: dict[str, ForgeryAccount] = {}
    per_account = t.table("accounts")
    for name in per_account.keys():
        sub = per_account.table(name)
        accounts[name.lower()] = ForgeryAccount(
            domains=tuple(x.lower() for x in sub.texts("domains", [])),
            actions=_rule_actions(sub.table("rules")),
            relays_others=sub.flag("relays_others", False),
        )
        sub.finish()
    per_account.finish()
    settings = ForgerySettings(
        sender_login_maps=maps,
        protected_brands=tuple(b.lower() for b in brands),
        actions=actions,
        accounts=accounts,
        max_date_skew_hours=t.integer("max_date_skew_hours", d.max_date_skew_hours, minimum=1),
        domains_refresh_seconds=t.integer("domains_refresh_seconds", d.domains_refresh_seconds, minimum=1),
    )
    t.finish()
    return settings



def _bulk_policy(t: Table, inherit: BulkPolicy) -> BulkPolicy:
    return BulkPolicy(
        min_recipients=t.integer("min_recipients", inherit.min_recipients, minimum=1),
        missing_unsubscribe=t.choice("missing_unsubscribe", inherit.missing_unsubscribe, ACTIONS),
    )


def parse_bulk(t: Table) -> BulkSettings:
    default = _bulk_policy(t, BulkPolicy())
    accounts: dict[str, BulkPolicy] = {}
    per_account = t.table("accounts")
    for name in per_account.keys():
        sub = per_account.table(name)
        accounts[name.lower()] = _bulk_policy(sub, default)
        sub.finish()
    per_account.finish()
    t.finish()
    return BulkSettings(default, accounts)


_DURATION = re.compile(r"^\s*(\d+)\s*(s|m|h)?\s*$")


def _duration(t: Table, key: str, default: int) -> int:
    raw = t.raw(key) if key in t else default
    if isinstance(raw, int) and not isinstance(raw, bool) and raw > 0:
        return raw
    match = _DURATION.match(raw) if isinstance(raw, str) else None
    if not match or int(match.group(1)) < 1:
        t.report(key, f"{raw!r} is not a duration (like 30s, 5m, 1h or seconds)")
        return default
    return int(match.group(1)) * {"s": 1, "m": 60, "h": 3600, None: 1}[match.group(2)]


def _hostport(t: Table, key: str, text: str, default_port: int) -> tuple[str, int] | None:
    match = re.fullmatch(r"\[([0-9a-fA-F:.]+)\](?::(\d+))?|([^:\[\]]+)(?::(\d+))?", text.strip())
    if not match:
        t.report(key, f"{text!r}: expected HOST[:PORT] or [IPv6]:PORT")
        return None
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4) or default_port)
    if not 0 < port < 65536:
        t.report(key, f"{text!r}: port out of range")
        return None
    return host, port


def parse_rbl(t: Table) -> RblSettings:
    d = RblSettings()
    ips: tuple[str, ...] = ()
    try:
        ips = tuple(expand_ips(t.texts("ips", [])))
    except ValueError as exc:
        t.report("ips", str(exc))
    nameservers = tuple(hp for i, n in enumerate(t.texts("nameservers", []))
                        if (hp := _hostport(t, f"nameservers[{i}]", n, 53)))
    dqs_key = t.text("spamhaus_dqs_key", "")
    defaults = default_zones(dqs_key) if t.flag("use_default_zones", True) else []
    configured = []
    zones = t.raw("zones") or []
    if not isinstance(zones, list):
        t.report("zones", "expected a list of tables ([[rbl.zones]] entries)")
        zones = []
    for i, raw in enumerate(zones):
        zone_table = t.child(raw, f"zones[{i}]")
        codes = zone_table.table("codes")
        code_map = {code: codes.text(code, "") for code in codes.keys()}
        for code in code_map:
            if not re.fullmatch(r"127\.\d{1,3}\.\d{1,3}\.\d{1,3}", code):
                codes.report(code, "a listing code is an address inside 127.0.0.0/8")
        codes.finish()
        name = zone_table.text("name", "")
        if not name or not code_map:
            zone_table.report("name", "a zone needs a name and at least one listing code")
        configured.append(Zone(name=name.lower().rstrip("."), codes=code_map,
                               delist_url=zone_table.text("delist_url", ""), ipv6=zone_table.flag("ipv6", False),
                               note=zone_table.text("note", "")))
        zone_table.finish()
    alerts = t.table("alerts")
    relay = alerts.text("smtp_relay", "")
    settings = RblSettings(
        ips=ips,
        nameservers=nameservers,
        interval=_duration(t, "interval", d.interval),
        timeout_ms=t.integer("timeout_ms", d.timeout_ms, minimum=1),
        concurrency=t.integer("concurrency", d.concurrency, minimum=1),
        clean_polls_to_delist=t.integer("clean_polls_to_delist", d.clean_polls_to_delist, minimum=1),
        zones=tuple(merge_zones(defaults, configured)),
        webhook=alerts.text("webhook", ""),
        email_to=tuple(alerts.texts("email_to", [])),
        email_from=alerts.text("email_from", ""),
        smtp_relay=_hostport(alerts, "smtp_relay", relay, 25) if relay else None,
        suspects=alerts.integer("suspects", d.suspects, minimum=0),
        **_alert_transport(alerts),
    )
    if settings.email_to and (not relay) == (not settings.sendmail):
        alerts.report("email_to", "e-mail alerts need exactly one of smtp_relay or sendmail")
    alerts.finish()
    t.finish()
    return settings


def _alert_transport(alerts: Table) -> dict[str, str]:
    """[rbl.alerts] smtp_user + smtp_password_file (SMTP AUTH through smtp_relay), or sendmail."""
    user, password_file = alerts.text("smtp_user", ""), alerts.text("smtp_password_file", "")
    if bool(user) != bool(password_file):
        alerts.report("smtp_user", "SMTP AUTH needs both smtp_user and smtp_password_file")
    password = secret_file(alerts, "smtp_password_file", "SMTP password file")
    sendmail = alerts.text("sendmail", "")
    if sendmail and not (os.path.isabs(sendmail) and os.path.isfile(sendmail) and os.access(sendmail, os.X_OK)):
        alerts.report("sendmail", f"{sendmail!r} is not an executable file (e.g. /usr/sbin/sendmail)")
    return {"smtp_user": user, "smtp_password": password, "sendmail": sendmail}
