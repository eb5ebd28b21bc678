"""`mailflow feedback arf`: a report on stdin (a pipe transport), a Maildir, and the exit codes
an MTA acts on: 0 read, 75 store down (nothing counted, nothing lost), 2 bad argument or config."""

from __future__ import annotations

import io
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from mailflow import cli as mailflow_cli
from mailflow.store import open_store
from mailflow.store.base import Store
from tests.helpers.arf import Original, report, write_id_key
from tests.helpers.cli import run_cli
from tests.helpers.redis_faults import RedisProcess
from tests.helpers.servers import write_config

ACCOUNT = "cust-7"


def make_config(tmp_path: Path, url: str) -> Path:
    raw: dict[str, Any] = {"store": {"url": url, "timeout_ms": 500},
                           "suppression": {"hash_key_env": "MAILFLOW_SUPPRESSION_KEY"},
                           "feedback": {"id_key_file": str(write_id_key(tmp_path / "id.key"))}}
    return write_config(tmp_path / "mailflow.toml", raw)


@pytest.fixture
def config_path(tmp_path: Path, store_url: str) -> Path:
    path = make_config(tmp_path, store_url)
    store = open_store(store_url, 2000)
    store.add_domain(ACCOUNT, "shop.example")
    store.close()
    return path


def store_of(config_path: Path) -> Store:
    return open_store(mailflow_cli._load(str(config_path)).store.url, 2000)


def complaints(config_path: Path) -> int:
    store = store_of(config_path)
    try:
        hour = int(time.time()) // 3600
        return sum(f.get("complaint", 0) for f in store.feedback_counts(ACCOUNT, [hour - 1, hour, hour + 1]).values())
    finally:
        store.close()


def pipe(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, data: bytes,
         *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(data)))
    return run_cli(capsys, "feedback", "arf", *args)


def test_a_report_on_stdin_is_counted_and_a_bad_one_exits_0(capsys: pytest.CaptureFixture[str],
                                                            monkeypatch: pytest.MonkeyPatch, config_path: Path) -> None:
    code, out, _ = pipe(capsys, monkeypatch, report(Original()), "-c", str(config_path))
    assert code == 0 and out.startswith("counted: complaint account=cust-7 by=From: shop.example")
    code, out, _ = pipe(capsys, monkeypatch, report(Original()), "-c", str(config_path))
    assert code == 0 and out.startswith("not counted: seen before")
    code, out, _ = pipe(capsys, monkeypatch, b"\xff\x00 garbage", "-c", str(config_path))
    assert code == 0 and out.startswith("not counted: not an ARF report") and out.count("\n") == 1
    assert complaints(config_path) == 1


def test_the_installed_command_as_a_pipe_transport_runs_it(config_path: Path) -> None:
    """What Postfix's pipe(8) runs: the exit code and the one line, from a real process."""
    done = subprocess.run([sys.executable, "-m", "mailflow", "feedback", "arf", "-c", str(config_path)],
                          input=report(Original(to="piped@mail.example")), capture_output=True, timeout=60)
    assert done.returncode == 0 and done.stdout.decode().startswith("counted: complaint account=cust-7"), done
    assert complaints(config_path) == 1


def test_bad_arguments_and_config_exit_2(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                         tmp_path: Path, config_path: Path) -> None:
    code, _, err = pipe(capsys, monkeypatch, b"", "-c", str(tmp_path / "missing.toml"))
    assert code == 2 and err.count("\n") == 1
    code, _, err = pipe(capsys, monkeypatch, b"", "-c", str(config_path), "--maildir", str(tmp_path))
    assert code == 2 and "not a Maildir" in err
    bad = write_config(tmp_path / "bad.toml", {"feedback": {"id_key_file": str(tmp_path / "nope.key")}})
    code, _, err = pipe(capsys, monkeypatch, b"", "-c", str(bad))
    assert code == 2 and "id_key_file" in err and err.count("\n") == 1
    for name, text, mode, says in (("open.key", "0123456789abcdef0123", 0o644, "is mode 0644"),
                                   ("short.key", "short", 0o600, "at least 16 bytes")):
        key = tmp_path / name
        key.write_text(text)
        key.chmod(mode)
        bad = write_config(tmp_path / "bad.toml", {"feedback": {"id_key_file": str(key)}})
        code, _, err = pipe(capsys, monkeypatch, b"", "-c", str(bad))
        assert code == 2 and says in err and err.count("\n") == 1, err


def make_maildir(root: Path) -> Path:
    for sub in ("new", "cur", "tmp"):
        (root / sub).mkdir(parents=True)
    return root


def test_a_maildir_is_read_once_and_every_message_flagged_seen(capsys: pytest.CaptureFixture[str],
                                                               config_path: Path, tmp_path: Path) -> None:
    box = make_maildir(tmp_path / "fbl")
    (box / "new" / "1001.a.host").write_bytes(report(Original(), report_id="<a@l>"))
    (box / "new" / "1002.b.host").write_bytes(b"not a report at all")
    (box / "cur" / "1003.c.host:2,").write_bytes(report(Original(to="two@mail.example"), report_id="<c@l>"))
    (box / "cur" / "1004.d.host:2,RS").write_bytes(report(Original(to="three@mail.example"), report_id="<d@l>"))
    (box / "new" / "1000.link.host").symlink_to(box / "cur" / "1004.d.host:2,RS")  # not followed, left alone
    code, out, _ = run_cli(capsys, "feedback", "arf", "-c", str(config_path), "--maildir", str(box))
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0] == "1000.link.host: not read (Too many levels of symbolic links): left where it is", lines
    assert lines[1].startswith("1001.a.host: counted") and "not counted" in lines[2] and len(lines) == 4
    assert sorted(p.name for p in (box / "cur").iterdir()) == [
        "1001.a.host:2,S", "1002.b.host:2,S", "1003.c.host:2,S", "1004.d.host:2,RS"]
    assert [p.name for p in (box / "new").iterdir()] == ["1000.link.host"]
    assert complaints(config_path) == 2  # the message already seen (RS) is not read again
    code, out, _ = run_cli(capsys, "feedback", "arf", "-c", str(config_path), "--maildir", str(box))
    assert code == 0 and out.startswith("1000.link.host: not read") and complaints(config_path) == 2


def test_a_store_that_is_down_exits_75_and_loses_nothing(capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    redis = RedisProcess(tmp_path, persist=True).start()  # kill -9 keeps what was written
    try:
        config_path = make_config(tmp_path, redis.url)
        store = store_of(config_path)
        store.add_domain(ACCOUNT, "shop.example")
        store.close()
        box = make_maildir(tmp_path / "fbl")
        (box / "new" / "2001.a.host").write_bytes(report(Original(), report_id="<m@l>"))
        piped = report(Original(to="piped@mail.example"), report_id="<p@l>")
        redis.kill()
        code, out, err = pipe(capsys, monkeypatch, piped, "-c", str(config_path))
        assert code == 75 and out == "" and err.startswith("mailflow: store unavailable") and err.count("\n") == 1
        code, out, err = run_cli(capsys, "feedback", "arf", "-c", str(config_path), "--maildir", str(box))
        assert code == 75 and [p.name for p in (box / "new").iterdir()] == ["2001.a.host"]  # left for the next run
        redis.start()
        # The MTA tries again (75 = EX_TEMPFAIL); the next cron run reads the Maildir again.
        code, out, _ = pipe(capsys, monkeypatch, piped, "-c", str(config_path))
        assert code == 0 and out.startswith("counted")
        code, out, _ = run_cli(capsys, "feedback", "arf", "-c", str(config_path), "--maildir", str(box))
        assert code == 0 and "counted: complaint" in out and not list((box / "new").iterdir())
        assert complaints(config_path) == 2
    finally:
        redis.kill()
