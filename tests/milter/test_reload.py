"""SIGHUP reloads, SIGTERM drains: the real `mailflow run` (supervisor and libmilter workers),
driven over the milter protocol. Through Postfix under load: tests/e2e/test_reload_postfix.py."""

from __future__ import annotations

import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from mailflow.milter.client import MilterClient
from tests.helpers.servers import REPO, MilterProcess, write_config

AUTH = {"{auth_authen}": "bob@shop.example"}


def config(store_url: str, limit: str = "3/hour") -> dict[str, Any]:
    return {
        "store": {"url": store_url},
        "accounts": {"identify": ["sasl"]},
        "ratelimit": {"limits": [limit]},
    }


def wait_log(milter: MilterProcess, pattern: str, count: int = 1, timeout: float = 15.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = milter.log()
        if len(re.findall(pattern, text)) >= count:
            return text
        time.sleep(0.05)
    raise TimeoutError(f"{pattern!r} x{count} not logged:\n{milter.log()}")


def rcpt_replies(milter: MilterProcess, login: str, recipients: int) -> list[str]:
    with MilterClient(milter.socket) as c:
        c.connect("mua.example", "198.51.100.20", 40000)
        c.mail(login, macros={"{auth_authen}": login})
        replies = [c.rcpt(f"r{n}@x.example").smtp for n in range(recipients)]
        c.abort()
    return replies


def finish(client: MilterClient, sender: str, qid: str) -> str:
    client.header("From", sender)
    client.eoh()
    return client.eom(macros={"i": qid}).smtp


def reload(milter: MilterProcess, body: dict[str, Any] | str, count: int) -> str:
    if isinstance(body, str):
        milter.config_path.write_text(body)
    else:
        write_config(milter.config_path, {**body, "milter": {"socket": milter.socket}})
    assert milter.proc is not None
    milter.proc.send_signal(signal.SIGHUP)
    return wait_log(milter, r"reloaded: worker|reload refused", count)


def test_hup_reloads_a_valid_config_and_keeps_the_running_one_on_a_bad_file(
        tmp_path: Path, start_milter: Any) -> None:
    store = f"sqlite://{tmp_path}/state.db"
    milter: MilterProcess = start_milter(config(store))
    assert rcpt_replies(milter, "a@one.example", 4)[3].startswith("451 4.7.1 Rate limit 3/hour")

    reload(milter, config(store, "10/hour"), 1)
    assert milter.proc is not None and milter.proc.poll() is None  # HUP no longer stops it
    assert rcpt_replies(milter, "b@two.example", 4) == ["continue"] * 4  # the new limit, at once

    two_errors = config(store, "10/hour") | {"ratelimit": {"limits": ["ten per hour"]}, "log": {"level": "loud"}}
    text = reload(milter, two_errors, 2)
    # Every error reaches the log as a log line, each with its key, not as bare text on stderr.
    assert re.search(r"ERROR reload: bad config: .*ratelimit\.limits\[0\]: 'ten per hour'", text)
    assert re.search(r"ERROR reload refused, the running config stays: .*log\.level: 'loud'", text)
    assert not any(line.startswith("mailflow: bad config") for line in text.splitlines())
    assert rcpt_replies(milter, "c@three.example", 4) == ["continue"] * 4  # still 10/hour

    text = reload(milter, "[milter\n", 3)  # not TOML at all
    assert "not valid TOML" in text
    reload(milter, config(store, "1/hour"), 4)  # a good file again: taken
    assert rcpt_replies(milter, "d@four.example", 2)[1].startswith("451 4.7.1 Rate limit 1/hour")
    assert milter.stop(graceful=True) == 0
    assert "Traceback" not in milter.log() and "mailflow stopped" in milter.log()


def test_sessions_open_at_a_reload_or_a_stop_finish(tmp_path: Path, start_milter: Any) -> None:
    store = f"sqlite://{tmp_path}/state.db"
    milter: MilterProcess = start_milter(config(store, "2/hour"))
    assert milter.proc is not None
    with MilterClient(milter.socket) as old:
        old.connect("mua.example", "198.51.100.20", 40000)
        old.mail("a@one.example", macros={"{auth_authen}": "a@one.example"})
        reload(milter, config(store, "5/hour"), 1)
        # A new session gets the new config while the old one is still open on the old worker.
        assert rcpt_replies(milter, "b@two.example", 3) == ["continue"] * 3
        replies = [old.rcpt(f"r{n}@x.example").smtp for n in range(3)]
        assert replies[:2] == ["continue"] * 2 and replies[2].startswith("451 4.7.1 Rate limit 2/hour")
        assert finish(old, "a@one.example", "4OLD") == "continue"

    with MilterClient(milter.socket) as open_at_stop:
        open_at_stop.connect("mua.example", "198.51.100.20", 40001)
        open_at_stop.mail("c@three.example", macros={"{auth_authen}": "c@three.example"})
        milter.proc.send_signal(signal.SIGTERM)
        wait_log(milter, r"worker stopping \(asked by the supervisor, or it is gone\): accepting no more connections; 1 open")
        # New connections are refused within libmilter's 5 s listener poll, not queued for the
        # whole drain on a backlog nobody serves (the MTA would wait its connect timeout each time).
        deadline = time.monotonic() + 8
        while True:
            try:
                socket.create_connection(("127.0.0.1", milter.port), timeout=0.5).close()
            except ConnectionRefusedError:
                break
            assert time.monotonic() < deadline, "new connections still accepted while draining"
            time.sleep(0.05)
        time.sleep(0.3)
        assert open_at_stop.rcpt("r@x.example").smtp == "continue"
        assert finish(open_at_stop, "c@three.example", "4LAST") == "continue"
    assert milter.proc.wait(timeout=10) == 0
    eom = [d for d in milter.decisions() if d["stage"] == "eom"]
    assert [d["qid"] for d in eom] == ["4OLD", "4LAST"]
    assert "every session finished" in milter.log() and "cut" not in milter.log()


def test_a_session_open_past_the_drain_timeout_is_cut_and_the_exit_is_still_0(
        tmp_path: Path, start_milter: Any) -> None:
    milter: MilterProcess = MilterProcess(tmp_path, config(f"sqlite://{tmp_path}/state.db"),
                                          args=("--drain-timeout", "1")).start()
    try:
        assert milter.proc is not None
        with MilterClient(milter.socket) as idle:
            idle.connect("mua.example", "198.51.100.20", 40000)
            started = time.monotonic()
            milter.proc.send_signal(signal.SIGTERM)
            assert milter.proc.wait(timeout=10) == 0
        assert 1.0 <= time.monotonic() - started < 5
        assert "1 connection(s) still open after 1s were cut" in milter.log()
    finally:
        milter.stop()


def test_a_worker_that_dies_is_replaced(tmp_path: Path, start_milter: Any) -> None:
    milter: MilterProcess = start_milter(config(f"sqlite://{tmp_path}/state.db"))
    [pid] = map(int, re.findall(r"worker (\d+) ready", wait_log(milter, r"worker \d+ ready")))
    os.kill(pid, signal.SIGKILL)
    wait_log(milter, rf"worker {pid} was killed by SIGKILL unexpectedly; starting another")
    wait_log(milter, r"worker \d+ ready", 2)
    assert rcpt_replies(milter, "a@one.example", 1) == ["continue"]


def test_the_unix_socket_is_the_same_across_reloads_and_removed_at_stop(tmp_path: Path) -> None:
    path = tmp_path / "milter.sock"
    cfg = write_config(tmp_path / "c.toml", {**config(f"sqlite://{tmp_path}/state.db"),
                                             "milter": {"socket": f"unix:{path}"}})
    with open(tmp_path / "log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "mailflow", "run", "-c", str(cfg)], cwd=REPO,
                                stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 20
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        inode = path.stat().st_ino
        for n in range(1, 3):
            if n == 1:  # a new mode is applied to the socket in place
                write_config(cfg, {**config(f"sqlite://{tmp_path}/state.db"),
                                   "milter": {"socket": f"unix:{path}", "socket_mode": "0600"}})
            if n == 2:  # a new socket needs a restart: said, and the old one kept
                write_config(cfg, {**config(f"sqlite://{tmp_path}/state.db"),
                                   "milter": {"socket": f"unix:{tmp_path}/other.sock", "socket_mode": "0600"}})
            proc.send_signal(signal.SIGHUP)
            while (tmp_path / "log").read_text().count("reloaded: worker") < n and time.monotonic() < deadline:
                time.sleep(0.05)
            with socket.socket(socket.AF_UNIX) as client:  # served, by the same socket, all along
                client.settimeout(5)
                client.connect(str(path))
            assert path.stat().st_ino == inode and not (tmp_path / "milter.sock.new").exists()
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait(timeout=10)
    log_text = (tmp_path / "log").read_text()
    assert log_text.count("reloaded: worker") == 2, log_text
    assert f"milter.socket changed from unix:{path} to unix:{tmp_path}/other.sock: a restart applies it" in log_text
    assert not path.exists() and not (tmp_path / "other.sock").exists()


def test_a_signal_sent_to_a_worker_itself_is_survived(tmp_path: Path, start_milter: Any) -> None:
    """libmilter owns a worker's signals (HUP and TERM both stop it, and Debian's libmilter then
    serves none of its open sessions): another worker takes over at once, the main process goes on."""
    milter: MilterProcess = start_milter(config(f"sqlite://{tmp_path}/state.db"))
    [pid] = map(int, re.findall(r"worker (\d+) ready", wait_log(milter, r"worker \d+ ready")))
    os.kill(pid, signal.SIGHUP)
    wait_log(milter, rf"worker {pid} was stopped by a signal sent to it")
    wait_log(milter, r"worker \d+ ready", 2)
    wait_log(milter, rf"worker {pid} exited with code 0")
    assert rcpt_replies(milter, "b@two.example", 1) == ["continue"]
    assert milter.proc is not None and milter.proc.poll() is None


def test_a_reload_whose_worker_cannot_start_is_refused(tmp_path: Path, start_milter: Any) -> None:
    """The config parses, but its suppression key is not the lists' one: the new worker says so
    and exits, the running worker goes on, and a HUP is no reason to stop the milter."""
    keys = {}
    for name in ("a", "b"):
        keys[name] = tmp_path / f"{name}.key"
        keys[name].write_text(f"suppression-key-{name}-0123456789abcdef\n")
        keys[name].chmod(0o600)
    store = f"sqlite://{tmp_path}/state.db"
    milter: MilterProcess = start_milter({**config(store), "suppression": {"hash_key_file": str(keys["a"])}})
    wait_log(milter, r"worker \d+ ready")
    text = reload(milter, {**config(store, "10/hour"), "suppression": {"hash_key_file": str(keys["b"])}}, 1)
    assert re.search(r"ERROR reload refused: the suppression key differs .*; the running config stays", text), text
    assert rcpt_replies(milter, "a@one.example", 4)[3].startswith("451 4.7.1 Rate limit 3/hour")  # the old config
    assert milter.proc is not None and milter.proc.poll() is None
