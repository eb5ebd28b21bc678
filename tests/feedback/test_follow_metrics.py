"""`mailflow feedback follow`'s own /metrics ([metrics] feedback_listen): a real follower process
on a real Redis, lines appended to a real log, /metrics scraped over HTTP; the store killed under
it (store errors, the lag growing); a bad listen address or a port in use is one line, exit 2."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

from mailflow.feedback import follow as follow_module
from mailflow.feedback.model import FIELDS
from tests.feedback.conftest import MailLog, write_config
from tests.helpers.redis_faults import RedisProcess, redis_process
from tests.helpers.servers import REPO, free_port, wait_for_port
from tests.metrics.conftest import scrape

pytestmark = pytest.mark.timing

# Every unknown recipient moves its account to block at once: both accounts of MailLog.
REPUTATION = {"mode": "monitor", "rules": {"unknown_recipients": {"block": 1}}}


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisProcess]:
    with redis_process(tmp_path, persist=True) as server:
        yield server


def wait_for(check: Callable[[], bool], seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"not within {seconds} s")


def unattributed_line() -> str:
    """A delivery whose origin the log never showed."""
    stamp = datetime.now(timezone.utc).isoformat(timespec="microseconds")
    return (f"{stamp} mx postfix/smtp[13]: 4QFFFFFFFFFF: to=<x@rcpt.example>, relay=mx.rcpt.example[192.0.2.7]:25, "
            "delay=1, delays=0/0/0/1, dsn=2.0.0, status=sent (250 2.0.0 Ok)\n")


def outcomes(samples: dict[str, float]) -> dict[str, float]:
    return {name: samples[f'mailflow_feedback_outcomes_total{{field="{name}"}}'] for name in FIELDS[:-1]}


def test_follower_serves_its_counts_lag_and_moves(tmp_path: Path, redis: RedisProcess) -> None:
    log = MailLog(tmp_path / "mail.log")
    port = free_port()
    config = write_config(tmp_path, redis.url, log.path, metrics={"feedback_listen": f"127.0.0.1:{port}"},
                          reputation=REPUTATION)
    with (tmp_path / "follow.err").open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "mailflow", "feedback", "follow", "-c", str(config)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, cwd=REPO)
    try:
        wait_for_port(port, timeout=30, proc=proc)
        wait_for(lambda: "mailflow_feedback_lag_bytes" in scrape(port))  # served before the log is open: none
        first = scrape(port)
        assert first["mailflow_feedback_lines_total"] == 0 and first["mailflow_feedback_batches_total"] == 0
        assert first["mailflow_feedback_lag_bytes"] == 0
        assert abs(first["mailflow_feedback_last_batch_timestamp_seconds"] - time.time()) < 60  # its start

        log.write(50)  # 200 lines; every 5th recipient "no such user", 5 for each account
        with log.path.open("a") as fh:
            fh.write(unattributed_line())
        # The lines may come in more than one read, so in more than one batch (a batch a second).
        wait_for(lambda: sum(outcomes(scrape(port)).values()) == 60
                 and scrape(port)["mailflow_feedback_lines_total"] == 201)
        got = scrape(port)
        assert outcomes(got) == {"delivered": 40, "deferred": 0, "bounce_5.1": 10, "bounce_5.2": 0, "bounce_5.7": 0,
                                 "bounce_other": 0, "unknown_recipient": 10}
        assert got["mailflow_feedback_batches_total"] >= 1
        assert 'mailflow_feedback_outcomes_total{field="complaint"}' not in got  # ARF's, not the log's
        assert got["mailflow_feedback_unattributed_total"] == 1
        assert got["mailflow_feedback_store_errors_total"] == 0
        # The ladder judges the accounts batches touched every JUDGE_SECONDS, not per batch.
        moves = 'mailflow_reputation_moves_total{direction="up",state="block"}'
        wait_for(lambda: scrape(port).get(moves) == 2, follow_module.JUDGE_SECONDS + 10)
        got = scrape(port)
        assert sum(v for k, v in got.items() if k.startswith("mailflow_reputation_moves_total")) == 2
        assert abs(got["mailflow_feedback_last_batch_timestamp_seconds"] - time.time()) < 30
        assert got["mailflow_feedback_lag_bytes"] == 0
        assert not [k for k in got if "shop.example" in k or "lists.example" in k or "account" in k]

        with log.path.open("a") as fh:  # a line syslog has not finished: not read, behind by its bytes
            fh.write("2026-11-27T05:00:00+00:00 mx postfix/qmgr[12]: 4Q")
        assert scrape(port)["mailflow_feedback_lag_bytes"] == len("2026-11-27T05:00:00+00:00 mx postfix/qmgr[12]: 4Q")
        with log.path.open("a") as fh:
            fh.write("ABC: removed\n")
        wait_for(lambda: scrape(port)["mailflow_feedback_lag_bytes"] == 0)

        # The store down: the batch is kept and retried, the log grows, nothing more is read.
        batches = scrape(port)["mailflow_feedback_batches_total"]
        redis.kill()
        log.write(10)
        wait_for(lambda: scrape(port)["mailflow_feedback_store_errors_total"] >= 1)
        size = log.path.stat().st_size
        log.write(10)
        down = scrape(port)
        assert down["mailflow_feedback_batches_total"] == batches
        assert down["mailflow_feedback_lag_bytes"] >= log.path.stat().st_size - size > 0
        redis.start()
        wait_for(lambda: outcomes(scrape(port))["delivered"] == 40 + 16, 30)  # every line applied once
        back = scrape(port)
        assert back["mailflow_feedback_lines_total"] == 201 + 1 + 80 and back["mailflow_feedback_lag_bytes"] == 0
        assert back["mailflow_feedback_batches_total"] > batches
        assert sum(outcomes(back).values()) == 60 + 24

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, (tmp_path / "follow.err").read_text()
        assert "Traceback" not in (tmp_path / "follow.err").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def follow_process(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailflow", "feedback", "follow", "-c", str(config)],
                          capture_output=True, text=True, timeout=60, cwd=REPO)


def test_a_port_in_use_is_one_line_and_exit_2(tmp_path: Path) -> None:
    log = MailLog(tmp_path / "mail.log")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        config = write_config(tmp_path, f"sqlite://{tmp_path}/state.db", log.path,
                              metrics={"feedback_listen": f"127.0.0.1:{port}"})
        run = follow_process(config)
    assert run.returncode == 2, run.stderr
    assert run.stderr.splitlines() == [f"mailflow: cannot listen for metrics on 127.0.0.1:{port}: Address already "
                                       "in use (in use, or no permission?)"]


@pytest.mark.parametrize(("metrics", "error"), [
    ({"listen": "127.0.0.1:9358", "feedback_listen": "127.0.0.1:9358"}, "metrics.feedback_listen: is metrics.listen "
                                                                         "or rbl_listen too"),
    ({"rbl_listen": "[::1]:9359", "feedback_listen": "[::1]:9359"}, "metrics.feedback_listen: is metrics.listen or "
                                                                     "rbl_listen too"),
    ({"feedback_listen": "0.0.0.0:9360"}, "metrics.feedback_listen: '0.0.0.0:9360' is not a loopback address"),
    ({"feedback_listen": "localhost:9360"}, "'localhost' is not an IP address"),
])
def test_a_bad_feedback_listen_is_one_line_and_exit_2(tmp_path: Path, metrics: dict[str, str], error: str) -> None:
    log = MailLog(tmp_path / "mail.log")
    run = follow_process(write_config(tmp_path, f"sqlite://{tmp_path}/state.db", log.path, metrics=metrics))
    assert run.returncode == 2
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("mailflow: bad config: ") and error in lines[0], run.stderr


def test_a_start_afresh_keeps_the_counts(tmp_path: Path) -> None:
    """A store fault at start makes the follower start afresh (a new tally): its counters for
    /metrics must not go back."""
    from mailflow.config import load_config
    from mailflow.feedback.follow import Follower
    from mailflow.store import open_store

    log = MailLog(tmp_path / "mail.log")
    log.write(20)
    config = load_config(str(write_config(tmp_path, f"sqlite://{tmp_path}/state.db", log.path)))
    store = open_store(config.store.url)
    follower = Follower(config, store, str(log.path), from_start=True)
    try:
        follower.start()
        for _ in range(10):
            if not follower.poll():
                break
        follower.flush()
        before = follower.counted()
        assert before["lines"] == 80 and before["attributed"] == 20 and follower.applied["delivered"] == 16
        follower.start()  # reads the lines before its offset again, counting nothing
        assert follower.counted() == before
        log.write(5)
        follower.poll()
        assert follower.counted()["lines"] == 100
    finally:
        follower.close()
        store.close()
