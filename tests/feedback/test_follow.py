"""The follower on real files and a real store (SQLite and Redis): rotation by rename and by
copytruncate mid-run, a restart mid-file and between a batch's write-ahead steps, a rotated-away
file gone at restart, the line reader's limits. Nothing lost, nothing counted twice."""

from __future__ import annotations

import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from mailflow.feedback import follow as follow_module
from mailflow.feedback.follow import Follower, FollowError, Position
from mailflow.feedback.model import FeedbackBatch, Outcome
from mailflow.reputation.evaluate import Move
from mailflow.reputation.model import Standing
from mailflow.store import open_store
from mailflow.store.base import Store
from mailflow.store.redis import RedisStore
from mailflow.store.sqlite import SqliteStore
from tests.feedback.conftest import MailLog, config_for, totals


@pytest.fixture
def setup(tmp_path: Path, store_url: str) -> Iterator[tuple[MailLog, Store, Path]]:
    log = MailLog(tmp_path / "mail.log")
    store = open_store(store_url, 2000)
    yield log, store, tmp_path
    store.close()


def follower(tmp_path: Path, store: Store, log: MailLog, **kwargs: object) -> Follower:
    config = config_for(tmp_path, "sqlite:///unused", log.path)
    return Follower(config, store, str(log.path), host="test-host", **kwargs)  # type: ignore[arg-type]


def drain(f: Follower) -> None:
    """Poll until nothing more is read (bounded), then apply."""
    for _ in range(1000):
        if not f.poll():
            break
    f.flush()


def position(store: Store, f: Follower) -> Position:
    value = store.state_get(f.key)
    assert value is not None
    return Position.from_value(value)


def test_from_start_counts_every_line_once_and_a_second_run_adds_nothing(setup: tuple[MailLog, Store, Path]) -> None:
    log, store, tmp = setup
    log.write(300)
    f = follower(tmp, store, log, from_start=True)
    f.run_once()
    f.close()
    assert totals(store, log) == log.expected and sum(log.expected.values()) == 360
    again = follower(tmp, store, log, from_start=True)  # a position exists: from_start changes nothing
    again.run_once()
    again.close()
    assert totals(store, log) == log.expected
    assert position(store, again).state == "done" and position(store, again).end == log.path.stat().st_size


def test_a_first_start_begins_at_the_end_of_the_file(setup: tuple[MailLog, Store, Path]) -> None:
    log, store, tmp = setup
    log.write(50)
    history = log.expected.copy()
    f = follower(tmp, store, log)
    f.start()
    assert position(store, f).end == log.path.stat().st_size and totals(store, log) == {}
    log.write(20)
    drain(f)
    f.close()
    assert totals(store, log) == log.expected - history


def test_rotation_by_rename_mid_run(setup: tuple[MailLog, Store, Path]) -> None:
    log, store, tmp = setup
    f = follower(tmp, store, log, from_start=True)
    f.start()
    log.write(100)
    f.poll()
    log.write(40)  # not read yet when the file is renamed
    os.rename(log.path, tmp / "mail.log.1")
    log.path.touch()  # logrotate's `create`: empty until the writer reopens
    f.poll()
    log.write(10, path=tmp / "mail.log.1")  # the writer has not reopened yet: still the old file
    f.poll()
    log.write(70)  # now the new one
    drain(f)
    f.close()
    assert totals(store, log) == log.expected and sum(log.expected.values()) == 264
    assert position(store, f).inode == log.path.stat().st_ino


def test_rotation_by_copytruncate_mid_run(setup: tuple[MailLog, Store, Path]) -> None:
    log, store, tmp = setup
    f = follower(tmp, store, log, from_start=True)
    f.start()
    log.write(100)
    f.poll()
    log.write(30)  # not read yet: only the copy will have it
    shutil.copyfile(log.path, tmp / "mail.log.1")
    with log.path.open("r+") as fh:
        fh.truncate(0)
    log.write(5)
    drain(f)
    f.close()
    assert totals(store, log) == log.expected and sum(log.expected.values()) == 162


def test_copytruncate_written_past_the_old_offset_before_a_poll(setup: tuple[MailLog, Store, Path]) -> None:
    """The file is as long as before again: its first bytes tell it is not the file read."""
    log, store, tmp = setup
    f = follower(tmp, store, log, from_start=True)
    f.start()
    log.write(20)
    drain(f)
    shutil.copyfile(log.path, tmp / "mail.log.1")
    with log.path.open("r+") as fh:
        fh.truncate(0)
    log.write(60)
    drain(f)
    f.close()
    assert totals(store, log) == log.expected and sum(log.expected.values()) == 96


def test_restart_between_batches_reads_on_exactly(setup: tuple[MailLog, Store, Path],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    log, store, tmp = setup
    log.write(100)
    monkeypatch.setattr(follow_module, "BATCH_LINES", 150)  # 150 lines a batch: mid-message
    first = follower(tmp, store, log, from_start=True)
    first.start()
    base = position(store, first).seq  # a first start's seq: above any used before (ms of the clock)
    first.poll()  # one batch read and applied, the rest not
    first.close()
    assert position(store, first).seq == base + 1 and 0 < position(store, first).end < log.path.stat().st_size
    monkeypatch.undo()
    # The message whose smtpd line was in the first part is delivered in the second: the new
    # follower learns its queue id from the lines before its position (counting none of them).
    log.write(100)
    second = follower(tmp, store, log)
    second.run_once()
    second.close()
    assert totals(store, log) == log.expected and sum(log.expected.values()) == 240


class Crash(Exception):
    pass


def crashed_before_apply(tmp: Path, store: Store, log: MailLog, monkeypatch: pytest.MonkeyPatch) -> Follower:
    """A follower whose first batch is written ahead (pending) and never applied: it crashed."""

    def down(*args: object, **kwargs: object) -> None:
        raise Crash()

    monkeypatch.setattr(follow_module, "apply_batch", down)
    first = follower(tmp, store, log, from_start=True)
    with pytest.raises(Crash):
        first.run_once()
    first.close()
    monkeypatch.undo()
    return first


def test_a_crash_after_apply_before_done_is_read_again_and_counted_once(setup: tuple[MailLog, Store, Path]) -> None:
    log, store, tmp = setup
    log.write(80)

    def crash(batch: FeedbackBatch, source: str, seq: int) -> None:
        raise Crash()

    first = follower(tmp, store, log, from_start=True, after_batch=crash)
    with pytest.raises(Crash):
        first.run_once()
    first.close()
    assert position(store, first).state == "pending" and totals(store, log) == log.expected  # applied, not done
    pending = position(store, first).seq
    seen: list[int] = []
    second = follower(tmp, store, log, after_batch=lambda batch, source, seq: seen.append(seq))
    second.run_once()
    second.close()
    assert totals(store, log) == log.expected and seen == [pending]  # the same seq again: its takers skipped it
    assert position(store, second) == Position("done", log.path.stat().st_ino, position(store, second).head,
                                                log.path.stat().st_size, log.path.stat().st_size, pending)


def test_a_crash_after_pending_before_apply_counts_the_batch_at_restart(setup: tuple[MailLog, Store, Path],
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    log, store, tmp = setup
    log.write(80)
    first = crashed_before_apply(tmp, store, log, monkeypatch)
    assert position(store, first).state == "pending" and totals(store, log) == {}
    second = follower(tmp, store, log)
    second.run_once()
    second.close()
    assert totals(store, log) == log.expected


def test_rotated_while_stopped_the_old_file_is_read_to_its_end_first(setup: tuple[MailLog, Store, Path]) -> None:
    log, store, tmp = setup
    log.write(30)
    first = follower(tmp, store, log, from_start=True)
    first.run_once()
    first.close()
    log.write(20)  # after the position, then rotated away while no follower runs
    os.rename(log.path, tmp / "mail.log.1")
    log.write(10)
    second = follower(tmp, store, log)
    second.run_once()
    second.close()
    assert totals(store, log) == log.expected


def test_a_rotated_away_file_gone_at_restart_starts_the_current_file_at_0(
        setup: tuple[MailLog, Store, Path], caplog: pytest.LogCaptureFixture) -> None:
    log, store, tmp = setup
    log.write(30)
    first = follower(tmp, store, log, from_start=True)
    first.run_once()
    first.close()
    counted = log.expected.copy()
    log.write(20)
    os.unlink(log.path)  # rotated and compressed away: those 20 are lost, and said so
    log.expected = counted
    log.write(10)
    second = follower(tmp, store, log)
    with caplog.at_level("WARNING", logger="mailflow"):
        second.run_once()
    second.close()
    assert totals(store, log) == log.expected
    assert any("no longer there" in r.getMessage() for r in caplog.records)


def test_lines_split_from_bytes(setup: tuple[MailLog, Store, Path]) -> None:
    """An overlong line is skipped to its newline, a partial last line waits for its newline,
    bytes that are not UTF-8 are replaced: none of it stops the lines around it."""
    log, store, tmp = setup
    f = follower(tmp, store, log, from_start=True)
    f.start()
    lines = log.lines(3)
    with log.path.open("ab") as fh:
        fh.write(b"x" * (200 * 1024) + b"\n" + b"\xff\xfe junk \xc3\n" + lines[0].encode() + b"\n")
        fh.write(lines[1].encode()[:40])  # a line being written
    drain(f)
    assert f.file is not None and f.file.skipped == 1 and f.file.offset < log.path.stat().st_size
    with log.path.open("ab") as fh:
        fh.write(lines[1].encode()[40:] + b"\n" + "".join(line + "\n" for line in lines[2:]).encode())
    drain(f)
    f.close()
    assert totals(store, log) == log.expected


@pytest.mark.timing
def test_the_ladder_runs_every_minute_for_every_standing_and_at_the_end_of_once(
        setup: tuple[MailLog, Store, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Moves down need no mail: every EVALUATE_SECONDS (injected ticks), each stored standing is
    evaluated, whether or not its account sent anything."""
    log, store, tmp = setup
    assert store.swap_reputation("quiet.example", None, Standing("warn", 1.0, "test").value())
    calls: list[tuple[list[str], float]] = []

    def evaluate(config: object, store: object, accounts: Iterable[str], now: float,
                 evidence: object = None) -> list[Move]:
        calls.append((sorted(accounts), now))
        return []

    monkeypatch.setattr(follow_module, "evaluate", evaluate)
    ticks = [1000.0]
    f = follower(tmp, store, log, clock=lambda: 1_800_000_000.0, ticks=lambda: ticks[0])
    runner = threading.Thread(target=f.run)
    runner.start()
    try:
        time.sleep(0.6)  # several polls, no minute yet
        assert calls == []
        ticks[0] += follow_module.EVALUATE_SECONDS
        for _ in range(100):
            if calls:
                break
            time.sleep(0.05)
        assert calls == [(["quiet.example"], 1_800_000_000.0)]
    finally:
        f.stop.set()
        runner.join(10)
    f.close()
    once = follower(tmp, store, log, clock=lambda: 1_800_000_100.0)
    once.run_once()
    once.close()
    assert calls[-1] == (["quiet.example"], 1_800_000_100.0)


def test_a_second_follower_of_the_same_file_is_told_and_stops(setup: tuple[MailLog, Store, Path]) -> None:
    log, store, tmp = setup
    one, two = follower(tmp, store, log, from_start=True), follower(tmp, store, log, from_start=True)
    one.start()
    two.start()
    log.write(10)
    drain(one)
    log.write(10)
    two.poll()
    with pytest.raises(FollowError, match="another follower moved the position"):
        two.flush()
    one.close()
    two.close()


def test_a_position_this_version_cannot_read_is_replaced_from_the_end(
        setup: tuple[MailLog, Store, Path], caplog: pytest.LogCaptureFixture) -> None:
    log, store, tmp = setup
    log.write(10)
    f = follower(tmp, store, log)
    assert store.state_swap(f.key, None, "garbage{")
    with caplog.at_level("WARNING", logger="mailflow"):
        f.start()
    assert "not a follower position" in caplog.text and position(store, f).end == log.path.stat().st_size
    f.close()


def test_a_pending_batch_whose_file_is_gone_is_marked_done_and_the_new_file_read(
        setup: tuple[MailLog, Store, Path], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    log, store, tmp = setup
    log.write(20)
    first = crashed_before_apply(tmp, store, log, monkeypatch)
    pending = position(store, first).seq
    os.unlink(log.path)  # the batch's file is gone before the restart: its 20 messages are lost
    log.expected.clear()
    log.write(7)
    second = follower(tmp, store, log)
    with caplog.at_level("WARNING", logger="mailflow"):
        second.run_once()
    second.close()
    assert totals(store, log) == log.expected and "pending position" in caplog.text
    assert position(store, second).state == "done" and position(store, second).seq == pending + 1


def test_copytruncated_while_stopped_the_copy_is_read_to_its_end_first(setup: tuple[MailLog, Store, Path]) -> None:
    log, store, tmp = setup
    log.write(30)
    first = follower(tmp, store, log, from_start=True)
    first.run_once()
    first.close()
    log.write(20)  # after the position; then copied and truncated while no follower runs
    shutil.copyfile(log.path, tmp / "mail.log.1")
    with log.path.open("r+") as fh:
        fh.truncate(0)
    log.write(80)  # longer than before: only the first bytes tell it is another file
    second = follower(tmp, store, log)
    second.run_once()
    second.close()
    assert totals(store, log) == log.expected and sum(log.expected.values()) == 156


def test_observers_see_each_delivery_once_and_after_batch_each_seq(setup: tuple[MailLog, Store, Path],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The receivers' hook: every delivery attempt with its account, none of the lines read only
    to warm up after a restart; the after-batch step with the batch's seq."""
    log, store, tmp = setup
    seen: list[tuple[str, str | None]] = []
    batches: list[int] = []

    def observe(outcome: Outcome, account: str | None) -> None:
        seen.append((outcome.recipient, account))

    def after(batch: FeedbackBatch, source: str, seq: int) -> None:
        batches.append(seq)

    log.write(50)
    monkeypatch.setattr(follow_module, "BATCH_LINES", 120)
    first = follower(tmp, store, log, from_start=True, observers=[observe], after_batch=after)
    first.start()
    first.poll()  # 120 lines: 30 messages
    first.close()
    second = follower(tmp, store, log, observers=[observe], after_batch=after)
    second.run_once()  # warms up on the 120 lines before its position, observing none
    second.close()
    assert sorted(r for r, _ in seen) == sorted(f"r{n}@rcpt.example" for n in range(1, 51))
    assert {account for _, account in seen} == {"shop.example", "lists.example"}
    assert batches == [batches[0], batches[0] + 1]  # 120 lines, then the other 80


@pytest.mark.parametrize("lost", ["deleted", "unreadable"])
def test_a_position_lost_while_the_accounts_guards_remain_counts_the_new_lines(
        setup: tuple[MailLog, Store, Path], lost: str) -> None:
    # Each account keeps the last seq it took from this source for FEEDBACK_HOURS. A position
    # deleted by an admin (or evicted, or unreadable) used to restart the seq at 1: every batch
    # after it was "taken already" by those guards, and nothing was counted for days.
    log, store, tmp = setup
    log.write(30)
    first = follower(tmp, store, log, from_start=True)
    first.start()
    for _ in range(3):  # a few batches: the guards hold seq 3
        log.write(5)
        drain(first)
    first.close()
    assert totals(store, log) == log.expected and position(store, first).seq >= 3
    if lost == "unreadable":
        assert store.state_swap(first.key, store.state_get(first.key), "garbage{")
    elif isinstance(store, SqliteStore):  # as an admin would: the row, the key
        with sqlite3.connect(store.path) as db:
            db.execute("DELETE FROM state WHERE key = ?", (first.key,))
    else:
        assert isinstance(store, RedisStore) and store.client.delete(f"mailflow:{first.key}") == 1
    before = log.expected.copy()
    again = follower(tmp, store, log)
    again.start()  # from the end: what was read before is not read again
    log.write(7)
    drain(again)
    again.close()
    assert totals(store, log) == log.expected and log.expected != before
