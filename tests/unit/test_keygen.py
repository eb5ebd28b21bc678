"""`mailflow keygen [FILE]` (issue 14, Keys): a key `read_key_file` accepts, written atomically with
modes never wider than 0600 / 0640 root:GROUP whatever the umask, never replacing a key by accident."""

from __future__ import annotations

import grp
import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailflow.cli import main
from mailflow.config import load_config
from mailflow.suppression.keys import read_key_file
from tests.helpers.servers import REPO

HEX_KEY = re.compile(r"^[0-9a-f]{64}\n$")


def run_main(capsys: pytest.CaptureFixture[str], args: list[str]) -> tuple[int, str, str]:
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def wide_umask() -> Iterator[None]:
    old = os.umask(0)  # the widest: keygen's modes must not depend on it
    yield
    os.umask(old)


def _a_group() -> grp.struct_group:
    """A group other than root's, so the chown is visible (the Debian package uses `mailflow`)."""
    for name in ("mailflow", "nogroup", "daemon", "mail"):
        try:
            return grp.getgrnam(name)
        except KeyError:
            continue
    pytest.skip("no group to test with")


def test_without_a_file_the_key_goes_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(capsys, ["keygen"])
    assert code == 0 and HEX_KEY.match(out) and err == ""
    _, again, _ = run_main(capsys, ["keygen"])
    assert again != out  # random each time


@pytest.mark.usefixtures("wide_umask")
def test_a_file_is_0600_and_accepted_by_read_key_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "suppression.key"
    code, out, err = run_main(capsys, ["keygen", str(key)])
    assert code == 0 and out == "", (out, err)
    info = key.stat()
    assert stat.S_IMODE(info.st_mode) == 0o600 and info.st_uid == os.geteuid()
    assert HEX_KEY.match(key.read_text())
    assert read_key_file(str(key)) == key.read_text().strip().encode()
    assert [p.name for p in tmp_path.iterdir()] == ["suppression.key"]  # no temporary file left behind


@pytest.mark.usefixtures("wide_umask")
def test_group_makes_it_0640_root_group(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if os.geteuid() != 0:
        pytest.skip("chown to root needs root")
    group = _a_group()
    key = tmp_path / "suppression.key"
    code, _, err = run_main(capsys, ["keygen", "--group", group.gr_name, str(key)])
    assert code == 0, err
    info = key.stat()
    assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (0o640, 0, group.gr_gid)
    assert len(read_key_file(str(key))) == 64


def test_the_config_reads_the_key_it_wrote(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "suppression.key"
    assert run_main(capsys, ["keygen", str(key)])[0] == 0
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[store]\nurl = "sqlite://{tmp_path}/s.db"\n[suppression]\nhash_key_file = "{key}"\n')
    assert load_config(str(cfg)).suppression.secret == key.read_text().strip().encode()


def test_an_existing_file_is_kept_without_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "suppression.key"
    key.write_text("the old key, never to be lost\n")
    key.chmod(0o600)
    code, out, err = run_main(capsys, ["keygen", str(key)])
    assert code == 2 and err.startswith("mailflow: ") and err.count("\n") == 1 and "--force" in err, err
    assert key.read_text() == "the old key, never to be lost\n"
    assert [p.name for p in tmp_path.iterdir()] == ["suppression.key"]
    code, _, err = run_main(capsys, ["keygen", "--force", str(key)])
    assert code == 0, err
    assert HEX_KEY.match(key.read_text()) and stat.S_IMODE(key.stat().st_mode) == 0o600


def test_force_replaces_a_wide_file_with_a_narrow_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "suppression.key"
    key.write_text("x\n")
    key.chmod(0o666)
    assert run_main(capsys, ["keygen", "--force", str(key)])[0] == 0
    assert stat.S_IMODE(key.stat().st_mode) == 0o600  # a new inode: the old mode does not carry over


def test_a_dangling_symlink_counts_as_existing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "suppression.key"
    key.symlink_to(tmp_path / "elsewhere")
    assert run_main(capsys, ["keygen", str(key)])[0] == 2
    assert not (tmp_path / "elsewhere").exists()


@pytest.mark.parametrize(("args", "needle"), [
    (["keygen", "--group", "no-such-group-here", "KEY"], "no such group"),
    (["keygen", "DIR"], "is a directory"),
    (["keygen", "DIR/missing/suppression.key"], "No such file or directory"),
    (["keygen", "--group", "root"], "apply to a FILE"),
    (["keygen", "--force"], "apply to a FILE"),
])
def test_bad_arguments_get_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               args: list[str], needle: str) -> None:
    args = [a.replace("KEY", str(tmp_path / "k")).replace("DIR", str(tmp_path)) for a in args]
    code, out, err = run_main(capsys, args)
    assert code == 2 and out == "" and err.startswith("mailflow: ") and err.count("\n") == 1, (code, err)
    assert needle in err and "Traceback" not in err
    assert not (tmp_path / "k").exists() and not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_group_needs_root(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Group read is allowed only on a key root owns: as another user --group would write a key
    `run` refuses, so keygen refuses first."""
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    code, _, err = run_main(capsys, ["keygen", "--group", "root", str(tmp_path / "k")])
    assert code == 2 and "owned by root" in err and not (tmp_path / "k").exists()


def test_the_installed_entry_point_writes_a_key(tmp_path: Path) -> None:
    key = tmp_path / "suppression.key"
    done = subprocess.run([sys.executable, "-m", "mailflow", "keygen", str(key)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert HEX_KEY.match(key.read_text()) and stat.S_IMODE(key.stat().st_mode) == 0o600
