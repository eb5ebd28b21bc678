"""Load and validate mailflow.toml into typed, frozen settings.

Every error names the offending key (`ratelimit.accounts."shop.example".limits[1]`), so
`mailflow check-config` and a failing `mailflow run` say exactly what to fix. Unknown keys
are errors too: a typo must not silently fall back to a default.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from mailflow.forgery.names import ACTIONS, DEFAULT_ACTIONS, RULES
from mailflow.ratelimit.limits import Limit, LimitSyntaxError, parse_limit
from mailflow.rbl.zones import Zone, default_zones, expand_ips, merge_zones
from mailflow.suppression.keys import KeyFileError, read_key_file
from mailflow.urls import store_url_problem

DEFAULT_CONFIG_PATH = "/etc/mailflow/mailflow.toml"
CONFIG_ENV = "MAILFLOW_CONFIG"
IDENTITY_SOURCES = ("sasl", "local", "trusted_ip")
LOCAL_SMTP = ("refuse", "sender_domain")  # unauthenticated SMTP from loopback: refused, or by sender domain

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(ValueError):
    """A config problem; the message names the file and key."""


@dataclass(frozen=True)
class MilterSettings:
    socket: str = "inet:8890@127.0.0.1"
    mode: str = "enforce"  # enforce | monitor
    on_error: str = "tempfail"  # tempfail | accept
    timeout: int = 30  # seconds libmilter waits on the MTA
    socket_mode: int = 0o660  # unix socket only: set right after libmilter creates it
    socket_group: str = ""  # unix socket only: "" = the process's group


@dataclass(frozen=True)
class StoreSettings:
    url: str = "sqlite:///var/lib/mailflow/state.db"
    timeout_ms: int = 250
    refresh_ms: int = 1000  # Redis: how often the milter's in-memory replica (redis_replica.py) refreshes
    group: str = ""  # SQLite: files 0640 with this group, else 0600


def host_names() -> frozenset[str]:
    """This host's own names, as its MTA signs its bounces (MAILER-DAEMON@name); `localhost` is everyone's."""
    names = (name.lower().rstrip(".") for name in (socket.gethostname(), socket.getfqdn()))
    return frozenset(name for name in names if name and not name.startswith("localhost"))


@dataclass(frozen=True)
class AccountSettings:
    identify: tuple[str, ...] = IDENTITY_SOURCES
    trusted_networks: tuple[IPNetwork, ...] = ()
    identity_map: Mapping[str, str] = field(default_factory=dict)
    ip_map: tuple[tuple[IPNetwork, str], ...] = ()  # longest prefix first
    local_smtp: str = "refuse"  # refuse | sender_domain (spoofable by any local process)
    msp_daemons: frozenset[str] = frozenset()  # Sendmail {daemon_name}s of the MSP's own listener
    local_names: frozenset[str] = field(default_factory=host_names)  # lower-case


@dataclass(frozen=True)
class RatePolicy:
    """The rate limit that applies to one account."""

    limits: tuple[Limit, ...]
    unit: str = "recipient"  # recipient | message
    exempt: bool = False


@dataclass(frozen=True)
class RateLimitSettings:
    default: RatePolicy = RatePolicy(limits=(parse_limit("600/hour"),))
    accounts: Mapping[str, RatePolicy] = field(default_factory=dict)
    local_over_limit: str = "defer"  # defer | hold

    def policy_for(self, account: str) -> RatePolicy:
        return self.accounts.get(account, self.default)


@dataclass(frozen=True)
class ForgeryAccount:
    domains: tuple[str, ...] = ()
    actions: Mapping[str, str] = field(default_factory=dict)  # overrides only


@dataclass(frozen=True)
class ForgerySettings:
    sender_login_maps: str = ""  # resolved path, or "" for none
    protected_brands: tuple[str, ...] = ()
    actions: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_ACTIONS))
    accounts: Mapping[str, ForgeryAccount] = field(default_factory=dict)
    max_date_skew_hours: int = 24
    domains_refresh_seconds: int = 30

    def actions_for(self, account: str) -> Mapping[str, str]:
        override = self.accounts.get(account)
        return {**self.actions, **override.actions} if override and override.actions else self.actions


@dataclass(frozen=True)
class SuppressionSettings:
    enabled: bool = False  # on when the config has a [suppression] table
    secret: bytes = field(default=b"", repr=False)
    case_sensitive_local_part: bool = False
    strip_subaddress: bool = True
    trap_hits_before_hold: int = 3
    action: str = "reject"  # reject | tempfail | off
    accounts: Mapping[str, str] = field(default_factory=dict)  # per-account action

    def action_for(self, account: str) -> str:
        return self.accounts.get(account, self.action) if self.enabled else "off"


@dataclass(frozen=True)
class BulkPolicy:
    min_recipients: int = 25
    missing_unsubscribe: str = "reject"  # reject | tempfail | hold | tag | off


@dataclass(frozen=True)
class BulkSettings:
    default: BulkPolicy = BulkPolicy()
    accounts: Mapping[str, BulkPolicy] = field(default_factory=dict)

    def policy_for(self, account: str) -> BulkPolicy:
        return self.accounts.get(account, self.default)


@dataclass(frozen=True)
class RblSettings:
    ips: tuple[str, ...] = ()  # every address to watch (CIDRs expanded)
    nameservers: tuple[tuple[str, int], ...] = ()  # empty: the system resolver
    interval: int = 300
    timeout_ms: int = 2000
    concurrency: int = 64
    clean_polls_to_delist: int = 3
    zones: tuple[Zone, ...] = ()
    webhook: str = ""
    email_to: tuple[str, ...] = ()
    email_from: str = ""
    smtp_relay: tuple[str, int] | None = None
    smtp_user: str = ""  # SMTP AUTH for alerts through smtp_relay (mailflow refuses loopback SMTP without it)
    smtp_password: str = field(default="", repr=False)  # read from smtp_password_file
    sendmail: str = ""  # or hand alerts to this program: local mail (Postfix pickup, Sendmail's MSP)
    suspects: int = 10


@dataclass(frozen=True)
class LogSettings:
    target: str = "stderr"  # stderr | syslog
    facility: str = "mail"
    format: str = "kv"  # kv | json
    level: str = "info"


@dataclass(frozen=True)
class Config:
    milter: MilterSettings = MilterSettings()
    store: StoreSettings = StoreSettings()
    accounts: AccountSettings = AccountSettings()
    ratelimit: RateLimitSettings = RateLimitSettings()
    forgery: ForgerySettings = ForgerySettings()
    suppression: SuppressionSettings = SuppressionSettings()
    bulk: BulkSettings = BulkSettings()
    rbl: RblSettings = RblSettings()
    log: LogSettings = LogSettings()
    path: str | None = None


def config_path(explicit: str | None) -> str:
    """`-c FILE`, else $MAILFLOW_CONFIG, else /etc/mailflow/mailflow.toml."""
    return explicit or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH


MAX_CONFIG_BYTES = 4 << 20


def load_config(path: str) -> Config:
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_CONFIG_BYTES + 1)
        if len(data) > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES // 1024} KiB; not a mailflow config")
        if data.startswith(b"\xef\xbb\xbf"):
            raise ConfigError(f"{path}: starts with a byte-order mark (BOM); remove the byte-order mark "
                              "(save it as UTF-8 without BOM)")
        raw = tomllib.loads(data.decode("utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{path}: not UTF-8 (line {line}, byte {exc.start} is 0x{data[exc.start]:02x}); save it as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        return parse_config(raw, base_dir=os.path.dirname(os.path.abspath(path)), path=path)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def parse_config(raw: Mapping[str, Any], base_dir: str = ".", path: str | None = None) -> Config:
    top = _Table(raw, "")
    config = Config(
        milter=_milter(top.table("milter")),
        store=_store(top.table("store")),
        accounts=_accounts(top.table("accounts"), base_dir),
        ratelimit=_ratelimit(top.table("ratelimit")),
        forgery=_forgery(top.table("forgery"), base_dir),
        suppression=_suppression(top, base_dir),
        bulk=_bulk(top.table("bulk")),
        rbl=_rbl(top.table("rbl")),
        log=_log(top.table("log")),
        path=path,
    )
    top.finish()
    return config


# -- sections -------------------------------------------------------------------------------

_SOCKET_RE = re.compile(r"^(unix|local):/[^\0]+|^inet6?:(\d{1,5})(@[^\s\0]+)?$")


def _milter(t: _Table) -> MilterSettings:
    d = MilterSettings()
    socket = t.text("socket", d.socket)
    match = _SOCKET_RE.match(socket)
    if not match or (match.group(2) and not 0 < int(match.group(2)) < 65536):
        raise t.error("socket", f"{socket!r} is not a milter socket (inet:PORT@HOST, inet6:PORT@HOST or unix:/PATH;"
                                " PORT 1-65535)")
    mode_text = t.text("socket_mode", f"{d.socket_mode:04o}")
    if not re.fullmatch(r"0?[0-7]{3}", mode_text) or int(mode_text, 8) & 0o007:
        raise t.error("socket_mode", f"{mode_text!r}: expected an octal mode with no bits for others, like \"0660\"")
    group = t.text("socket_group", d.socket_group)
    if group:
        import grp

        try:
            grp.getgrgid(int(group)) if group.isdigit() else grp.getgrnam(group)
        except KeyError:
            raise t.error("socket_group", f"no group named {group!r} on this host") from None
    settings = MilterSettings(
        socket=socket,
        mode=t.choice("mode", d.mode, ("enforce", "monitor")),
        on_error=t.choice("on_error", d.on_error, ("tempfail", "accept")),
        timeout=t.integer("timeout", d.timeout, minimum=1),
        socket_mode=int(mode_text, 8),
        socket_group=group,
    )
    t.finish()
    return settings


def _store(t: _Table) -> StoreSettings:
    d = StoreSettings()
    url = t.text("url", d.url)
    problem = store_url_problem(url)
    if problem:
        raise t.error("url", problem)
    settings = StoreSettings(url=url, timeout_ms=t.integer("timeout_ms", d.timeout_ms, minimum=1),
                             refresh_ms=t.integer("refresh_ms", d.refresh_ms, minimum=10),
                             group=t.text("group", d.group))  # checked by store.check_store_path
    t.finish()
    return settings


def _accounts(t: _Table, base_dir: str) -> AccountSettings:
    identify = t.texts("identify", list(IDENTITY_SOURCES))
    if not identify:
        raise t.error("identify", f"is empty, which would police no mail; list one or more of {', '.join(IDENTITY_SOURCES)}")
    for i, source in enumerate(identify):
        if source not in IDENTITY_SOURCES:
            raise t.error(f"identify[{i}]", f"{source!r} is not one of {', '.join(IDENTITY_SOURCES)}")
    networks = tuple(_network(t, f"trusted_networks[{i}]", n) for i, n in enumerate(t.texts("trusted_networks", [])))

    identity_map: dict[str, str] = {}
    map_file = t.text("map_file", "")
    if map_file:
        map_path = map_file if os.path.isabs(map_file) else os.path.join(base_dir, map_file)
        try:
            identity_map.update(read_map_file(map_path))
        except (OSError, ValueError) as exc:
            raise t.error("map_file", str(exc)) from None
    inline = t.table("map")
    for key in inline.keys():
        identity_map[key.lower()] = inline.text(key, "")
    inline.finish()

    ip_table = t.table("ip_map")
    ip_map = [(_network(ip_table, key, key), ip_table.text(key, "")) for key in ip_table.keys()]
    ip_table.finish()
    ip_map.sort(key=lambda item: item[0].prefixlen, reverse=True)

    local_names = frozenset(n.lower().rstrip(".") for n in t.texts("local_names", []) if n.strip()) or host_names()
    settings = AccountSettings(tuple(identify), networks, identity_map, tuple(ip_map),
                               local_smtp=t.choice("local_smtp", "refuse", LOCAL_SMTP),
                               msp_daemons=frozenset(t.texts("msp_daemons", [])), local_names=local_names)
    t.finish()
    return settings


def _rate_policy(t: _Table, inherit: RatePolicy, per_account: bool) -> RatePolicy:
    """[ratelimit] itself and each [ratelimit.accounts."NAME"] share these keys; only an
    account table has `exempt = true|false` (the top level lists exempt accounts instead)."""
    return RatePolicy(
        limits=_limits(t) if "limits" in t else inherit.limits,
        unit=t.choice("unit", inherit.unit, ("recipient", "message")),
        exempt=t.flag("exempt", inherit.exempt) if per_account else False,
    )


def _limits(t: _Table) -> tuple[Limit, ...]:
    entries = t.raw("limits")
    if not isinstance(entries, list) or not entries:
        raise t.error("limits", 'expected a non-empty list such as ["600/hour", "5000/day"]')
    limits: list[Limit] = []
    for i, entry in enumerate(entries):
        key = f"limits[{i}]"
        try:
            if isinstance(entry, dict):
                sub = _Table(entry, t.child_path(key))
                limit = parse_limit(sub.text("limit", ""), burst=sub.integer("burst", None, minimum=1))
                sub.finish()
            else:
                limit = parse_limit(entry)
        except LimitSyntaxError as exc:
            raise t.error(key, str(exc)) from None
        if any(other.period == limit.period for other in limits):
            raise t.error(key, f"a second limit per {limit.period}: give one limit per period")
        limits.append(limit)
    return tuple(limits)


def _ratelimit(t: _Table) -> RateLimitSettings:
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


def _rule_actions(t: _Table) -> dict[str, str]:
    actions = {}
    for rule in t.keys():
        if rule not in RULES:
            raise t.error(rule, f"not a rule ({', '.join(RULES)})")
        actions[rule] = t.choice(rule, "", ACTIONS)
    t.finish()
    return actions


def _forgery(t: _Table, base_dir: str) -> ForgerySettings:
    d = ForgerySettings()
    maps = t.text("sender_login_maps", "")
    if maps:
        maps = maps if os.path.isabs(maps) else os.path.join(base_dir, maps)
        from mailflow.forgery.ownership import read_sender_login_map

        try:
            read_sender_login_map(maps)
        except (OSError, ValueError) as exc:
            raise t.error("sender_login_maps", str(exc)) from None
    brands = t.texts("protected_brands", [])
    actions = {**d.actions, **_rule_actions(t.table("rules"))}
    accounts: dict[str, ForgeryAccount] = {}
    per_account = t.table("accounts")
    for name in per_account.keys():
        sub = per_account.table(name)
        accounts[name.lower()] = ForgeryAccount(
            domains=tuple(x.lower() for x in sub.texts("domains", [])),
            actions=_rule_actions(sub.table("rules")),
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


SUPPRESSION_ACTIONS = ("reject", "tempfail", "off")


def _suppression(top: _Table, base_dir: str) -> SuppressionSettings:
    if "suppression" not in top:
        top.table("suppression")  # mark as seen
        return SuppressionSettings()
    t = top.table("suppression")
    d = SuppressionSettings()
    env_name = t.text("hash_key_env", "")
    key_file = t.text("hash_key_file", "")
    if bool(env_name) == bool(key_file):
        raise t.error("hash_key_env", "give exactly one of hash_key_env or hash_key_file")
    if env_name:
        secret = os.environ.get(env_name, "").encode()
        if not secret:
            raise t.error("hash_key_env", f"environment variable {env_name} is not set")
    else:
        path = key_file if os.path.isabs(key_file) else os.path.join(base_dir, key_file)
        try:
            secret = read_key_file(path)
        except KeyFileError as exc:
            raise t.error("hash_key_file", str(exc)) from None
    if len(secret) < 16:
        raise t.error("hash_key_env" if env_name else "hash_key_file", "the key must be at least 16 bytes")
    accounts: dict[str, str] = {}
    per_account = t.table("accounts")
    for name in per_account.keys():
        sub = per_account.table(name)
        accounts[name.lower()] = sub.choice("action", d.action, SUPPRESSION_ACTIONS)
        sub.finish()
    per_account.finish()
    settings = SuppressionSettings(
        enabled=True,
        secret=secret,
        case_sensitive_local_part=t.flag("case_sensitive_local_part", d.case_sensitive_local_part),
        strip_subaddress=t.flag("strip_subaddress", d.strip_subaddress),
        trap_hits_before_hold=t.integer("trap_hits_before_hold", d.trap_hits_before_hold, minimum=1),
        action=t.choice("action", d.action, SUPPRESSION_ACTIONS),
        accounts=accounts,
    )
    t.finish()
    return settings


def _bulk_policy(t: _Table, inherit: BulkPolicy) -> BulkPolicy:
    return BulkPolicy(
        min_recipients=t.integer("min_recipients", inherit.min_recipients, minimum=1),
        missing_unsubscribe=t.choice("missing_unsubscribe", inherit.missing_unsubscribe, ACTIONS),
    )


def _bulk(t: _Table) -> BulkSettings:
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


def _duration(t: _Table, key: str, default: int) -> int:
    raw = t.raw(key) if key in t else default
    if isinstance(raw, int) and not isinstance(raw, bool) and raw > 0:
        return raw
    match = _DURATION.match(raw) if isinstance(raw, str) else None
    if not match or int(match.group(1)) < 1:
        raise t.error(key, f"{raw!r} is not a duration (like 30s, 5m, 1h or seconds)")
    return int(match.group(1)) * {"s": 1, "m": 60, "h": 3600, None: 1}[match.group(2)]


def _hostport(t: _Table, key: str, text: str, default_port: int) -> tuple[str, int]:
    match = re.fullmatch(r"\[([0-9a-fA-F:.]+)\](?::(\d+))?|([^:\[\]]+)(?::(\d+))?", text.strip())
    if not match:
        raise t.error(key, f"{text!r}: expected HOST[:PORT] or [IPv6]:PORT")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4) or default_port)
    if not 0 < port < 65536:
        raise t.error(key, f"{text!r}: port out of range")
    return host, port


def _rbl(t: _Table) -> RblSettings:
    d = RblSettings()
    try:
        ips = tuple(expand_ips(t.texts("ips", [])))
    except ValueError as exc:
        raise t.error("ips", str(exc)) from None
    nameservers = tuple(_hostport(t, f"nameservers[{i}]", n, 53) for i, n in enumerate(t.texts("nameservers", [])))
    dqs_key = t.text("spamhaus_dqs_key", "")
    defaults = default_zones(dqs_key) if t.flag("use_default_zones", True) else []
    configured = []
    for i, raw in enumerate(t.raw("zones") or []):
        zone_table = _Table(raw, t.child_path(f"zones[{i}]"))
        codes = zone_table.table("codes")
        code_map = {code: codes.text(code, "") for code in codes.keys()}
        for code in code_map:
            if not re.fullmatch(r"127\.\d{1,3}\.\d{1,3}\.\d{1,3}", code):
                raise codes.error(code, "a listing code is an address inside 127.0.0.0/8")
        codes.finish()
        name = zone_table.text("name", "")
        if not name or not code_map:
            raise zone_table.error("name", "a zone needs a name and at least one listing code")
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
    if settings.email_to and (settings.smtp_relay is None) == (not settings.sendmail):
        raise alerts.error("email_to", "e-mail alerts need exactly one of smtp_relay or sendmail")
    alerts.finish()
    t.finish()
    return settings


def _alert_transport(alerts: _Table) -> dict[str, str]:
    """[rbl.alerts] smtp_user + smtp_password_file (SMTP AUTH through smtp_relay), or sendmail."""
    user, password_file = alerts.text("smtp_user", ""), alerts.text("smtp_password_file", "")
    if bool(user) != bool(password_file):
        raise alerts.error("smtp_user", "SMTP AUTH needs both smtp_user and smtp_password_file")
    password = ""
    if password_file:
        if not os.path.isabs(password_file):
            raise alerts.error("smtp_password_file", f"{password_file!r} is not an absolute path")
        try:
            password = read_key_file(password_file, "SMTP password file").decode("utf-8")
        except (KeyFileError, UnicodeDecodeError) as exc:
            raise alerts.error("smtp_password_file", str(exc) if isinstance(exc, KeyFileError) else
                               f"{password_file} is not UTF-8") from None
        if not password:
            raise alerts.error("smtp_password_file", f"{password_file} is empty")
    sendmail = alerts.text("sendmail", "")
    if sendmail and not (os.path.isabs(sendmail) and os.path.isfile(sendmail) and os.access(sendmail, os.X_OK)):
        raise alerts.error("sendmail", f"{sendmail!r} is not an executable file (e.g. /usr/sbin/sendmail)")
    return {"smtp_user": user, "smtp_password": password, "sendmail": sendmail}


def _log(t: _Table) -> LogSettings:
    d = LogSettings()
    settings = LogSettings(
        target=t.choice("target", d.target, ("stderr", "syslog")),
        facility=t.choice("facility", d.facility, ("mail", "daemon", "user", *(f"local{i}" for i in range(8)))),
        format=t.choice("format", d.format, ("kv", "json")),
        level=t.choice("level", d.level, ("debug", "info", "warning", "error")),
    )
    t.finish()
    return settings


def _network(t: _Table, key: str, text: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise t.error(key, f"{text!r} is not an IP address or network") from None


def read_map_file(path: str) -> dict[str, str]:
    """Postfix-style map: `key value` per line, `#` comments. Keys are lower-cased."""
    entries: dict[str, str] = {}
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) != 2:
                raise ValueError(f"{path} line {number}: expected 'IDENTITY ACCOUNT', got {line!r}")
            entries[parts[0].lower()] = parts[1].lower()
    return entries


# -- a strict reader that remembers where it is --------------------------------------------


class _Table:
    def __init__(self, data: Mapping[str, Any], path: str) -> None:
        if not isinstance(data, Mapping):
            raise ConfigError(f"{path}: expected a table")
        self.data = data
        self.path = path
        self.seen: set[str] = set()

    def child_path(self, key: str) -> str:
        quoted = key if re.fullmatch(r"[A-Za-z0-9_-]+(\[\d+\])?", key) else f'"{key}"'
        return f"{self.path}.{quoted}" if self.path else quoted

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.child_path(key)}: {message}")

    def __contains__(self, key: str) -> bool:
        return key in self.data

    def keys(self) -> Iterator[str]:
        return iter(list(self.data.keys()))

    def raw(self, key: str) -> Any:
        self.seen.add(key)
        return self.data.get(key)

    def _typed(self, key: str, default: Any, kind: type | tuple[type, ...], what: str) -> Any:
        if key not in self.data:
            return default
        value = self.raw(key)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.error(key, f"expected {what}, got {value!r}")
        return value

    def text(self, key: str, default: str) -> str:
        value: str = self._typed(key, default, str, "a string")
        return value

    def flag(self, key: str, default: bool) -> bool:
        value: bool = self._typed(key, default, bool, "true or false")
        return value

    def integer(self, key: str, default: int | None, minimum: int = 0) -> Any:
        value = self._typed(key, default, int, "a whole number")
        if value is not None and value < minimum:
            raise self.error(key, f"must be at least {minimum}, got {value}")
        return value

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.text(key, default)
        if value not in choices:
            raise self.error(key, f"{value!r} is not one of {', '.join(choices)}")
        return value

    def texts(self, key: str, default: list[str]) -> list[str]:
        value = self._typed(key, default, list, "a list of strings")
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise self.error(f"{key}[{i}]", f"expected a string, got {item!r}")
        return list(value)

    def table(self, key: str) -> _Table:
        value = self._typed(key, {}, dict, "a table")
        return _Table(value, self.child_path(key))

    def finish(self) -> None:
        unknown = [key for key in self.data if key not in self.seen]
        if unknown:
            raise self.error(unknown[0], "unknown key")
