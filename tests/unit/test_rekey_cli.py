"""`mailflow suppress rekey` as an admin runs it (issue 14, Keys): the steps in order, changes refused
while a copy is under way, one line and exit 2 for every bad input, a progress bar on a terminal
only, and a run killed with SIGKILL mid-way that a second run completes with nothing lost."""

from __future__ import annotations

import os
import pty
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mailflow.cli import main
from mailflow.store import open_store
from mailflow.suppression import rekey
from mailflow.suppression.entries import Matcher
from mailflow.suppression.keys import Keyring, read_key_file
from mailflow.suppression.normalize import AddressForms
from tests.helpers.servers import REPO


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def one_line_exit_2(result: tuple[int, str, str], needle: str) -> None:
    code, out, err = result
    assert code == 2 and err.startswith("mailflow: ") and err.count("\n") == 1 and "Traceback" not in err, result
    assert needle in err, (needle, err)


def setup(tmp_path: Path, store_url: str, capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    """Keys made by keygen, a config on the old one, and a few entries: (old config, new config)."""
    for name in ("old.key", "new.key"):
        assert cli(capsys, "keygen", str(tmp_path / name))[0] == 0
    configs = []
    for name in ("old", "new"):
        path = tmp_path / f"{name}.toml"
        path.write_text(f'[store]\nurl = "{store_url}"\n[suppression]\nhash_key_file = "{name}.key"\n')
        configs.append(str(path))
    assert cli(capsys, "suppress", "add", "-c", configs[0], "a@x.example", "@blocked.example")[0] == 0
    assert cli(capsys, "suppress", "add", "-c", configs[0], "--account", "shop.example", "optout@dest.example")[0] == 0
    return configs[0], configs[1]


def test_the_steps_in_order(tmp_path: Path, store_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    old, new = setup(tmp_path, store_url, capsys)
    code, out, err = cli(capsys, "suppress", "rekey", "-c", old, "--new-key-file", str(tmp_path / "new.key"))
    assert code == 0, err
    assert "3 entries re-keyed in 2 lists" in out and "next: install" in out and "--finish" in out
    assert "re-keying" not in err  # no progress bar where stderr is no terminal
    one_line_exit_2(cli(capsys, "suppress", "check", "-c", old, "a@x.example"), "were re-keyed")
    assert cli(capsys, "suppress", "check", "-c", new, "x@mx.blocked.example")[0] == 0
    assert cli(capsys, "suppress", "check", "-c", new, "--account", "shop.example", "optout@dest.example")[0] == 0
    code, out, err = cli(capsys, "suppress", "list", "-c", new)
    assert sorted(line.split()[0] for line in out.splitlines()) == ["@blocked.example", "a@x.example"]
    assert "2 entries under the other key" in err
    code, out, err = cli(capsys, "suppress", "rekey", "-c", old, "--new-key-file", str(tmp_path / "new.key"))
    assert code == 0 and "already expect the new key" in out  # run twice: nothing more to do
    code, out, err = cli(capsys, "suppress", "rekey", "-c", new, "--finish")
    assert code == 0 and "3 entries of the old key removed" in out, err
    code, out, err = cli(capsys, "suppress", "list", "-c", new)
    assert len(out.splitlines()) == 2 and err == ""
    assert cli(capsys, "suppress", "add", "-c", new, "b@x.example")[0] == 0


def test_changes_wait_while_a_copy_is_under_way(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite://{tmp_path}/s.db"
    old, new = setup(tmp_path, url, capsys)
    store = open_store(url)
    forms = AddressForms()
    old_secret, new_secret = read_key_file(str(tmp_path / "old.key")), read_key_file(str(tmp_path / "new.key"))
    with pytest.raises(rekey.RekeyInterrupted):
        rekey.start(store, Matcher(forms, Keyring(old_secret)), old_secret, Matcher(forms, Keyring(new_secret)),
                    new_secret, ["global"], 1, lambda n: None, stop_after_batches=1)
    store.close()
    for args in (["add", "c@x.example"], ["remove", "a@x.example"]):
        one_line_exit_2(cli(capsys, "suppress", args[0], "-c", old, args[1]), "a re-key of the lists is under way")
    assert cli(capsys, "suppress", "check", "-c", old, "a@x.example")[0] == 0  # lookups go on
    code, out, err = cli(capsys, "suppress", "rekey", "-c", old, "--new-key-file", str(tmp_path / "new.key"))
    assert code == 0 and "(1 by an earlier run)" in out, (out, err)
    assert cli(capsys, "suppress", "add", "-c", new, "c@x.example")[0] == 0


@pytest.mark.parametrize(("args", "needle"), [
    (["OLD"], "give --new-key-file FILE"),
    (["OLD", "--finish", "--new-key-file", "NEWKEY"], "give --new-key-file FILE"),
    (["OLD", "--new-key-file", "OLDKEY"], "the new key is the key the config names already"),
    (["OLD", "--new-key-file", "WIDE"], "is mode 0644: readable by others"),
    (["OLD", "--new-key-file", "SHORT"], "at least 16 bytes"),
    (["OLD", "--new-key-file", "MISSING"], "No such file or directory"),
    (["OLD", "--finish"], "no re-key to finish"),
    (["NEW", "--finish"], "the suppression key differs"),
    (["OLD", "--batch", "0", "--finish"], "0 is not in the range"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                                          needle: str) -> None:
    old, new = setup(tmp_path, f"sqlite://{tmp_path}/s.db", capsys)
    (tmp_path / "wide.key").write_text("w" * 64 + "\n")
    (tmp_path / "wide.key").chmod(0o644)
    (tmp_path / "short.key").write_text("short\n")
    (tmp_path / "short.key").chmod(0o600)
    names = {"OLD": ["-c", old], "NEW": ["-c", new], "NEWKEY": [str(tmp_path / "new.key")],
             "OLDKEY": [str(tmp_path / "old.key")], "WIDE": [str(tmp_path / "wide.key")],
             "SHORT": [str(tmp_path / "short.key")], "MISSING": [str(tmp_path / "missing.key")]}
    one_line_exit_2(cli(capsys, "suppress", "rekey", *[part for a in args for part in names.get(a, [a])]), needle)


def test_a_terminal_gets_a_progress_bar(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old, _ = setup(tmp_path, f"sqlite://{tmp_path}/s.db", capsys)
    leader, follower = pty.openpty()
    try:
        done = subprocess.run([sys.executable, "-m", "mailflow", "suppress", "rekey", "-c", old, "--new-key-file",
                               str(tmp_path / "new.key")], cwd=REPO, stdout=subprocess.PIPE, stderr=follower,
                              timeout=60)
        os.close(follower)
        follower = -1
        shown = b""
        while chunk := _read_pty(leader):
            shown += chunk
    finally:
        if follower != -1:
            os.close(follower)
        os.close(leader)
    assert done.returncode == 0, shown
    assert b"re-keying" in shown and b"100%" in shown
    assert b"3 entries re-keyed" in done.stdout


def _read_pty(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except OSError:  # EIO: the writer closed its side
        return b""


# A real SIGKILL mid-way: the rekey runs in a subprocess slowed down (only here) between its
# batches, so the kill lands after some batches and before the last one.
SLOW_REKEY = """
import sys, time
from mailflow.store.sqlite import SqliteStore
from mailflow.cli import main
add = SqliteStore.add_suppressions
def slow_add(self, scope, entries):
    time.sleep(0.03)
    return add(self, scope, entries)
SqliteStore.add_suppressions = slow_add
main(sys.argv[1:])
"""


def _rows(db: Path) -> int:
    with sqlite3.connect(db, timeout=5) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM suppression").fetchone()[0])


def test_a_rekey_killed_mid_way_is_completed_by_the_next_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "s.db"
    old, new = setup(tmp_path, f"sqlite://{db}", capsys)
    listed = tmp_path / "list.txt"
    listed.write_text("".join(f"user{i}@dest{i % 13}.example\n" for i in range(3000)))
    assert cli(capsys, "suppress", "import", "-c", old, str(listed))[0] == 0
    before = _rows(db)
    assert before == 3003
    args = ["suppress", "rekey", "-c", old, "--new-key-file", str(tmp_path / "new.key"), "--batch", "50"]
    proc = subprocess.Popen([sys.executable, "-c", SLOW_REKEY, *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while _rows(db) < before + 500 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    copied = _rows(db) - before
    assert 500 <= copied < before, copied  # killed mid-way
    one_line_exit_2(cli(capsys, "suppress", "add", "-c", old, "late@x.example"), "under way")
    assert cli(capsys, "suppress", "check", "-c", old, "user7@dest7.example")[0] == 0  # the old key still works

    code, out, err = cli(capsys, "suppress", "rekey", *args[2:])
    assert code == 0, err
    assert f"{before - copied} entries re-keyed in 2 lists ({copied} by an earlier run)" in out
    assert _rows(db) == 2 * before  # each entry once per key: none lost, none twice
    assert cli(capsys, "suppress", "rekey", "-c", new, "--finish")[0] == 0
    assert _rows(db) == before
    code, out, _ = cli(capsys, "suppress", "export", "-c", new, "--format", "plain")
    assert sorted(out.splitlines()) == sorted(["a@x.example", "@blocked.example",
                                               *(f"user{i}@dest{i % 13}.example" for i in range(3000))])
    assert cli(capsys, "suppress", "check", "-c", new, "User2999+x@Dest9.example")[0] == 0
