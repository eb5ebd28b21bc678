"""Admin commands run as root never leave the SQLite store unusable for the service user.

A store directory owned by an unprivileged user (nobody here, mailflow in the package): root
runs `mailflow domains add` and `ratelimit reset`, then that user writes the store with the
real interpreter (setpriv), as the milter would."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailflow.cli import main
from mailflow.store import open_store

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv")
SIDE = ("", "-wal", "-shm")


@pytest.fixture
def store_dir() -> Iterator[Path]:
    """A directory nobody owns (0750), inside one everyone can cross (pytest's tmp_path is 0700)."""
    top = Path(tempfile.mkdtemp(prefix="mailflow-owner-"))
    top.chmod(0o755)
    nobody = pwd.getpwnam("nobody")
    store = top / "store"
    store.mkdir(mode=0o750)
    os.chown(store, nobody.pw_uid, nobody.pw_gid)
    (top / "mailflow.toml").write_text(f'[store]\nurl = "sqlite://{store}/state.db"\n')
    try:
        yield store
    finally:
        shutil.rmtree(top)


def as_nobody(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable, "-m",
                           "mailflow", *args], capture_output=True, text=True, timeout=60, cwd=REPO,
                          env={"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO)})


def owners(store: Path) -> dict[str, int]:
    return {suffix: (store / f"state.db{suffix}").stat().st_uid for suffix in SIDE
            if (store / f"state.db{suffix}").exists()}


def test_root_admin_commands_leave_files_the_service_user_writes(store_dir: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    config = str(store_dir.parent / "mailflow.toml")
    nobody = pwd.getpwnam("nobody").pw_uid
    main(["domains", "add", "-c", config, "shop.example", "shop.example"])  # as root: creates the store
    main(["ratelimit", "reset", "-c", config, "shop.example"])
    capsys.readouterr()
    assert owners(store_dir) == {"": nobody}  # -wal and -shm are gone once the last connection closes
    # While root holds the store open, -wal and -shm exist: SQLite gives them the database's owner.
    store = open_store(f"sqlite://{store_dir}/state.db")
    try:
        store.add_domain("shop.example", "www.shop.example")
        assert owners(store_dir) == {suffix: nobody for suffix in SIDE}
        result = as_nobody("domains", "add", "-c", config, "shop.example", "news.shop.example")  # both at once
        assert result.returncode == 0, result.stderr
    finally:
        store.close()
    result = as_nobody("domains", "list", "-c", config, "shop.example")
    assert result.returncode == 0 and "news.shop.example" in result.stdout, result.stderr
    assert all(uid == nobody for uid in owners(store_dir).values())


def test_files_an_older_root_run_left_are_given_back(store_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = str(store_dir.parent / "mailflow.toml")
    db = store_dir / "state.db"
    db.touch(mode=0o600)  # what a root run of an older mailflow left: root-owned, nobody cannot write
    assert as_nobody("domains", "add", "-c", config, "shop.example", "shop.example").returncode == 2
    main(["domains", "add", "-c", config, "shop.example", "shop.example"])
    assert db.stat().st_uid == pwd.getpwnam("nobody").pw_uid
    assert as_nobody("domains", "add", "-c", config, "shop.example", "www.shop.example").returncode == 0


def test_root_never_chowns_through_a_link_the_service_user_planted(store_dir: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """The service user owns the directory, so it can plant state.db-wal -> /etc/shadow; root's
    next admin command must not hand that file to it."""
    config = str(store_dir.parent / "mailflow.toml")
    main(["domains", "add", "-c", config, "shop.example", "shop.example"])
    victim = store_dir.parent / "victim"
    victim.write_text("root's\n")
    victim.chmod(0o600)
    for suffix in ("-wal", "-shm"):
        (store_dir / f"state.db{suffix}").symlink_to(victim)
    try:
        main(["domains", "add", "-c", config, "shop.example", "www.shop.example"])
    except SystemExit:
        pass  # SQLite may refuse the links; either way the file they name stays root's
    capsys.readouterr()
    info = victim.stat()
    assert (info.st_uid, info.st_mode & 0o777, victim.read_text()) == (0, 0o600, "root's\n")
