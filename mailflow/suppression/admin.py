"""`mailflow suppress …` and `mailflow account …`: the admin side of suppression and holds."""

from __future__ import annotations

import csv
import io
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime, timezone
from typing import TextIO, TypeVar

import click

from mailflow import audit
from mailflow.audit import why_option
from mailflow.config import Config
from mailflow.events import ACCOUNT_HELD, Event, publish
from mailflow.held import parse_hold
from mailflow.store.base import Store
from mailflow.suppression.entries import GLOBAL, REASONS, Entry, EntryError, Matcher, scope_for
from mailflow.suppression import rekey
from mailflow.suppression.keygen import Refused
from mailflow.suppression.keys import MIN_SECRET_BYTES, SEALED_WITH_ANOTHER_KEY, Keyring, check_store_key, read_key_file
from mailflow.suppression.normalize import AddressForms

CSV_HEADER = ["address", "reason", "added_at", "source"]
T = TypeVar("T")
BATCH = 10_000


def key_check_scopes(config: Config, account: str | None = None) -> list[str]:
    """Lists whose first entry tells whether a store without a key fingerprint was made with
    another key (see keys.check_store_key)."""
    scopes = [GLOBAL, *(scope_for(name) for name in config.suppression.accounts)]
    return scopes + ([scope_for(account)] if account and scope_for(account) not in scopes else [])


def matcher_for(config: Config) -> Matcher:
    settings = config.suppression
    if not settings.enabled:
        raise click.UsageError("suppression is not configured: add a [suppression] table to the config")
    return Matcher(AddressForms(settings.case_sensitive_local_part, settings.strip_subaddress), Keyring(settings.secret))


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(text: str, line: int) -> int:
    text = text.strip()
    if not text:
        return int(time.time())
    if text.isdigit():
        return int(text)
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise EntryError(f"line {line}: added_at {text!r} is neither ISO 8601 nor unix seconds") from None
    return int((parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).timestamp())


def read_entries(fh: TextIO, matcher: Matcher, reason: str, source: str, hashed: str | None,
                 on_bad: Callable[[str], None], on_bytes: Callable[[int], None]) -> Iterator[Entry]:
    """Entries from a CSV (address,reason,added_at,source) or plain one-per-line file."""
    now = int(time.time())
    first = fh.readline()
    on_bytes(len(first.encode()))
    is_csv = first.strip().lower().replace(" ", "").startswith("address,")
    lines = fh if is_csv else _chain_first(first, fh)
    start = 2 if is_csv else 1
    for number, line in enumerate(lines, start):
        on_bytes(len(line.encode()))
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            if is_csv:
                row = next(csv.reader([text]))
                address, row_reason, added, row_source = (row + ["", "", ""])[:4]
                entry = matcher.make_entry(_with_hash_prefix(address, hashed), row_reason.strip() or reason,
                                           row_source.strip() or source, now)
                yield Entry(entry.key, entry.reason, _parse_time(added, number), entry.source, entry.sealed)
            else:
                yield matcher.make_entry(_with_hash_prefix(text, hashed), reason, source, now)
        except EntryError as exc:
            on_bad(f"line {number}: {exc}".replace(f"line {number}: line {number}:", f"line {number}:"))


def _chain_first(first: str, rest: TextIO) -> Iterator[str]:
    yield first
    yield from rest


def _each(addresses: tuple[str, ...], parse: Callable[[str], T]) -> list[T]:
    """Parse every command-line address; the first bad one is a usage error (exit 2)."""
    try:
        return [parse(address) for address in addresses]
    except EntryError as exc:
        raise click.BadParameter(str(exc), param_hint="ADDRESS") from None


def _with_hash_prefix(text: str, hashed: str | None) -> str:
    text = text.strip()
    return f"{hashed}:{text.lower()}" if hashed and ":" not in text else text


def _opened(store: Store, matcher: Matcher, scope: str) -> Iterator[tuple[str, Entry]]:
    """A list's entries with their text. While a re-key is under way every entry has a twin under
    the other key: those are left out (and counted on stderr), not shown as unreadable."""
    marker = rekey.rekey_marker(store)
    twins = 0
    for entry in store.iter_suppressions(scope):
        text = matcher.keyring.unseal(entry.sealed)
        if text == SEALED_WITH_ANOTHER_KEY and marker and marker[0] != "done":
            twins += 1
            continue
        yield text, entry
    if twins:
        click.echo(f"({twins} entries under the other key of the re-key under way left out)", err=True)


@contextmanager
def _progress(total: int) -> Iterator[Callable[[int], None]]:
    """A progress bar on a terminal; elsewhere (cron, a log) nothing until the summary line."""
    if not sys.stderr.isatty():
        yield lambda done: None
        return
    with click.progressbar(length=total, label="re-keying", file=sys.stderr) as bar:
        yield bar.update


def _report_copy(tally: rekey.Tally | None, new_key_file: str, seconds: float) -> None:
    if tally is None:
        click.echo("the lists already expect the new key: the copy is done")
    else:
        click.echo(f"{tally.rekeyed} entries re-keyed in {tally.lists} lists ({tally.already} by an earlier run), "
                   f"{seconds:.1f}s; the store now expects the new key")
        for count, what in ((tally.unreadable, "no key opens (left as they are)"),
                            (tally.unkeyable, "are no longer an address, @domain or hash (left as they are)"),
                            (tally.renormalised, "were stored under other address-form settings (re-keyed as the "
                                                 "config reads them now)")):
            if count:
                click.echo(f"warning: {count} entries {what}", err=True)
    click.echo(f"next: install {new_key_file} as the suppression key on every host (same mode and owner), restart "
               "every milter, then run `mailflow suppress rekey --finish` with the new key in the config")


def register(cli: click.Group, load: Callable[[str | None], Config],
             store_of: Callable[[Config], AbstractContextManager[Store]],
             config_option: Callable[[Callable[..., None]], Callable[..., None]]) -> None:
    """Attach the `suppress` and `account` groups to the main CLI."""

    account_option = click.option("--account", default=None, help="The account's list (omit for the global list).")

    @contextmanager
    def lists_of(config: Config, account: str | None, changes: bool = False) -> Iterator[Store]:
        """The store, once it is known to hold lists made with this key (and, to change them, that
        no re-key is copying them: a change made behind its copy would be lost at the switch)."""
        with store_of(config) as store:
            check_store_key(store, config.suppression.secret, key_check_scopes(config, account))
            marker = rekey.rekey_marker(store) if changes else None
            if marker and marker[0] == "copying":
                raise click.UsageError("a re-key of the lists is under way; run `mailflow suppress rekey "
                                       "--new-key-file FILE` to complete it, then change the lists")
            yield store

    @cli.group()
    def suppress() -> None:
        """Opt-out suppression lists: per account, or global (complaints, traps, blocks)."""

    @suppress.command("add")
    @config_option
    @account_option
    @click.option("--reason", type=click.Choice(REASONS), default="manual", show_default=True)
    @click.option("--source", default="cli", show_default=True, help="Where the entry came from.")
    @why_option("--why")
    @click.argument("addresses", nargs=-1, required=True, metavar="ADDRESS|@DOMAIN|md5:HEX...")
    def add(config_file: str | None, account: str | None, reason: str, source: str, why: str | None,
            addresses: tuple[str, ...]) -> None:
        """Suppress addresses or whole domains."""
        config = load(config_file)
        matcher = matcher_for(config)
        entries = _each(addresses, lambda a: matcher.make_entry(a, reason, source, int(time.time())))
        with lists_of(config, account, changes=True) as store:
            added = store.add_suppressions(scope_for(account), entries)
            click.echo(f"{added} added, {len(entries) - added} already listed ({scope_for(account)})")
            audit.record(store, "suppress add", account or "", f"{added} new of {len(entries)} in {scope_for(account)}",
                         why, {"reason": reason, "source": source})

    @suppress.command("remove")
    @config_option
    @account_option
    @why_option()
    @click.argument("addresses", nargs=-1, required=True, metavar="ADDRESS|@DOMAIN|md5:HEX...")
    def remove(config_file: str | None, account: str | None, why: str | None, addresses: tuple[str, ...]) -> None:
        """Lift suppressions (the exact entries; a family entry covers its variants)."""
        config = load(config_file)
        matcher = matcher_for(config)
        keys = _each(addresses, lambda a: matcher.entry_key(a)[0])
        with lists_of(config, account, changes=True) as store:
            removed = store.remove_suppressions(scope_for(account), keys)
            click.echo(f"{removed} removed ({scope_for(account)})")
            audit.record(store, "suppress remove", account or "", f"{removed} of {len(keys)} in {scope_for(account)}",
                         why)

    @suppress.command("check")
    @config_option
    @account_option
    @click.argument("address")
    def check(config_file: str | None, account: str | None, address: str) -> None:
        """Would mail to ADDRESS be refused? Exit 0 if suppressed, 1 if not."""
        config = load(config_file)
        matcher = matcher_for(config)
        scopes = [GLOBAL] + ([scope_for(account)] if account else [])
        with lists_of(config, account) as store:
            lookup = store.find_suppressions(account or "", scopes, matcher.recipient_keys(address))
        for scope, entry in lookup.matches:
            click.echo(f"{address}: suppressed by {matcher.keyring.unseal(entry.sealed)} in {scope} "
                       f"(reason {entry.reason}, added {_iso(entry.added_at)}, source {entry.source})")
        if not lookup.matches:
            click.echo(f"{address}: not suppressed")
            sys.exit(1)

    @suppress.command("list")
    @config_option
    @account_option
    def list_(config_file: str | None, account: str | None) -> None:
        """Every entry of a list: address, reason, added, source."""
        config = load(config_file)
        matcher = matcher_for(config)
        with lists_of(config, account) as store:
            for address, entry in _opened(store, matcher, scope_for(account)):
                click.echo(f"{address:<44} {entry.reason:<12} {_iso(entry.added_at)}  {entry.source}")

    @suppress.command("export")
    @config_option
    @account_option
    @click.option("--format", "fmt", type=click.Choice(["csv", "plain"]), default="csv", show_default=True)
    def export(config_file: str | None, account: str | None, fmt: str) -> None:
        """Write a list to stdout as CSV (address,reason,added_at,source) or one entry per line."""
        config = load(config_file)
        matcher = matcher_for(config)
        with lists_of(config, account) as store:
            out = io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8", newline="", write_through=False)
            try:  # detached, never closed: stdout stays usable whatever happens
                writer = csv.writer(out, lineterminator="\n")
                if fmt == "csv":
                    writer.writerow(CSV_HEADER)
                for address, entry in _opened(store, matcher, scope_for(account)):
                    if fmt == "csv":
                        writer.writerow([address, entry.reason, _iso(entry.added_at), entry.source])
                    else:
                        out.write(address + "\n")
                out.flush()
            finally:
                out.detach()

    @suppress.command("import")
    @config_option
    @account_option
    @click.option("--reason", type=click.Choice(REASONS), default="unsubscribe", show_default=True,
                  help="For lines (or CSV rows) that give none.")
    @click.option("--source", default=None, help="Where the list came from (default: the file name).")
    @click.option("--hashed", type=click.Choice(["md5", "sha256"]), default=None,
                  help="Lines are bare MD5/SHA-256 hex digests of addresses, as list brokers ship them.")
    @why_option("--why")
    @click.argument("path", type=click.Path(exists=True, dir_okay=False))
    def import_(config_file: str | None, account: str | None, reason: str, source: str | None,
                hashed: str | None, why: str | None, path: str) -> None:
        """Import a CSV or plain list; bad lines are reported and skipped, nothing stored is lost."""
        import os

        config = load(config_file)
        matcher = matcher_for(config)
        scope, bad, added, total = scope_for(account), 0, 0, 0
        started = time.monotonic()

        def report_bad(message: str) -> None:
            nonlocal bad
            bad += 1
            click.echo(f"{path}: {message}", err=True)

        with lists_of(config, account, changes=True) as store, open(path, encoding="utf-8", errors="replace") as fh, \
                click.progressbar(length=os.path.getsize(path), label="importing", file=sys.stderr) as bar:
            batch: list[Entry] = []
            for entry in read_entries(fh, matcher, reason, source or os.path.basename(path), hashed, report_bad, bar.update):
                batch.append(entry)
                if len(batch) >= BATCH:
                    added, total = added + store.add_suppressions(scope, batch), total + len(batch)
                    batch = []
            if batch:
                added, total = added + store.add_suppressions(scope, batch), total + len(batch)
        click.echo(f"{path}: {total} entries read, {added} new, {total - added} already listed, {bad} bad lines "
                   f"skipped, {time.monotonic() - started:.1f}s ({scope})")
        with store_of(config) as store:
            audit.record(store, "suppress import", account or "", f"{added} new of {total} in {scope} from "
                         f"{os.path.basename(path)}", why, {"reason": reason, "bad_lines": bad})

    @suppress.command("rekey")
    @config_option
    @click.option("--new-key-file", metavar="FILE", default=None,
                  help="Start (or resume) a re-key to this key; the config names the old one.")
    @click.option("--finish", is_flag=True, help="Remove the old key's entries (the config names the new key).")
    @click.option("--batch", type=click.IntRange(1, 100_000), default=BATCH, show_default=True,
                  help="Entries per write: a stopped run loses at most one batch of work.")
    def rekey_(config_file: str | None, new_key_file: str | None, finish: bool, batch: int) -> None:
        """Re-key every list in place, resumably: rekey, install the key everywhere, --finish."""
        config = load(config_file)
        current = matcher_for(config)
        if bool(new_key_file) == finish:
            raise click.UsageError("give --new-key-file FILE (start or resume a re-key) or --finish")
        started = time.monotonic()
        with store_of(config) as store, _progress(sum(store.suppression_scopes().values())) as progress:
            try:
                if finish:
                    removed = rekey.finish(store, current, config.suppression.secret, key_check_scopes(config),
                                           batch, progress)
                else:
                    new_secret = read_key_file(new_key_file or "")
                    if len(new_secret) < MIN_SECRET_BYTES:
                        raise click.UsageError(f"{new_key_file}: the key must be at least {MIN_SECRET_BYTES} bytes")
                    new = Matcher(current.forms, Keyring(new_secret))
                    copied = rekey.start(store, current, config.suppression.secret, new, new_secret,
                                         key_check_scopes(config), batch, progress)
            except rekey.RekeyError as exc:
                raise Refused(str(exc)) from None
        if finish:
            click.echo(f"{removed.removed} entries of the old key removed from {removed.lists} lists, "
                       f"{time.monotonic() - started:.1f}s: the re-key is finished")
        else:
            _report_copy(copied, new_key_file or "", time.monotonic() - started)

    @cli.group()
    def account() -> None:
        """Accounts held after spam-trap hits (their mail goes to the MTA's hold queue)."""

    @account.command("hold")
    @config_option
    @click.option("--reason", default="held by an admin", show_default=True)
    @why_option("--why")
    @audit.account_argument("name")
    def hold(config_file: str | None, reason: str, why: str | None, name: str) -> None:
        """Hold every message of an account until released."""
        config = load(config_file)
        with store_of(config) as store:
            store.hold_account(name.lower(), reason)
            click.echo(f"account {name.lower()}: held")
            publish(Event(ACCOUNT_HELD, name.lower(), {"reason": reason, "by": "admin", "user": audit.who_runs()}))
            audit.record(store, "account hold", name.lower(), f"reason={reason}", why or reason)

    @account.command("release")
    @config_option
    @why_option()
    @click.option("--drop", is_flag=True, help="Delete the account's held messages instead of releasing them.")
    @audit.account_argument("name")
    def release(config_file: str | None, why: str | None, drop: bool, name: str) -> None:
        """Release a held account (and forget its trap hits), and its messages from Postfix's hold queue."""
        from mailflow.holdqueue import release_account

        config = load(config_file)
        with store_of(config) as store:
            release_account(config, store, name.lower(), drop, why)

    @account.command("list")
    @config_option
    def list_held(config_file: str | None) -> None:
        """Held accounts, since when and why."""
        config = load(config_file)
        with store_of(config) as store:
            held = store.held_accounts()
        for name, value in sorted(held.items()):
            since, why = parse_hold(value)
            click.echo(f"{name:<32} since {_iso(since) if since is not None else '(unknown)':<20}  {why}")
        if not held:
            click.echo("no account is held")
