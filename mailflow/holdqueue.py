"""The MTA's hold queue, seen from the admin CLI: `mailflow held`, and what `mailflow account
release` does with the messages mailflow recorded when it held them (mailflow/held.py).

Postfix only: `postqueue -j` says which recorded queue ids are still on hold, `postsuper -H -`
(or `-d -` with --drop) is given those on its standard input, and `postqueue -j` again says which
left the hold queue. postsuper's own summary goes to syslog unless its stderr is a terminal, so
the counts come from the queue itself. Programs run without a shell, with a timeout; every queue
id is checked (valid_queue_id) before it is passed on. Sendmail: see the README ("Held mail").
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timezone

import click

from mailflow import audit, events
from mailflow.config import Config
from mailflow.held import FLUSH_EVERY, HeldMessage, valid_queue_id
from mailflow.model import shown
from mailflow.store.base import Store, StoreError
from mailflow.urls import redact_text

TIMEOUT = 60  # seconds for one postqueue or postsuper run
MAX_OUTPUT_LINE = 1 << 16  # a postqueue -j line longer than this is not one of Postfix's records


class HoldQueueError(Exception):
    """postsuper or postqueue could not be run, or failed: one line saying why. `bad_config`:
    the program is not where accounts.postsuper says."""

    def __init__(self, text: str, bad_config: bool = False) -> None:
        super().__init__(text)
        self.bad_config = bad_config


@dataclass(frozen=True)
class Outcome:
    done: int  # released (or dropped with --drop)
    gone: int  # no longer on hold: delivered, deleted or released already
    invalid: int  # recorded without a usable queue id


class PostfixHoldQueue:
    def __init__(self, postsuper: str, config_dir: str = "") -> None:
        self.postsuper = postsuper
        self.postqueue = os.path.join(os.path.dirname(postsuper), "postqueue")  # Postfix installs them together
        self.config_dir = config_dir

    def _run(self, program: str, args: Sequence[str], stdin: str = "") -> str:
        command = [program, *(["-c", self.config_dir] if self.config_dir else []), *args]
        try:
            result = subprocess.run(command, input=stdin, capture_output=True, text=True, errors="replace",
                                    timeout=TIMEOUT, check=False)
        except FileNotFoundError:
            raise HoldQueueError(f"{program} not found (see accounts.postsuper)", bad_config=True) from None
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise HoldQueueError(f"{program}: {exc}") from None
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["no message"])[-1][:300]
            raise HoldQueueError(f"{os.path.basename(program)} failed (exit {result.returncode}): {last}")
        return result.stdout

    def on_hold(self) -> set[str]:
        """Queue ids in the hold queue now (postqueue -j: one JSON object per message)."""
        held: set[str] = set()
        for line in self._run(self.postqueue, ["-j"]).splitlines():
            if len(line) > MAX_OUTPUT_LINE:
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("queue_name") == "hold":
                held.add(str(record.get("queue_id", "")))
        return held

    def release(self, queue_ids: Sequence[str], drop: bool = False) -> Outcome:
        """Release (or drop) those of `queue_ids` still on hold."""
        usable = sorted({qid for qid in queue_ids if valid_queue_id(qid)})
        invalid = len(queue_ids) - len([qid for qid in queue_ids if valid_queue_id(qid)])
        before = self.on_hold() & set(usable) if usable else set()
        if before:
            self._run(self.postsuper, ["-d" if drop else "-H", "-"], stdin="".join(f"{qid}\n" for qid in sorted(before)))
        done = len(before - self.on_hold()) if before else 0
        return Outcome(done, len(usable) - len(before), invalid)


def account_hold_records(store: Store, account: str) -> list[HeldMessage]:
    """The recorded messages held because the account was held (not those a rule held)."""
    return [r for r in store.held_messages(account) if r.reason == "account_held"]


def release_held_mail(config: Config, store: Store, account: str, drop: bool, just_released: bool) -> str:
    """Release (or drop) the messages held because `account` was held; forget their records.
    Returns the sentence to show; HoldQueueError when Postfix could not be asked.
    `just_released`: first wait until every milter has seen the release (Redis: its replica's
    refresh) and written its last records, so no message held in between stays behind."""
    if just_released:
        time.sleep(config.store.refresh_ms / 1000 + FLUSH_EVERY + 0.5)
    records = account_hold_records(store, account)
    if not records:
        return "no held messages recorded"
    queue = PostfixHoldQueue(config.accounts.postsuper, config.accounts.postfix_config_dir)
    outcome = queue.release([r.queue_id for r in records], drop)
    still = queue.on_hold()
    store.forget_held_messages(account, [r.queue_id for r in records if r.queue_id not in still])
    parts = [f"{outcome.done} {'dropped' if drop else 'released'}", f"{outcome.gone} no longer on hold"]
    if outcome.invalid:
        parts.append(f"{outcome.invalid} without a queue id")
    return ", ".join(parts)


def release_account(config: Config, store: Store, account: str, drop: bool, why: str | None) -> None:
    """`mailflow account release`: the account, then its held mail, then what was done. An audit
    entry that cannot be written stops nothing: it is said last (exit 3), or beside the error that
    ends the command, so the held mail is released even when the audit log has a gap."""
    released = store.release_account(account)
    if not released and not account_hold_records(store, account):
        raise click.ClickException(f"account {account} is not held")
    gap: audit.AuditMissing | None = None
    if released:
        events.publish(events.Event(events.ACCOUNT_RELEASED, account, {"by": "admin", "user": audit.who_runs()}))
        try:
            audit.record(store, "account release", account, "--drop" if drop else "", why=why)
        except audit.AuditMissing as exc:
            gap = exc
    try:
        try:  # after the account: no new mail is held once its held mail goes
            mail = release_held_mail(config, store, account, drop, released)
        except HoldQueueError as exc:
            error = click.UsageError if exc.bad_config else click.ClickException
            raise error(f"account {account}: {'released' if released else 'not held'}; its held messages "
                        f"were not released: {exc}") from None
    except (click.ClickException, StoreError):
        if gap is not None:
            click.echo(f"mailflow: {redact_text(gap.format_message())}", err=True)  # as cli._say
        raise
    click.echo(f"account {account}: {'released' if released else 'not held'}; held messages: {mail}")
    if gap is not None:
        raise gap


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def register(cli: click.Group, load: Callable[[str | None], Config],
             store_of: Callable[[Config], AbstractContextManager[Store]],
             config_option: Callable[[Callable[..., None]], Callable[..., None]]) -> None:
    """Attach `mailflow held` to the main CLI."""

    @cli.command("held")
    @config_option
    @click.option("--account", default=None, help="Only this account's messages.")
    @click.option("--json", "as_json", is_flag=True, help="One JSON object per message, for panels.")
    def held(config_file: str | None, account: str | None, as_json: bool) -> None:
        """Messages mailflow put in the MTA's hold queue: queue id, when, account, why."""
        config = load(config_file)
        with store_of(config) as store:
            records = store.held_messages(account.lower() if account else None)
        for line in _lines(records, as_json):
            click.echo(line)


def _lines(records: Sequence[HeldMessage], as_json: bool) -> Iterator[str]:
    if as_json:
        for r in records:
            yield json.dumps({"account": r.account, "queue_id": r.queue_id, "held_at": _iso(r.at), "reason": r.reason,
                              "why": r.why, "recipients": r.recipients, "sender_domain": r.sender_domain})
        return
    if not records:
        yield "no held messages recorded"
    for r in records:
        yield f"{r.queue_id or '-':<16} {_iso(r.at)}  {shown(r.account):<32} {r.recipients:>3} rcpt  {shown(r.why, 200)}"
