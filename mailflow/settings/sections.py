"""Readers for the service sections of mailflow.toml: milter, store, accounts, suppression, log."""

from __future__ import annotations

import ipaddress
import os
import re

from mailflow.settings import (IDENTITY_SOURCES, LOCAL_SMTP, SUPPRESSION_ACTIONS, AccountSettings, IPNetwork,
                               LogSettings, MilterSettings, StoreSettings, SuppressionSettings, host_names)
from mailflow.settings.table import Table
from mailflow.suppression.keys import KeyFileError, read_key_file
from mailflow.urls import store_url_problem
from mailflow.urls_sentinel import add_passwords

_SOCKET_RE = re.compile(r"^(unix|local):/[^\0]+|^inet6?:(\d{1,5})(@[^\s\0]+)?$")


def parse_milter(t: Table) -> MilterSettings:
    d = MilterSettings()
    socket = t.text("socket", d.socket)
    match = _SOCKET_RE.match(socket)
    if not match or (match.group(2) and not 0 < int(match.group(2)) < 65536):
        t.report("socket", f"{socket!r} is not a milter socket (inet:PORT@HOST, inet6:PORT@HOST or unix:/PATH;"
                           " PORT 1-65535)")
    mode_text = t.text("socket_mode", f"{d.socket_mode:04o}")
    if not re.fullmatch(r"0?[0-7]{3}", mode_text) or int(mode_text, 8) & 0o007:
        t.report("socket_mode", f"{mode_text!r}: expected an octal mode with no bits for others, like \"0660\"")
        mode_text = f"{d.socket_mode:04o}"
    group = t.text("socket_group", d.socket_group)
    if group:
        import grp

        try:
            grp.getgrgid(int(group)) if group.isdigit() else grp.getgrnam(group)
        except KeyError:
            t.report("socket_group", f"no group named {group!r} on this host")
    settings = MilterSettings(
        socket=socket,
        mode=t.choice("mode", d.mode, ("enforce", "monitor")),
        on_error=t.choice("on_error", d.on_error, ("tempfail", "accept", "local")),
        timeout=t.integer("timeout", d.timeout, minimum=1),
        socket_mode=int(mode_text, 8),
        socket_group=group,
    )
    t.finish()
    return settings


def parse_store(t: Table) -> StoreSettings:
    d = StoreSettings()
    url = t.text("url", d.url)
    problem = store_url_problem(url)
    if problem:
        t.report("url", problem)
    # Redis passwords kept out of the config file (README, "Redis Sentinel"): put into the URL.
    password, sentinel_password = secret_file(t, "password_file"), secret_file(t, "sentinel_password_file")
    if not problem and (password or sentinel_password):
        try:
            url = add_passwords(url, password, sentinel_password)
        except ValueError as exc:
            t.report("password_file" if password else "sentinel_password_file", str(exc))
    timeout_ms = t.integer("timeout_ms", d.timeout_ms, minimum=1)
    wait_replicas, wait_timeout_ms = (t.integer("wait_replicas", d.wait_replicas),
                                      t.integer("wait_timeout_ms", d.wait_timeout_ms, minimum=1))
    if wait_replicas and url.startswith("sqlite://"):
        t.report("wait_replicas", "needs a Redis store with replicas (SQLite has none): set 0")
    elif wait_replicas and wait_timeout_ms > timeout_ms // 2:  # the debit and its WAIT share one deadline
        t.report("wait_timeout_ms", f"{wait_timeout_ms} is over half of timeout_ms ({timeout_ms}), "
                                    "which the debit and its WAIT share")
    settings = StoreSettings(url=url, timeout_ms=timeout_ms, refresh_ms=t.integer("refresh_ms", d.refresh_ms, minimum=10),
                             group=t.text("group", d.group),  # checked by store.check_store_path
                             wait_replicas=wait_replicas, wait_timeout_ms=wait_timeout_ms,
                             fleet_size=t.integer("fleet_size", d.fleet_size, minimum=0),
                             fallback_path=t.text("fallback_path", d.fallback_path))
    t.finish()
    return settings


def secret_file(t: Table, key: str, what: str = "") -> str:
    """A password from the file `key` names (absolute path; refused, like OpenSSH, if others may
    read it: suppression.keys.read_key_file), or "" when `key` is unset."""
    path = t.text(key, "")
    if not path:
        return ""
    what = what or key.replace("_", " ")
    if not os.path.isabs(path):
        t.report(key, f"{path!r} is not an absolute path")
        return ""
    try:
        secret = read_key_file(path, what).decode("utf-8")
    except KeyFileError as exc:
        t.report(key, str(exc))
    except UnicodeDecodeError:
        t.report(key, f"{path} is not UTF-8")
    else:
        if secret:
            return secret
        t.report(key, f"{path} is empty")
    return ""


def parse_accounts(t: Table, base_dir: str) -> AccountSettings:
    identify = t.texts("identify", list(IDENTITY_SOURCES))
    if not identify:
        t.report("identify", f"is empty, which would police no mail; list one or more of {', '.join(IDENTITY_SOURCES)}")
    for i, source in enumerate(identify):
        if source not in IDENTITY_SOURCES:
            t.report(f"identify[{i}]", f"{source!r} is not one of {', '.join(IDENTITY_SOURCES)}")
    networks = tuple(net for i, n in enumerate(t.texts("trusted_networks", []))
                     if (net := _network(t, f"trusted_networks[{i}]", n)))

    identity_map: dict[str, str] = {}
    map_file = t.text("map_file", "")
    if map_file:
        map_path = map_file if os.path.isabs(map_file) else os.path.join(base_dir, map_file)
        try:
            identity_map.update(read_map_file(map_path))
        except (OSError, ValueError) as exc:
            t.report("map_file", str(exc))
    inline = t.table("map")
    for key in inline.keys():
        identity_map[key.lower()] = inline.text(key, "")
    inline.finish()

    ip_table = t.table("ip_map")
    ip_map = [(net, ip_table.text(key, "")) for key in ip_table.keys() if (net := _network(ip_table, key, key))]
    ip_table.finish()
    ip_map.sort(key=lambda item: item[0].prefixlen, reverse=True)

    local_names = frozenset(n.lower().rstrip(".") for n in t.texts("local_names", []) if n.strip()) or host_names()
    settings = AccountSettings(tuple(identify), networks, identity_map, tuple(ip_map),
                               local_smtp=t.choice("local_smtp", "refuse", LOCAL_SMTP),
                               msp_daemons=frozenset(t.texts("msp_daemons", [])), local_names=local_names,
                               postsuper=t.text("postsuper", AccountSettings.postsuper),
                               postfix_config_dir=t.text("postfix_config_dir", ""))
    t.finish()
    return settings



def parse_suppression(top: Table, base_dir: str) -> SuppressionSettings:
    if "suppression" not in top:
        top.table("suppression")  # mark as seen
        return SuppressionSettings()
    t = top.table("suppression")
    d = SuppressionSettings()
    env_name = t.text("hash_key_env", "")
    key_file = t.text("hash_key_file", "")
    if bool(env_name) == bool(key_file):
        t.report("hash_key_env", "give exactly one of hash_key_env or hash_key_file")
    secret = b""
    if env_name and not key_file:
        secret = os.environ.get(env_name, "").encode()
        if not secret:
            t.report("hash_key_env", f"environment variable {env_name} is not set")
    elif key_file and not env_name:
        path = key_file if os.path.isabs(key_file) else os.path.join(base_dir, key_file)
        try:
            secret = read_key_file(path)
        except KeyFileError as exc:
            t.report("hash_key_file", str(exc))
    if secret and len(secret) < 16:
        t.report("hash_key_env" if env_name else "hash_key_file", "the key must be at least 16 bytes")
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



def parse_log(t: Table) -> LogSettings:
    d = LogSettings()
    settings = LogSettings(
        target=t.choice("target", d.target, ("stderr", "syslog")),
        syslog_socket=t.text("syslog_socket", d.syslog_socket),
        facility=t.choice("facility", d.facility, ("mail", "daemon", "user", *(f"local{i}" for i in range(8)))),
        format=t.choice("format", d.format, ("kv", "json")),
        level=t.choice("level", d.level, ("debug", "info", "warning", "error")),
    )
    t.finish()
    return settings


def _network(t: Table, key: str, text: str) -> IPNetwork | None:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        t.report(key, f"{text!r} is not an IP address or network")
        return None


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
