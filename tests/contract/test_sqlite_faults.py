"""SQLite faults, made for real: file modes, bad paths, a held write lock, a full disk, the file
deleted or replaced under a running store."""

from __future__ import annotations

import grp
import logging
import os
import re
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from mailflow.config import parse_config
from mailflow.engine import Engine
from mailflow.model import Client, Decision, Verdict
from mailflow.ratelimit.limits import parse_limit
from mailflow.store import StoreError, check_store_path, open_store
from mailflow.store import sqlite as sqlite_store
from mailflow.store.sqlite import SqliteStore
from tests.helpers.redis_faults import timed
from tests.helpers.sqlite_faults import as_other_user, fill, tiny_filesystem, write_lock_held

pytestmark = pytest.mark.timing  # wall-clock bounds: run alone, after the parallel part (Makefile)

TIMEOUT_MS = 250
BOUND = TIMEOUT_MS / 1000 + 0.25
LIMITS = (parse_limit("1000/day"),)
CLIENT = Client(hostname="mua.example", address="198.51.100.20", port=40000)


def modes(path: Path) -> dict[str, int]:
    return {p.name[len(path.name):] or "db": stat.S_IMODE(p.stat().st_mode)
            for p in path.parent.glob(path.name + "*")}


@pytest.fixture
def umask_zero() -> Iterator[None]:
    old = os.umask(0)
    yield
    os.umask(old)


def test_database_wal_and_shm_are_0600_whatever_the_umask(tmp_path: Path, umask_zero: None) -> None:
    db = tmp_path / "state.db"
    store = open_store(f"sqlite://{db}")
    store.debit("a.example", LIMITS, 1)
    assert modes(db) == {"db": 0o600, "-wal": 0o600, "-shm": 0o600}
    store.close()


def test_with_a_group_the_files_are_0640_and_that_group(tmp_path: Path, umask_zero: None) -> None:
    others = [g for g in grp.getgrall() if g.gr_gid != os.getegid()]
    if os.geteuid() != 0:
        others = [g for g in others if g.gr_gid in os.getgroups()]
    if not others:
        pytest.skip("no other group to give the files to")
    db = tmp_path / "state.db"
    store = open_store(f"sqlite://{db}", group=others[0].gr_name)
    store.debit("a.example", LIMITS, 1)
    assert modes(db) == {"db": 0o640, "-wal": 0o640, "-shm": 0o640}
    assert {p.stat().st_gid for p in tmp_path.glob("state.db*")} == {others[0].gr_gid}
    store.close()
    with pytest.raises(StoreError, match="no group named 'no-such-group-x'"):
        check_store_path(f"sqlite://{db}", "no-such-group-x")


def test_an_existing_world_readable_database_is_tightened(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    open_store(f"sqlite://{db}").close()
    db.chmod(0o644)
    open_store(f"sqlite://{db}").close()
    assert modes(db)["db"] == 0o600


@pytest.mark.parametrize("make, words", [
    (lambda p: None, "does not exist (mailflow does not create it)"),
    (lambda p: p.mkdir(), "is a directory, not a database file"),
    (lambda p: p.write_text("hello, not a database " * 10), "is not a SQLite database"),
], ids=["missing-parent", "directory", "not-a-database"])
def test_a_path_that_cannot_be_a_database_is_one_clear_error(tmp_path: Path, make: object, words: str) -> None:
    path = tmp_path / ("missing/sub/state.db" if words.startswith("does not") else "state.db")
    make(path)  # type: ignore[operator]
    for attempt in (lambda: check_store_path(f"sqlite://{path}"), lambda: open_store(f"sqlite://{path}")):
        with pytest.raises(StoreError, match=re.escape(words)) as caught:
            attempt()
        assert "\n" not in str(caught.value)
    assert not (tmp_path / "missing").exists()  # never created


def test_checking_a_path_creates_nothing(tmp_path: Path) -> None:
    check_store_path(f"sqlite://{tmp_path}/state.db")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory an unprivileged user can reach (pytest's own are 0700)."""
    path = Path(tempfile.mkdtemp(prefix="mailflow-sqlite-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


@pytest.mark.parametrize("mode, words", [(0o600, "cannot read"), (0o644, "is read-only")],
                         ids=["unreadable", "read-only"])
def test_a_database_this_user_cannot_use_is_refused_at_open(shared_dir: Path, mode: int, words: str) -> None:
    db = shared_dir / "state.db"
    open_store(f"sqlite://{db}").close()
    db.chmod(mode if os.geteuid() == 0 else mode & 0o400)  # as a non-root user: take our own rights

    def attempt() -> str:
        try:
            open_store(f"sqlite://{db}").close()
        except StoreError as exc:
            return str(exc)
        return "opened"

    said = as_other_user(attempt)
    assert said.startswith("sqlite: ") and words in said, said


_ENGINES: list[Engine] = []  # closed after each test: a broken store's flush threads must not log into the next


@pytest.fixture(autouse=True)
def _engines_closed() -> Iterator[None]:
    yield
    while _ENGINES:
        engine = _ENGINES.pop()
        engine.close()  # its sent counts fail to flush (the store is broken): logged here, not later
        engine.store.close()


def make_engine(url: str, on_error: str) -> Engine:
    config = parse_config({"store": {"url": url, "timeout_ms": TIMEOUT_MS}, "milter": {"on_error": on_error},
                           "ratelimit": {"limits": ["1000/day"]}})
    _ENGINES.append(Engine(config, open_store(url, TIMEOUT_MS)))
    return _ENGINES[-1]


def send(engine: Engine) -> tuple[Decision, float]:
    message, decision = engine.mail(CLIENT, "bob@shop.example", "bob@shop.example")
    assert decision.verdict is Verdict.CONTINUE
    rcpt, rcpt_seconds = timed(lambda: engine.rcpt(CLIENT, message, "a@dest.example"))
    if rcpt.refuses:
        return rcpt, rcpt_seconds
    engine.header(message, "From", "bob@shop.example")
    decision, seconds = timed(lambda: engine.eom(CLIENT, message, "QID"))
    return decision, max(seconds, rcpt_seconds)


def expected(on_error: str) -> tuple[Verdict, str]:
    return (Verdict.TEMPFAIL, "store_error") if on_error == "tempfail" else (Verdict.CONTINUE, "store_error_accepted")


def level(db: Path) -> float:
    store = SqliteStore(str(db))
    try:
        return store.levels("shop.example", LIMITS)[0]
    finally:
        store.close()


@pytest.mark.parametrize("on_error", ["tempfail", "accept"])
def test_a_write_lock_held_past_the_timeout(tmp_path: Path, on_error: str, caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "state.db"
    engine = make_engine(f"sqlite://{db}", on_error)
    assert send(engine)[0].verdict is Verdict.CONTINUE
    with write_lock_held(db):
        with pytest.raises(StoreError, match="database is locked"):
            engine.store.debit("shop.example", LIMITS, 1)
        results = [send(engine) for _ in range(3)]
    assert {(d.verdict, d.reason) for d, _ in results} == {expected(on_error)}
    worst = max(seconds for _, seconds in results)
    assert worst < BOUND, f"a reply took {worst * 1000:.0f} ms"
    assert send(engine)[0].reason == "ok"  # the first call after the lock is released
    assert level(db) == pytest.approx(2, abs=0.1)  # nothing half-done while locked
    print(f"sqlite locked, on_error={on_error}: worst reply {worst * 1000:.0f} ms")


def test_a_full_disk_logs_the_real_cause(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with tiny_filesystem(tmp_path / "tiny") as tiny:
        db = tiny / "state.db"
        engine = make_engine(f"sqlite://{db}", "tempfail")
        caplog.set_level(logging.INFO, logger="mailflow")
        logging.getLogger("mailflow").propagate = True
        store = engine.store
        assert isinstance(store, SqliteStore)
        assert send(engine)[0].reason == "ok"
        with store._connection() as conn:  # the WAL must grow again for the next write
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        filler = fill(tiny)
        errors = []
        for n in range(20):  # new accounts: new rows, new pages
            try:
                store.debit(f"account-{n}-" + "x" * 200, LIMITS, 1)
            except StoreError as exc:
                errors.append(str(exc))
        assert errors and all("database or disk is full" in e for e in errors), errors
        decision, seconds = send(engine)
        assert decision.reason == "store_error" and seconds < BOUND
        assert "cannot rollback" not in caplog.text and "database or disk is full" in caplog.text
        filler.unlink()
        assert send(engine)[0].reason == "ok"  # room again: the next call is answered
        store.close()


def test_a_deleted_database_is_refused_until_it_is_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(sqlite_store, "CHECK_EVERY", 0.05)
    caplog.set_level(logging.INFO, logger="mailflow")
    logging.getLogger("mailflow").propagate = True
    db, kept = tmp_path / "state.db", tmp_path / "kept.db"
    milter = make_engine(f"sqlite://{db}", "tempfail")
    assert send(milter)[0].reason == "ok"
    os.link(db, kept)  # the same file under another name, for putting it back
    db.unlink()
    time.sleep(0.1)
    for _ in range(3):  # refused, never counted on in the deleted file
        decision, seconds = send(milter)
        assert decision.reason == "store_error" and seconds < BOUND
    with pytest.raises(StoreError, match="was deleted while open; restart mailflow"):
        milter.store.debit("shop.example", LIMITS, 1)
    assert not db.exists()  # and made no new file of its own
    # One line from the store, one from the outage's throttle: not one per call.
    assert caplog.text.count("store calls fail until it is back") == 1
    assert caplog.text.count("store unavailable for") == 1
    os.link(kept, db)  # the admin puts it back
    assert send(milter)[0].reason == "ok"  # the first call after
    assert level(db) == pytest.approx(2, abs=0.1)
    assert "is back; store calls resume" in caplog.text


def test_a_replaced_database_is_refused_not_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_store, "CHECK_EVERY", 0.05)
    db, backup = tmp_path / "state.db", tmp_path / "backup.db"
    milter = make_engine(f"sqlite://{db}", "tempfail")
    assert send(milter)[0].reason == "ok"
    other = open_store(f"sqlite://{backup}")
    other.close()
    backup.rename(db)  # a `mv` over the live file
    time.sleep(0.1)
    decision, seconds = send(milter)
    assert decision.reason == "store_error" and seconds < BOUND
    with pytest.raises(StoreError, match="was replaced by another file while open"):
        milter.store.domains()


@contextmanager
def immutable(path: Path) -> Iterator[None]:
    """`chattr +i`: not writable even by root, as after a read-only remount (skipped where unsupported)."""
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not supported here")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], capture_output=True)


def test_a_database_writable_again_is_written_without_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    store = open_store(f"sqlite://{db}")
    assert isinstance(store, SqliteStore)
    store.debit("shop.example", LIMITS, 1)
    with immutable(db):
        with store._connection():  # one connection busy: the debit opens another, read-only now
            with pytest.raises(StoreError, match="readonly database"):
                store.debit("shop.example", LIMITS, 1)
    for _ in range(3):  # every pooled connection can write again: the read-only one was dropped
        store.debit("shop.example", LIMITS, 1)
    assert level(db) == pytest.approx(4, abs=0.1)
    store.close()


def test_an_admin_command_after_the_database_was_deleted_names_the_cause(tmp_path: Path) -> None:
    """The milter still has the deleted file open (its -wal and -shm stay): an admin command says
    so, in one line, and creates no empty database beside them."""
    db = tmp_path / "state.db"
    milter = open_store(f"sqlite://{db}")
    milter.debit("shop.example", LIMITS, 1)
    db.unlink()
    with pytest.raises(StoreError) as caught:
        open_store(f"sqlite://{db}")
    assert "does not exist but state.db-wal and state.db-shm of a deleted database" in str(caught.value)
    assert "remove state.db-wal and state.db-shm" in str(caught.value) and "disk I/O" not in str(caught.value)
    with pytest.raises(StoreError, match="of a deleted database"):
        check_store_path(f"sqlite://{db}")
    assert not db.exists()
    milter.close()
