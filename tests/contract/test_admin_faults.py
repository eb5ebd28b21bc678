"""Issue 15's admin commands against a real Redis that fails: killed, stopped (SIGSTOP, past
timeout_ms), asking for a password the URL does not give. Each answers with one line and exit 2,
no traceback. An action that changed state but could not write its audit entry (maxmemory: the
grant's or hold's DEL is taken, the audit's LPUSH refused with OOM) says so and exits 3, and
stops nothing: `account release` still releases the held mail (postsuper/postqueue stand-ins
here; tests/e2e/test_held_postfix.py releases through a real Postfix)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailflow.held import HeldMessage
from mailflow.store.redis import RedisStore
from tests.helpers.redis_faults import RedisProcess
from tests.helpers.sqlite_faults import fill, tiny_filesystem
from tests.helpers.cli import run_cli as run

ACCOUNT = "shop.example"
COMMANDS = [
    ["top"], ["top", "--json"], ["ratelimit", "status", ACCOUNT], ["near-limit"], ["ratelimit", "grants"],
    ["ratelimit", "grant", ACCOUNT, "500/hour", "--for", "1h", "--why", "x"],
    ["ratelimit", "extend", ACCOUNT, "--for", "1h"], ["ratelimit", "revoke", ACCOUNT],
    ["audit"], ["held"], ["held", "--json"], ["account", "release", ACCOUNT], ["account", "hold", ACCOUNT],
    ["account", "list"], ["ratelimit", "reset", ACCOUNT],
]
# A stand-in for Postfix's pair: the hold queue is a file of queue ids; postsuper -H - / -d -
# takes ids from stdin out of it (or fails, when FAIL exists). Both log their command line.
POSTQUEUE = """#!/bin/sh
echo "postqueue $*" >> "{d}/calls"
while read -r id; do printf '{{"queue_name": "hold", "queue_id": "%s"}}\\n' "$id"; done < "{d}/hold"
"""
POSTSUPER = """#!/bin/sh
echo "postsuper $*" >> "{d}/calls"
if [ -e "{d}/FAIL" ]; then echo "postsuper: fatal: queue directory busy" >&2; exit 1; fi
ids=$(cat)
for id in $ids; do grep -v "^$id\\$" "{d}/hold" > "{d}/hold.new"; mv "{d}/hold.new" "{d}/hold"; done
"""


@pytest.fixture
def redis_config(tmp_path: Path) -> Iterator[tuple[RedisProcess, str, Path]]:
    server = RedisProcess(tmp_path, "--maxmemory-policy", "noeviction", "--requirepass", "pw-1").start()
    postfix = tmp_path / "postfix"
    postfix.mkdir()
    for name, text in (("postqueue", POSTQUEUE), ("postsuper", POSTSUPER)):
        (postfix / name).write_text(text.format(d=postfix))
        (postfix / name).chmod(0o755)
    (postfix / "hold").write_text("")
    config = tmp_path / "c.toml"
    config.write_text(f'[store]\nurl = "redis://:pw-1@127.0.0.1:{server.port}/0"\ntimeout_ms = 200\nrefresh_ms = 50\n'
                      f'[ratelimit]\nlimits = ["100/hour"]\n[accounts]\npostsuper = "{postfix}/postsuper"\n')
    yield server, str(config), postfix
    server.kill()


@pytest.mark.parametrize("fault", ["kill -9", "SIGSTOP", "no password"])
def test_every_admin_command_answers_a_store_fault_in_one_line(
        redis_config: tuple[RedisProcess, str, Path], fault: str, capsys: pytest.CaptureFixture[str],
        tmp_path: Path) -> None:
    server, config, _ = redis_config
    if fault == "no password":
        wrong = tmp_path / "nopw.toml"
        wrong.write_text(Path(config).read_text().replace(":pw-1@", ""))
        config = str(wrong)
    elif fault == "kill -9":
        server.kill()
    else:
        server.pause()
    try:
        for command in COMMANDS:
            started = time.monotonic()
            code, out, err = run(capsys, *command, "-c", config)
            assert time.monotonic() - started < 3, command
            assert code == 2 and err.count("\n") == 1 and err.startswith("mailflow: redis: "), (command, err)
            assert "Traceback" not in out + err and "pw-1" not in err
    finally:
        server.resume()


def test_actions_done_without_their_audit_entry_say_so_and_exit_3(
        redis_config: tuple[RedisProcess, str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    server, config, postfix = redis_config
    assert run(capsys, "ratelimit", "grant", ACCOUNT, "500/hour", "--for", "1h", "--why", "launch", "-c", config)[0] == 0
    assert run(capsys, "account", "hold", ACCOUNT, "-c", config)[0] == 0
    store = RedisStore(server.url.replace("redis://", "redis://:pw-1@"), timeout_ms=200)
    store.add_held_messages([HeldMessage(ACCOUNT, "4AB1C2D3E4", int(time.time()), "account_held", "held", 1)])
    (postfix / "hold").write_text("4AB1C2D3E4\n")
    with server.client("pw-1") as admin:
        admin.config_set("maxmemory", 1)  # writes that take memory are refused (OOM); deletes are not
    try:
        code, out, err = run(capsys, "ratelimit", "revoke", ACCOUNT, "-c", config)
        assert code == 3 and "revoked" in out
        assert err == ("mailflow: ratelimit revoke done, but NOT written to the audit log: redis: out of memory: "
                       "maxmemory reached, writes refused (OOM)\n")
        code, out, err = run(capsys, "account", "release", ACCOUNT, "-c", config)
        # Before the fix: exit 3 at the audit write, the held mail left on hold, nothing on stdout.
        assert code == 3 and out == f"account {ACCOUNT}: released; held messages: 1 released, 0 no longer on hold\n"
        assert err.count("\n") == 1 and "account release done, but NOT written to the audit log" in err
        assert (postfix / "hold").read_text() == ""
        assert "postsuper -H -" in (postfix / "calls").read_text()
    finally:
        with server.client("pw-1") as admin:
            admin.config_set("maxmemory", 0)
    assert store.grants() == {} and store.held_accounts() == {}
    assert store.held_messages(ACCOUNT) == []  # released: its record forgotten
    actions = [json.loads(v)["action"] for v in store.audit_entries(10)]
    assert actions == ["account hold", "ratelimit grant"]  # the gap the two exit-3 lines named
    store.close()


def test_a_release_whose_postsuper_fails_and_whose_audit_fails_says_both(
        redis_config: tuple[RedisProcess, str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    server, config, postfix = redis_config
    assert run(capsys, "account", "hold", ACCOUNT, "-c", config)[0] == 0
    store = RedisStore(server.url.replace("redis://", "redis://:pw-1@"), timeout_ms=200)
    store.add_held_messages([HeldMessage(ACCOUNT, "4AB1C2D3E4", int(time.time()), "account_held", "held", 1)])
    (postfix / "hold").write_text("4AB1C2D3E4\n")
    (postfix / "FAIL").write_text("")
    with server.client("pw-1") as admin:
        admin.config_set("maxmemory", 1)
    try:
        code, out, err = run(capsys, "account", "release", ACCOUNT, "-c", config)
    finally:
        with server.client("pw-1") as admin:
            admin.config_set("maxmemory", 0)
    lines = err.splitlines()
    assert code == 1 and out == "" and len(lines) == 2, err
    assert "account release done, but NOT written to the audit log" in lines[0]
    assert lines[1] == ("mailflow: account shop.example: released; its held messages were not released: "
                        "postsuper failed (exit 1): postsuper: fatal: queue directory busy")
    assert [r.queue_id for r in store.held_messages(ACCOUNT)] == ["4AB1C2D3E4"]  # kept for the next try
    store.close()


def test_admin_commands_on_a_full_disk_name_the_cause(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """SQLite on a filesystem that is full (a tmpfs this test fills): opening the WAL's -shm file
    fails as "disk I/O error", which names no cause. Before the fix, that was the whole line."""
    with tiny_filesystem(tmp_path / "tiny") as tiny:
        config = tmp_path / "c.toml"
        config.write_text(f'[store]\nurl = "sqlite://{tiny}/s.db"\ntimeout_ms = 200\n[ratelimit]\nlimits = ["100/hour"]\n')
        assert run(capsys, "account", "hold", ACCOUNT, "-c", str(config))[0] == 0  # closed: no -wal, no -shm left
        filler = fill(tiny)
        try:
            for command in COMMANDS:
                code, out, err = run(capsys, *command, "-c", str(config))
                assert code == 2 and err.count("\n") == 1, (command, err)
                assert err == f"mailflow: sqlite: disk I/O error (no space left on the filesystem of {tiny})\n", err
        finally:
            filler.unlink()
        assert run(capsys, "account", "list", "-c", str(config))[0] == 0  # room again: answered
