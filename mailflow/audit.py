"""The audit log: every admin command that changes policy state appends who, when, what and why.

Kept in the store (Redis list or SQLite table), bounded to the newest KEEP entries; each field is
bounded too, so no command line can grow it beyond KEEP * ~2 KB. Who: the Unix user running the
command (from the process's uid, which no one can fake) and, when set, the SUDO_USER that sudo
puts in the environment ("root (sudo by alice)"; an environment variable, so informative only).

The entry is written after the action succeeded. If it cannot be written, the action stays done,
and the command says so on stderr and exits AUDIT_MISSING (3): an admin must know the trail has
a gap.
"""

from __future__ import annotations

import json
import os
import pwd
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any, TypeVar

import click

from mailflow.ratelimit.grants import GrantError, check_account
from mailflow.store.base import Store, StoreError

KEEP = 10_000
AUDIT_MISSING = 3
MAX_FIELD = 500
F = TypeVar("F", bound=Callable[..., Any])


def bounded(text: str, limit: int = MAX_FIELD) -> str:
    """One printable line of at most `limit` characters."""
    line = "".join(c if c.isprintable() else "?" for c in " ".join(str(text)[:limit * 4].split()))
    return line if len(line) <= limit else line[:limit - 1] + "…"


def who_runs() -> str:
    uid = os.getuid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = f"uid {uid}"
    sudo = bounded(os.environ.get("SUDO_USER", ""), 64)
    return f"{user} (sudo by {sudo})" if sudo and sudo != user else user


@dataclass(frozen=True)
class AuditEntry:
    at: float
    who: str
    action: str  # the command, e.g. "ratelimit grant"
    account: str  # "" when the action names none (the global suppression list)
    what: str  # its arguments, in words
    why: str

    def value(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_value(cls, value: str) -> AuditEntry | None:
        try:
            data = json.loads(value)
            return cls(float(data["at"]), str(data["who"]), str(data["action"]), str(data["account"]),
                       str(data["what"]), str(data["why"]))
        except (ValueError, KeyError, TypeError):
            return None

    def line(self) -> str:
        when = datetime.fromtimestamp(self.at, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        parts = [when, self.who, f"{self.action} {self.account}".strip(), self.what, f"why: {self.why}" if self.why else ""]
        return "  ".join(part for part in parts if part)


def why_option(*names: str) -> Callable[[F], F]:
    """`--why TEXT` (and `--reason` where a command has no reason of its own): the audit's why."""
    return click.option(*(names or ("--reason", "--why")), "why", default=None, metavar="TEXT",
                        help="Why, for the audit log (`mailflow audit`).")


def account_argument(name: str = "account") -> Callable[[F], F]:
    """An ACCOUNT argument, checked and lower-cased as stored: an empty or blank name is one
    line and exit 2, never an account "" held or looked up."""
    def check(_ctx: click.Context, param: click.Parameter, value: str) -> str:
        try:
            return check_account(value)
        except GrantError as exc:
            raise click.BadParameter(str(exc), param=param) from None

    return click.argument(name, metavar="ACCOUNT", callback=check)


class AuditMissing(click.ClickException):
    exit_code = AUDIT_MISSING


def record(store: Store, action: str, account: str, what: str = "", why: str | None = None,
           extra: Mapping[str, object] | None = None) -> None:
    """Append an entry; AuditMissing (exit 3, one line) if the store would not take it. Call it
    after the action and its own output: the action is done either way."""
    if extra:
        what = " ".join([what, *(f"{key}={value}" for key, value in extra.items())]).strip()
    entry = AuditEntry(time.time(), bounded(who_runs(), 100), action, bounded(account, 255), bounded(what),
                       bounded(why or ""))
    try:
        store.add_audit(entry.value(), KEEP)
    except StoreError as exc:
        raise AuditMissing(f"{action} done, but NOT written to the audit log: {exc}") from None


def entries(store: Store, account: str | None = None, count: int = 50) -> Iterator[AuditEntry]:
    """The newest entries first, of one account when given (searching the whole bounded log)."""
    values = store.audit_entries(KEEP if account else count)
    found = [entry for entry in map(AuditEntry.from_value, values)
             if entry is not None and (account is None or entry.account == account)]
    if account is None and len(found) < len(values):  # unreadable entries skipped: look further back
        found = [entry for entry in map(AuditEntry.from_value, store.audit_entries(KEEP)) if entry is not None]
    yield from found[:count]
