"""[notify] of mailflow.toml: who hears about policy events (mailflow/events.py) and how.

The log always does. A webhook when `webhook` is set (signing it is required: a panel must be able
to trust what it acts on); e-mail to the admins and to customers through the [rbl.alerts] channel.
"""

from __future__ import annotations

import os
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from mailflow.events import ACCOUNT_HELD, ACCOUNT_RELEASED, KINDS, LIMIT_NEAR, LIMIT_REFUSED
from mailflow.settings.table import Table

if TYPE_CHECKING:
    from mailflow.settings import Config

CUSTOMER_EVENTS = (LIMIT_NEAR, LIMIT_REFUSED, ACCOUNT_HELD, ACCOUNT_RELEASED)
MAX_TEMPLATE_BYTES = 64 * 1024
_ADDRESS = re.compile(r"[^@\s<>,;]+@[^@\s<>,;]+")  # one bare address: nothing a header could be split on


@dataclass(frozen=True)
class NotifySettings:
    near_limit: int = 80  # percent of a limit that makes a limit_near event; 0: none
    queue_size: int = 1000  # events waiting to be sent; more are dropped (counted, logged)
    webhook: str = ""
    webhook_secret: bytes = field(default=b"", repr=False)  # read from webhook_secret_file
    webhook_timeout_ms: int = 5000  # per attempt
    webhook_attempts: int = 6
    webhook_backoff_ms: int = 1000  # first retry after this, doubling
    webhook_max_seconds: int = 120  # no attempt starts later than this after the first
    email_to: tuple[str, ...] = ()  # admins; sent through the [rbl.alerts] channel
    email_events: tuple[str, ...] = KINDS
    contacts: Mapping[str, str] = field(default_factory=dict)  # account -> customer's address
    customer_events: tuple[str, ...] = CUSTOMER_EVENTS
    customer_template: str = ""  # the file's text, or "" for the built-in one


def parse_notify(t: Table, base_dir: str) -> NotifySettings:
    d = NotifySettings()
    webhook = t.text("webhook", "")
    if webhook and not _http_url(webhook):
        t.report("webhook", f"{webhook!r} is not an http:// or https:// URL")
    secret = _secret(t, base_dir) if "webhook_secret_file" in t else b""
    if webhook and not secret and "webhook_secret_file" not in t:
        t.report("webhook", "a webhook needs webhook_secret_file (the HMAC key its receiver checks signatures with)")
    contacts: dict[str, str] = {}
    contacts_file = t.text("contacts_file", "")
    if contacts_file:
        from mailflow.settings.sections import read_map_file

        try:
            contacts.update(read_map_file(_path(base_dir, contacts_file)))
        except (OSError, ValueError) as exc:
            t.report("contacts_file", str(exc))
    per_account = t.table("accounts")
    for name in per_account.keys():
        sub = per_account.table(name)
        contacts[name.lower()] = sub.text("contact", "")
        sub.finish()
    per_account.finish()
    settings = NotifySettings(
        near_limit=_percent(t, "near_limit", d.near_limit),
        queue_size=t.integer("queue_size", d.queue_size, minimum=1),
        webhook=webhook,
        webhook_secret=secret,
        webhook_timeout_ms=t.integer("webhook_timeout_ms", d.webhook_timeout_ms, minimum=1),
        webhook_attempts=t.integer("webhook_attempts", d.webhook_attempts, minimum=1),
        webhook_backoff_ms=t.integer("webhook_backoff_ms", d.webhook_backoff_ms, minimum=1),
        webhook_max_seconds=t.integer("webhook_max_seconds", d.webhook_max_seconds, minimum=1),
        email_to=tuple(t.texts("email_to", [])),
        email_events=_kinds(t, "email_events", d.email_events),
        contacts={account: address for account, address in contacts.items() if address},
        customer_events=_kinds(t, "customer_events", d.customer_events),
        customer_template=_template(t, base_dir),
    )
    for account, address in contacts.items():
        if address and not _ADDRESS.fullmatch(address):
            t.report("contacts", f"{account}: {address!r} is not an e-mail address")
    for i, address in enumerate(settings.email_to):
        if not _ADDRESS.fullmatch(address):
            t.report(f"email_to[{i}]", f"{address!r} is not an e-mail address")
    t.finish()
    return settings


def check_notify_channel(top: Table, config: Config) -> None:
    """E-mail notices go out through the DNSBL watcher's alert channel: it must be set."""
    notify, rbl = config.notify, config.rbl
    if (notify.email_to or notify.contacts) and not (rbl.smtp_relay or rbl.sendmail):
        top.table("notify").report("email_to" if notify.email_to else "accounts",
                                   "e-mail notices go out through the [rbl.alerts] channel: set its smtp_relay or sendmail")


def _http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        return parts.scheme in ("http", "https") and bool(parts.hostname) and (parts.port or 1) > 0
    except ValueError:  # "http://[::1", a port that is not a number
        return False


def _path(base_dir: str, path: str) -> str:
    return path if os.path.isabs(path) else os.path.join(base_dir, path)


def _secret(t: Table, base_dir: str) -> bytes:
    from mailflow.suppression.keys import KeyFileError, read_key_file

    path = _path(base_dir, t.text("webhook_secret_file", ""))
    try:
        secret = read_key_file(path, "webhook secret file")
    except KeyFileError as exc:
        t.report("webhook_secret_file", str(exc))
        return b""
    if len(secret) < 16:
        t.report("webhook_secret_file", f"{path}: the secret must be at least 16 bytes")
    return secret


def _percent(t: Table, key: str, default: int) -> int:
    value: int = t.integer(key, default, minimum=0)
    if value > 100:
        t.report(key, f"a share of a limit in percent (0-100, 0 = off), got {value}")
        return default
    return value


def _kinds(t: Table, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    kinds = t.texts(key, list(default))
    for i, kind in enumerate(kinds):
        if kind not in KINDS:
            t.report(f"{key}[{i}]", f"{kind!r} is not one of {', '.join(KINDS)}")
    return tuple(kind for kind in kinds if kind in KINDS)


def _template(t: Table, base_dir: str) -> str:
    """The customer notice template, checked now: a broken one is a config error, not a lost notice."""
    name = t.text("customer_template", "")
    if not name:
        return ""
    path = _path(base_dir, name)
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_TEMPLATE_BYTES + 1)
        text = data.decode("utf-8")
    except OSError as exc:
        t.report("customer_template", f"{path}: {exc.strerror}")
        return ""
    except UnicodeDecodeError:
        t.report("customer_template", f"{path}: not UTF-8")
        return ""
    if len(data) > MAX_TEMPLATE_BYTES:
        t.report("customer_template", f"{path}: larger than {MAX_TEMPLATE_BYTES // 1024} KiB")
    elif not string.Template(text).is_valid():
        t.report("customer_template", f"{path}: a `$` that starts no placeholder (write $$ for a dollar sign)")
    return text
