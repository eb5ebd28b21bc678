"""Groups the config names (milter.socket_group, store.group): check-config checks this user may
give files that group, and a store that cannot names its file and leaves none behind (review P2.5)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailflow.groups import group_problem
from tests.helpers.servers import REPO
from tests.unit.test_cli_errors import assert_one_line_exit_2, mailflow_subprocess

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run mailflow as another user")


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A directory nobody may write in (pytest's base directory is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="mailflow-groups-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path)


def as_nobody(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable,
                           "-m", "mailflow", *args], capture_output=True, text=True, timeout=30, cwd=REPO,
                          env={**os.environ, "HOME": "/nonexistent"})


def config(workdir: Path, milter: str = "", store: str = "") -> Path:
    cfg = workdir / "c.toml"
    cfg.write_text(f'[milter]\nsocket = "unix:{workdir}/m.sock"\n{milter}\n'
                   f'[store]\nurl = "sqlite://{workdir}/state.db"\n{store}\n')
    cfg.chmod(0o644)
    return cfg


def test_check_config_says_the_user_is_not_in_the_socket_group(workdir: Path) -> None:
    result = as_nobody("check-config", "-c", str(config(workdir, milter='socket_group = "root"')))
    assert_one_line_exit_2(result.returncode, result.stdout, result.stderr, "milter.socket_group",
                           "nobody is neither root nor a member of group root", "SupplementaryGroups=root")


def test_a_store_group_the_user_is_not_in_is_named_with_its_file_and_leaves_no_file(workdir: Path) -> None:
    cfg = config(workdir, store='group = "root"')
    result = as_nobody("check-config", "-c", str(cfg))
    assert_one_line_exit_2(result.returncode, result.stdout, result.stderr, "store.group:", "usermod -aG root nobody")
    result = as_nobody("domains", "list", "-c", str(cfg), "shop.example")
    assert_one_line_exit_2(result.returncode, result.stdout, result.stderr, f"{workdir}/state.db", "group root")
    assert not list(workdir.glob("state.db*"))


def test_a_missing_store_group_is_reported_under_store_group(tmp_path: Path) -> None:
    cfg = config(tmp_path, store='group = "no-such-group-x"')
    result = mailflow_subprocess("check-config", "-c", str(cfg))
    assert_one_line_exit_2(result.returncode, result.stdout, result.stderr, "store.group: sqlite: cannot give", "no group named")


def test_root_and_members_may() -> None:
    assert group_problem("root") is None and group_problem("0") is None
    assert group_problem("no-such-group-x") == "no group named 'no-such-group-x' on this host"
