"""The Debian package on this machine: build it (cached by `scripts/build-deb.sh` on a hash of its
sources), install, remove and purge it, and run a unit's ExecStart as its user without systemd.

The test owns the package only when it installed it: a marker file in /etc/mailflow says so, and
a leftover of an interrupted run is purged before the next one. A mailflow package installed by
anyone else is never touched (the test is skipped).
"""

from __future__ import annotations

import fcntl
import grp
import os
import shlex
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = "mailflow"
MARKER = Path("/etc/mailflow/.installed-by-mailflow-tests")
UNIT_DIR = Path("/lib/systemd/system")
PACKAGE_DIRS = (Path("/etc/mailflow"), Path("/var/lib/mailflow"))


def usable() -> str:
    """Why this machine cannot run the package test, or "" when it can."""
    if os.geteuid() != 0:
        return "installs a Debian package: needs root"
    for tool in ("dpkg", "runuser", "systemd-analyze", "postfix"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if known() and not MARKER.exists():
        return "a mailflow package not installed by the tests is on this host: left alone"
    if not known():
        for path in PACKAGE_DIRS:
            if path.is_dir() and any(path.iterdir()):
                return f"{path} holds files no test made (purge would remove them): left alone"
    return ""


def empty_dirs() -> list[tuple[Path, int, int, int]]:
    """The package's directories that exist, empty, before the test (a host may keep an empty
    /var/lib/mailflow for `check-config`): purge removes them, so the test puts them back."""
    return [(p, p.stat().st_uid, p.stat().st_gid, stat.S_IMODE(p.stat().st_mode)) for p in PACKAGE_DIRS if p.is_dir()]


def put_back(dirs: list[tuple[Path, int, int, int]]) -> None:
    for path, uid, gid, mode in dirs:
        path.mkdir(exist_ok=True)
        os.chown(path, uid, gid)
        path.chmod(mode)


@contextmanager
def exclusive(timeout: float = 600) -> Iterator[None]:
    """One package test at a time on this host (they share dpkg, /etc/mailflow and the user)."""
    with open("/run/lock/mailflow-deb-test.lock", "w") as lock:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError("another package test holds /run/lock/mailflow-deb-test.lock") from None
                time.sleep(1)
        yield


def run(*cmd: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"{shlex.join(cmd)} exited {result.returncode}:\n{result.stdout}{result.stderr}")
    return result


def build() -> Path:
    """dist/mailflow_*.deb for the sources as they are; rebuilt only when they changed."""
    run(str(REPO / "scripts" / "build-deb.sh"), timeout=900)
    debs = sorted((REPO / "dist").glob(f"{PACKAGE}_*.deb"), key=lambda p: p.stat().st_mtime)
    assert debs, "scripts/build-deb.sh made no .deb"
    return debs[-1]


def _status() -> str:
    """dpkg's two-letter state of the package ("ii" installed, "rc" conffiles left, "un" unknown)."""
    result = subprocess.run(["dpkg-query", "-W", "-f=${db:Status-Abbrev}", PACKAGE], capture_output=True, text=True)
    return result.stdout[:2] if result.returncode == 0 else "un"


def installed() -> bool:
    """Its files are on disk (installed, unpacked or half-configured)."""
    return _status()[1] not in "nc"


def known() -> bool:
    """Any trace in dpkg's database, conffiles of a removed package included."""
    return _status()[1] != "n"


def install(deb: Path) -> None:
    run("dpkg", "-i", str(deb))
    MARKER.write_text("installed by tests/e2e/test_deb.py; purged by it\n")


def purge() -> None:
    MARKER.unlink(missing_ok=True)
    run("dpkg", "--purge", PACKAGE)


def exec_start(unit: str) -> list[str]:
    """The unit's ExecStart command line, as systemd would run it (no specifiers used there)."""
    for line in (UNIT_DIR / unit).read_text().splitlines():
        if line.startswith("ExecStart="):
            return shlex.split(line.removeprefix("ExecStart=").lstrip("-+!@"))
    raise AssertionError(f"{unit} has no ExecStart")


def start_as_service(unit: str, log: Path) -> subprocess.Popen[bytes]:
    """ExecStart run as the unit's User= with runuser (no systemd as PID 1 here)."""
    with open(log, "wb") as out:
        return subprocess.Popen(["runuser", "-u", PACKAGE, "--", *exec_start(unit)], stdout=out, stderr=subprocess.STDOUT)


def main_pid(proc: subprocess.Popen[bytes]) -> int:
    """What systemd would call $MAINPID: the command runuser started (its child, or itself)."""
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == proc.pid:
            return int(stat_file.parent.name)
    return proc.pid


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def wait_for_path(path: Path, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return
        if proc.poll() is not None:
            raise AssertionError(f"the milter exited {proc.returncode}:\n{log.read_text(errors='replace')}")
        time.sleep(0.1)
    raise AssertionError(f"{path} did not appear within {timeout} s:\n{log.read_text(errors='replace')}")


def join_group(user: str, group: str) -> bool:
    """Add user to group; True when this call added it (so the caller takes it out again)."""
    if user in grp.getgrnam(group).gr_mem:
        return False
    run("usermod", "-aG", group, user)
    return True


def leave_group(user: str, group: str) -> None:
    subprocess.run(["gpasswd", "-d", user, group], capture_output=True, timeout=30)
