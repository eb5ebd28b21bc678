"""Re-keying the suppression lists in place (`mailflow suppress rekey`), resumable at any point.

An entry's lookup key is an HMAC of what it matches, and its text is sealed under the same
secret, so a new secret means a new key and a new seal for every entry. Three steps, each one
safe to interrupt (even by kill -9) and to run again:

1. copy: every entry the old key opens gets a twin under the new key, in the same list (the
   stores' add keeps what exists, so a second run adds nothing twice; on Redis the twins are
   logged, so the milters' replicas learn them). Milters on the old key see no change.
2. switch: the store's key fingerprint becomes the new key's. From then on the suppress commands
   and a starting milter need the new key; a milter still running on the old key keeps finding
   the old entries, and its next key check stops it with a line that says the lists were re-keyed.
3. finish (`--finish`, with the new key in the config, once every milter runs it): the entries
   the new key cannot open (the old key's) are deleted.

While step 1 runs, `suppress add|remove|import` are refused (an entry added under the old key
after its list was copied would be lost at the switch); the marker lives in the store.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mailflow.suppression.entries import Entry, EntryError, Matcher
from mailflow.suppression.keys import (FINGERPRINT_STATE, REKEY_STATE, SEALED_WITH_ANOTHER_KEY, check_store_key,
                                       fingerprint)

if TYPE_CHECKING:
    from mailflow.store.base import Store

# The marker (REKEY_STATE): "copying OLD NEW", "switched OLD NEW", "done OLD NEW" (fingerprints).


class RekeyError(Exception):
    """The store is not in a state this step can run from; the message says what to do."""


class RekeyInterrupted(Exception):
    """Raised by the `stop_after_batches` test hook: an interruption at a known point."""


@dataclass
class Tally:
    scanned: int = 0
    rekeyed: int = 0  # twins written by this run
    already: int = 0  # twins an earlier run wrote (or twins met in the list)
    unreadable: int = 0  # entries neither key opens: left as they are
    unkeyable: int = 0  # opened, but no longer an address, @domain or hash: left as they are
    renormalised: int = 0  # stored under other address-form settings than the config's
    removed: int = 0
    lists: int = 0


def rekey_marker(store: Store) -> tuple[str, str, str] | None:
    """(step, old fingerprint, new fingerprint) of a re-key not finished, or None."""
    parts = (store.state_get(REKEY_STATE) or "").split()
    return (parts[0], parts[1], parts[2]) if len(parts) == 3 else None


def _set_marker(store: Store, value: str) -> None:
    for _ in range(10):  # a compare-and-set: retried if a concurrent run changed it meanwhile
        current = store.state_get(REKEY_STATE)
        if store.state_swap(REKEY_STATE, current, value):
            return
    raise RekeyError("another `mailflow suppress rekey` keeps changing the store; run one at a time")


def _batches(store: Store, batch: int, progress: Callable[[int], None], stop_after_batches: int | None,
             tally: Tally, scan: Callable[[str, Entry], object], flush: Callable[[str], None]) -> None:
    """Walk every list, calling `scan` per entry and `flush` per `batch` entries and per list end."""
    done = 0
    for scope in sorted(store.suppression_scopes()):
        tally.lists += 1
        pending, entries = 0, store.iter_suppressions(scope)
        try:
            for entry in entries:
                scan(scope, entry)
                pending += 1
                if pending >= batch:
                    flush(scope)
                    tally.scanned, done, pending = tally.scanned + pending, done + 1, 0
                    progress(batch)
                    if stop_after_batches is not None and done >= stop_after_batches:
                        raise RekeyInterrupted(f"stopped after {done} batches")
        finally:
            getattr(entries, "close", lambda: None)()  # give a SQLite connection back at once
        flush(scope)
        tally.scanned += pending
        progress(pending)


def copy_entries(store: Store, old: Matcher, new: Matcher, batch: int, progress: Callable[[int], None],
                 stop_after_batches: int | None = None) -> Tally:
    """Step 1: a twin under the new key for every entry the old key opens."""
    tally, twins = Tally(), list[Entry]()

    def scan(scope: str, entry: Entry) -> None:
        text = old.keyring.unseal(entry.sealed)
        if text == SEALED_WITH_ANOTHER_KEY:
            if new.keyring.unseal(entry.sealed) == SEALED_WITH_ANOTHER_KEY:
                tally.unreadable += 1
            return  # else a twin: skipped
        try:
            key, _ = new.entry_key(text)
            if old.entry_key(text)[0] != entry.key:
                tally.renormalised += 1
        except EntryError:
            tally.unkeyable += 1
            return
        twins.append(Entry(key, entry.reason, entry.added_at, entry.source, new.keyring.seal(text)))

    def flush(scope: str) -> None:
        if twins:
            added = store.add_suppressions(scope, twins)
            tally.rekeyed, tally.already = tally.rekeyed + added, tally.already + len(twins) - added
            twins.clear()

    _batches(store, batch, progress, stop_after_batches, tally, scan, flush)
    return tally


def remove_old_entries(store: Store, current: Matcher, batch: int, progress: Callable[[int], None],
                       stop_after_batches: int | None = None) -> Tally:
    """Step 3: delete every entry the current key cannot open."""
    tally, stale = Tally(), list[str]()

    def scan(scope: str, entry: Entry) -> None:
        if current.keyring.unseal(entry.sealed) == SEALED_WITH_ANOTHER_KEY:
            stale.append(entry.key)

    def flush(scope: str) -> None:
        if stale:
            tally.removed += store.remove_suppressions(scope, stale)
            stale.clear()

    _batches(store, batch, progress, stop_after_batches, tally, scan, flush)
    return tally


def start(store: Store, old: Matcher, old_secret: bytes, new: Matcher, new_secret: bytes, check_scopes: list[str],
          batch: int, progress: Callable[[int], None], stop_after_batches: int | None = None) -> Tally | None:
    """Steps 1 and 2, from the old key (checked against the store here). A store that already
    carries the new key's fingerprint (a run interrupted after the switch, or one run twice)
    only gets its marker brought up to date, and None is returned."""
    old_print, new_print = fingerprint(old_secret), fingerprint(new_secret)
    if old_print == new_print:
        raise RekeyError("the new key is the key the config names already; make one with `mailflow keygen FILE`")
    if store.state_get(FINGERPRINT_STATE) == new_print:
        marker = rekey_marker(store)
        if marker and marker[0] == "copying" and marker[2] == new_print:
            _set_marker(store, f"switched {marker[1]} {new_print}")
        return None
    check_store_key(store, old_secret, check_scopes)
    _set_marker(store, f"copying {old_print} {new_print}")
    tally = copy_entries(store, old, new, batch, progress, stop_after_batches)
    if not store.state_swap(FINGERPRINT_STATE, old_print, new_print):
        raise RekeyError("the store's key fingerprint changed during the re-key (another rekey?); run it again")
    _set_marker(store, f"switched {old_print} {new_print}")
    return tally


def finish(store: Store, current: Matcher, current_secret: bytes, check_scopes: list[str], batch: int,
           progress: Callable[[int], None], stop_after_batches: int | None = None) -> Tally:
    """Step 3, with the key the store now expects (checked here)."""
    check_store_key(store, current_secret, check_scopes)
    marker = rekey_marker(store)
    if marker is None:
        raise RekeyError("no re-key to finish: `mailflow suppress rekey --new-key-file FILE` starts one")
    # The fingerprint passed the check above, so a "copying" marker for this key is a run
    # stopped between the switch and its marker; "done" is a finish run again: harmless.
    if marker[2] != fingerprint(current_secret):
        raise RekeyError("the re-key has not switched to this key yet: run `mailflow suppress rekey --new-key-file "
                         "FILE` again with the old key in the config to complete it, then --finish with the new key")
    tally = remove_old_entries(store, current, batch, progress, stop_after_batches)
    _set_marker(store, f"done {marker[1]} {marker[2]}")  # kept: a milter on the old key is told why it stops
    return tally
