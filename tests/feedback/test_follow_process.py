"""`mailflow feedback follow` as a process, with real faults: kill -9 mid-file (while the store
is paused with SIGSTOP, and while it is busy), the store down while following, SIGTERM. Each
ends with `--once` and exact totals: nothing skipped, nothing counted twice."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailflow.feedback.follow import Position, position_key
from mailflow.store import open_store
from mailflow.store.base import Store, StoreError
from tests.feedback.conftest import MailLog, totals, write_config
from tests.helpers.redis_faults import RedisProcess, redis_process

pytestmark = pytest.mark.timing


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisProcess]:
    with redis_process(tmp_path, persist=True) as server:
        yield server


def follow(config: Path, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
    """The follower in the background; its stderr goes to a file beside the config."""
    err = config.parent / f"follow-{time.monotonic_ns()}.err"
    with err.open("wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "mailflow", "feedback", "follow", "-c", str(config), *args],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=fh)
    return proc, err


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


def once(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailflow", "feedback", "follow", "-c", str(config), "--once"],
                          capture_output=True, text=True, timeout=120)


def position(store: Store, log: MailLog) -> Position | None:
    try:
        value = store.state_get(position_key(str(log.path)))
    except StoreError:
        return None
    return Position.from_value(value) if value else None


def wait_for(check: object, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError(f"not within {seconds} s")


def test_kill_9_mid_file_then_once_counts_every_line_once(tmp_path: Path, redis: RedisProcess) -> None:
    log = MailLog(tmp_path / "mail.log")
    log.write(15_000)  # 60,000 lines: a dozen batches
    config = write_config(tmp_path, redis.url, log.path)
    store = open_store(redis.url, 2000)
    first = second = None
    try:
        # Killed twice at a batch boundary seen from outside (anywhere in its steps), the second
        # time while Redis is paused: the request sent but not answered.
        first, _ = follow(config, "--from-start")
        wait_for(lambda: (p := position(store, log)) is not None and p.seq >= 3)
        first.kill()
        first.wait(10)
        seq = position(store, log).seq  # type: ignore[union-attr]
        second, _ = follow(config)
        wait_for(lambda: (p := position(store, log)) is not None and p.seq >= seq + 2)
        redis.pause()
        time.sleep(0.3)
        second.kill()
        second.wait(10)
        redis.resume()
        assert position(store, log).end < log.path.stat().st_size  # type: ignore[union-attr]
        done = once(config)
        assert done.returncode == 0, done.stderr
        assert totals(store, log) == log.expected and sum(log.expected.values()) == 18_000
        final = position(store, log)
        assert final is not None and final.state == "done" and final.end == log.path.stat().st_size
    finally:
        for proc in (first, second):
            if proc is not None:
                stop(proc)
        redis.resume()
        store.close()


def test_store_down_while_following_keeps_the_lines_and_counts_them_once(tmp_path: Path, redis: RedisProcess) -> None:
    log = MailLog(tmp_path / "mail.log")
    log.write(100)
    config = write_config(tmp_path, redis.url, log.path)
    store = open_store(redis.url, 2000)
    follower, err_file = follow(config, "--from-start")
    try:
        wait_for(lambda: totals(store, log) == log.expected)
        redis.kill()  # persisted per write: what was counted survives
        log.write(200)
        time.sleep(1.5)  # the follower meets the dead store, keeps its batch, backs off
        redis.start()
        wait_for(lambda: totals(store, log) == log.expected)
        log.write(50)
        wait_for(lambda: totals(store, log) == log.expected)
        follower.send_signal(signal.SIGTERM)
        assert follower.wait(20) == 0, err_file.read_text()
        err = err_file.read_text()
        assert "kept, retried in" in err and "Traceback" not in err
        assert totals(store, log) == log.expected and sum(log.expected.values()) == 420
    finally:
        stop(follower)
        store.close()


def test_sigterm_applies_the_batch_read_and_exits_0(tmp_path: Path, redis: RedisProcess) -> None:
    log = MailLog(tmp_path / "mail.log")
    config = write_config(tmp_path, redis.url, log.path)
    store = open_store(redis.url, 2000)
    follower, err_file = follow(config)
    try:
        wait_for(lambda: position(store, log) is not None)
        log.write(40)
        wait_for(lambda: (p := position(store, log)) is not None and p.end == log.path.stat().st_size, 10)
        follower.send_signal(signal.SIGTERM)
        assert follower.wait(20) == 0, err_file.read_text()
        err = err_file.read_text()
        assert totals(store, log) == log.expected
        assert "event=feedback_summary" in err
        # Found by an admin: the journal said nothing for the first minute (the first summary).
        # A first start numbers its batches from the clock's milliseconds (README: the position).
        assert re.search(rf"feedback: following {re.escape(str(log.path))} from offset 0 \(batch \d+; "
                         r"a summary every 60 s\)", err), err
    finally:
        stop(follower)
        store.close()
