"""Load and validate mailflow.toml into typed, frozen settings (mailflow.settings).

Every error names the offending key (`ratelimit.accounts."shop.example".limits[1]`), so
`mailflow check-config` and a failing `mailflow run` say exactly what to fix. Unknown keys
are errors too: a typo must not silently fall back to a default. The readers live in
mailflow.settings.sections and .policies; this module is the entry point and re-exports the
settings classes for callers that load a config.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from typing import Any

from mailflow.accounts import trusted_network_warnings
from mailflow.log import syslog_problem
from mailflow.settings import (AccountSettings, BulkPolicy, BulkSettings, Config, ForgeryAccount, ForgerySettings,
                               LogSettings, MetricsSettings, MilterSettings, RateLimitSettings, RatePolicy, RblSettings, StoreSettings,
                               SuppressionSettings, host_names)
from mailflow.settings.notify import check_notify_channel, parse_notify
from mailflow.metrics.settings import parse_metrics
from mailflow.settings.feedback import parse_feedback
from mailflow.settings.reputation import parse_reputation
from mailflow.settings.policies import parse_bulk, parse_forgery, parse_ratelimit, parse_rbl
from mailflow.settings.sections import (parse_accounts, parse_log, parse_milter, parse_store, parse_suppression,
                                        read_map_file)
from mailflow.settings.table import ConfigError, Table

__all__ = ["AccountSettings", "BulkPolicy", "BulkSettings", "Config", "ConfigError", "ForgeryAccount",
           "ForgerySettings", "LogSettings", "MetricsSettings", "MilterSettings", "RateLimitSettings", "RatePolicy", "RblSettings",
           "StoreSettings", "SuppressionSettings", "config_path", "host_names", "load_config", "parse_config",
           "read_map_file", "config_warnings"]

DEFAULT_CONFIG_PATH = "/etc/mailflow/mailflow.toml"
CONFIG_ENV = "MAILFLOW_CONFIG"


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
        raise exc.prefixed(path) from None


def parse_config(raw: Mapping[str, Any], base_dir: str = ".", path: str | None = None) -> Config:
    top = Table(raw, "")
    config = Config(
        milter=parse_milter(top.table("milter")),
        store=parse_store(top.table("store")),
        accounts=parse_accounts(top.table("accounts"), base_dir),
        ratelimit=parse_ratelimit(top.table("ratelimit")),
        forgery=parse_forgery(top.table("forgery"), base_dir),
        suppression=parse_suppression(top, base_dir),
        bulk=parse_bulk(top.table("bulk")),
        rbl=parse_rbl(top.table("rbl")),
        log=parse_log(top.table("log")),
        notify=parse_notify(top.table("notify"), base_dir),
        metrics=parse_metrics(top.table("metrics")),
        feedback=parse_feedback(top.table("feedback")),
        reputation=parse_reputation(top.table("reputation"), "reputation" in raw),
        path=path,
    )
    top.finish()
    check_notify_channel(top, config)
    top.check()  # every error in the file at once, each with its key
    return config


# IPv4: a /7 or wider is a 256th of the Internet or more. IPv6: wider than /32, the smallest
# allocation a registry gives a provider, means networks that are not the provider's own.
_WIDEST_TRUSTED = {4: 8, 6: 32}
MIN_RBL_INTERVAL = 60  # seconds: DNSBL operators block resolvers that ask faster


def config_warnings(config: Config, syslog: bool = True) -> list[str]:
    """Values that work but are dangerous, each with its key: `check-config` prints them and
    `run` logs them; neither refuses the config for them. `syslog=False`: setup_logging has
    already said whether syslog listens."""
    found: list[str] = []
    for i, net in enumerate(config.accounts.trusted_networks):
        if net.prefixlen < _WIDEST_TRUSTED[net.version]:
            found.append(f"accounts.trusted_networks[{i}]: {net} trusts a large part of the Internet to send as any "
                         f"hosted domain; list only your own relays (IPv{net.version}: /{_WIDEST_TRUSTED[net.version]}"
                         " or narrower)")
    found += trusted_network_warnings(config.accounts)  # loopback listed, ip_map outside trusted_networks
    if config.accounts.local_smtp == "sender_domain":
        found.append('accounts.local_smtp: "sender_domain" bills unauthenticated SMTP from this host to whatever '
                     "sender domain it gives: any local process can spend (or spoof) any account's mail")
    if config.rbl.interval < MIN_RBL_INTERVAL:
        found.append(f"rbl.interval: {config.rbl.interval} s is under {MIN_RBL_INTERVAL} s; DNSBLs block resolvers "
                     "that query this often")
    if config.milter.on_error == "accept" and not (config.rbl.webhook or config.rbl.email_to or config.metrics.listen):
        found.append('milter.on_error: "accept" lets mail through unchecked while the store is down, and nothing '
                     "here tells you: no metrics to alert on ([metrics] listen) and no [rbl.alerts] webhook or "
                     "email_to is set; "
                     "watch the log for \"store unavailable\" or use on_error = \"tempfail\"")
    if syslog and config.log.target == "syslog" and (problem := syslog_problem(config.log.syslog_socket)):
        found.append(f"log.target: syslog is unavailable ({problem}); mailflow will log to stderr")
    return found
