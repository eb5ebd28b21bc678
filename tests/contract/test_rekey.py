"""`suppress rekey` on both stores (issue 14, Keys): every list re-keyed in place, lookups under the
new key find every entry, the old key is refused afterwards, and an interrupted run (at a known
batch) resumes with no entry lost or duplicated; on Redis the twins reach a milter's replica."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator

import pytest

from mailflow.store import Store, open_store
from mailflow.suppression import rekey
from mailflow.suppression.entries import REASONS, Matcher
from mailflow.suppression.keys import FINGERPRINT_STATE, REKEY_STATE, Keyring, KeyMismatch, check_store_key, fingerprint
from mailflow.suppression.normalize import AddressForms

OLD_SECRET = b"the-old-suppression-key-0123456789"
NEW_SECRET = secrets.token_hex(32).encode()  # what `mailflow keygen` writes
OLD = Matcher(AddressForms(), Keyring(OLD_SECRET))
NEW = Matcher(AddressForms(), Keyring(NEW_SECRET))
SIZES = {"global": 1800, "account:shop.example": 800, "account:blog.example": 400}  # 3000 entries
TOTAL = sum(SIZES.values())
CHECK = ["global"]

Row = tuple[str, str, str, int, str]  # scope, text, reason, added_at, source


def _text_and_recipient(scope: str, i: int) -> tuple[str, str]:
    """An entry (address, @domain or broker hash) and a recipient it suppresses."""
    label = scope.replace(":", "-").replace(".", "-")
    if i % 4 == 0:
        return f"@d{i}.{label}.example", f"anyone@mx.d{i}.{label}.example"
    if i % 4 == 1:
        address = f"hashed{i}@{label}.example"
        return f"md5:{hashlib.md5(address.encode()).hexdigest()}", address
    return f"User{i}@{label}.example", f"user{i}+news@{label}.example"


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = open_store(store_url, timeout_ms=2000)
    yield s
    s.close()


@pytest.fixture
def expected(store: Store) -> set[Row]:
    """The lists, made with the old key (and its fingerprint recorded, as the CLI does)."""
    rows: set[Row] = set()
    for scope, size in SIZES.items():
        entries = []
        for i in range(size):
            text, _ = _text_and_recipient(scope, i)
            entry = OLD.make_entry(text, REASONS[i % len(REASONS)], f"src{i % 7}", 1_700_000_000 + i)
            entries.append(entry)
            rows.add((scope, OLD.keyring.unseal(entry.sealed), entry.reason, entry.added_at, entry.source))
        assert store.add_suppressions(scope, entries) == size
    check_store_key(store, OLD_SECRET, CHECK)
    return rows


def contents(store: Store, matcher: Matcher) -> tuple[set[Row], int]:
    """The entries this key opens (each checked to sit under its own lookup key), and how many
    entries the store holds in all."""
    rows: set[Row] = set()
    total = 0
    for scope in store.suppression_scopes():
        for entry in store.iter_suppressions(scope):
            total += 1
            text = matcher.keyring.unseal(entry.sealed)
            if text != "(sealed with another key)":
                assert entry.key == matcher.entry_key(text)[0]
                rows.add((scope, text, entry.reason, entry.added_at, entry.source))
    return rows, total


def found(store: Store, matcher: Matcher, step: int = 37) -> list[bool]:
    """Every `step`th entry's recipient looked up as the milter does, in its own list (on Redis
    after the replica's refresh, which a milter does every refresh_ms)."""
    replica = getattr(store, "replica", None)
    if replica is not None:
        replica.refresh()
    answers = []
    for scope, size in SIZES.items():
        for i in range(0, size, step):
            _, recipient = _text_and_recipient(scope, i)
            account = scope.partition(":")[2]
            lookup = store.find_suppressions(account, ["global", f"account:{account}"], matcher.recipient_keys(recipient))
            answers.append([s for s, _ in lookup.matches] == [scope])
    return answers


def test_rekey_then_finish_moves_every_list_to_the_new_key(store: Store, expected: set[Row]) -> None:
    tally = rekey.start(store, OLD, OLD_SECRET, NEW, NEW_SECRET, CHECK, 256, lambda n: None)
    assert tally is not None and (tally.rekeyed, tally.already, tally.lists) == (TOTAL, 0, 3)
    assert (tally.unreadable, tally.unkeyable, tally.renormalised) == (0, 0, 0)
    # Between the switch and --finish both keys' entries exist: milters on either key find them all.
    assert contents(store, NEW) == (expected, 2 * TOTAL)
    assert contents(store, OLD)[0] == expected
    assert all(found(store, NEW)) and all(found(store, OLD))
    assert store.state_get(FINGERPRINT_STATE) == fingerprint(NEW_SECRET)
    with pytest.raises(KeyMismatch, match=r"re-keyed \(mailflow suppress rekey\) from this key"):
        check_store_key(store, OLD_SECRET, CHECK)  # what a milter still on the old key is told
    check_store_key(store, NEW_SECRET, CHECK)

    removed = rekey.finish(store, NEW, NEW_SECRET, CHECK, 256, lambda n: None)
    assert removed.removed == TOTAL
    assert contents(store, NEW) == (expected, TOTAL)
    assert all(found(store, NEW)) and not any(found(store, OLD))
    with pytest.raises(KeyMismatch, match="re-keyed"):
        check_store_key(store, OLD_SECRET, CHECK)
    assert rekey.finish(store, NEW, NEW_SECRET, CHECK, 256, lambda n: None).removed == 0  # again: harmless


def test_an_interrupted_rekey_resumes_with_nothing_lost_or_doubled(store: Store, expected: set[Row]) -> None:
    with pytest.raises(rekey.RekeyInterrupted):
        rekey.start(store, OLD, OLD_SECRET, NEW, NEW_SECRET, CHECK, 100, lambda n: None, stop_after_batches=7)
    twins = contents(store, NEW)[0]
    assert 0 < len(twins) <= 700 and twins <= expected
    # Nothing has switched: the old key is still the store's, and its milters find everything.
    assert store.state_get(FINGERPRINT_STATE) == fingerprint(OLD_SECRET)
    assert all(found(store, OLD))
    assert rekey.rekey_marker(store) == ("copying", fingerprint(OLD_SECRET), fingerprint(NEW_SECRET))
    with pytest.raises(KeyMismatch, match="being re-keyed to this key"):
        check_store_key(store, NEW_SECRET, CHECK)  # a milter started early on the new key

    tally = rekey.start(store, OLD, OLD_SECRET, NEW, NEW_SECRET, CHECK, 100, lambda n: None)
    assert tally is not None and tally.rekeyed == TOTAL - len(twins) and tally.already == len(twins)
    assert contents(store, NEW) == (expected, 2 * TOTAL)  # every entry exactly twice: once per key

    with pytest.raises(rekey.RekeyInterrupted):
        rekey.finish(store, NEW, NEW_SECRET, CHECK, 100, lambda n: None, stop_after_batches=5)
    assert contents(store, NEW)[0] == expected and all(found(store, NEW))
    assert rekey.finish(store, NEW, NEW_SECRET, CHECK, 100, lambda n: None).removed < TOTAL
    assert contents(store, NEW) == (expected, TOTAL)


def test_a_run_stopped_between_the_switch_and_its_marker_completes(store: Store, expected: set[Row]) -> None:
    assert rekey.start(store, OLD, OLD_SECRET, NEW, NEW_SECRET, CHECK, 1000, lambda n: None) is not None
    copying = f"copying {fingerprint(OLD_SECRET)} {fingerprint(NEW_SECRET)}"
    assert store.state_swap(REKEY_STATE, store.state_get(REKEY_STATE), copying)
    assert rekey.start(store, OLD, OLD_SECRET, NEW, NEW_SECRET, CHECK, 1000, lambda n: None) is None
    assert rekey.rekey_marker(store) == ("switched", fingerprint(OLD_SECRET), fingerprint(NEW_SECRET))
    assert rekey.finish(store, NEW, NEW_SECRET, CHECK, 1000, lambda n: None).removed == TOTAL
    assert contents(store, NEW) == (expected, TOTAL)


def test_refusals(store: Store, expected: set[Row]) -> None:
    with pytest.raises(rekey.RekeyError, match="no re-key to finish"):
        rekey.finish(store, OLD, OLD_SECRET, CHECK, 100, lambda n: None)
    with pytest.raises(rekey.RekeyError, match="the new key is the key the config names"):
        rekey.start(store, OLD, OLD_SECRET, OLD, OLD_SECRET, CHECK, 100, lambda n: None)
    other = b"a-third-key-nobody-made-lists-with"
    with pytest.raises(KeyMismatch):  # the old key must be the store's
        rekey.start(store, Matcher(AddressForms(), Keyring(other)), other, NEW, NEW_SECRET, CHECK, 100, lambda n: None)
    assert contents(store, OLD) == (expected, TOTAL)  # nothing written


def test_rekeyed_entries_reach_a_running_replica(redis_url: str) -> None:
    """Redis: the twins are logged as changes, so a milter's replica (already built) learns them
    at its next refresh, without a rebuild."""
    from mailflow.store.redis import RedisStore

    store = open_store(redis_url)
    assert isinstance(store, RedisStore)
    try:
        entries = [OLD.make_entry(_text_and_recipient("global", i)[0], "manual", "t", 1) for i in range(500)]
        store.add_suppressions("global", entries)
        store.replica.refresh()
        built = store.replica._filter
        rekey.start(store, OLD, OLD_SECRET, NEW, NEW_SECRET, CHECK, 64, lambda n: None)
        store.replica.refresh()
        assert store.replica._filter is built  # caught up from the change log, not rebuilt
        for i in range(500):
            keys = NEW.recipient_keys(_text_and_recipient("global", i)[1])
            assert store.replica.lookup("", keys) is None  # "maybe listed": the lookup goes to Redis
        assert store.find_suppressions("", ["global"], NEW.recipient_keys("anyone@mx.d0.global.example")).matches
    finally:
        store.close()
