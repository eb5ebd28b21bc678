"""The Debian package, end to end on this machine: `dpkg -i` of what `make deb` builds, the files,
user and modes it leaves, the milter unit's ExecStart run as `mailflow` behind the private
Postfix over the unix socket, an upgrade that keeps config, key and state, then remove and purge.

Needs root, dpkg and Postfix. The .deb is cached on a hash of its sources (scripts/build-deb.sh):
a first build takes 1-2 minutes, a cached one well under a second.
"""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.helpers import deb
from tests.helpers.postfix import PrivatePostfix

pytestmark = [pytest.mark.postfix, pytest.mark.skipif(bool(deb.usable()), reason=deb.usable() or "usable")]

CONFIG = Path("/etc/mailflow/mailflow.toml")
KEY = Path("/etc/mailflow/suppression.key")
STATE = Path("/var/lib/mailflow")
SOCKET = Path("/run/mailflow/milter.sock")
UNITS = ("mailflow.service", "mailflow-rbl.service", "mailflow-feedback.service")


def _owner(path: Path) -> tuple[str, str, int]:
    info = path.stat()
    return pwd.getpwuid(info.st_uid).pw_name, grp.getgrgid(info.st_gid).gr_name, stat.S_IMODE(info.st_mode)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_install_run_upgrade_remove_purge(tmp_path: Path) -> None:
    with deb.exclusive():
        package = deb.build()
        if deb.known():  # a leftover of an interrupted run of this test (usable() checked the marker)
            deb.purge()
        before = deb.empty_dirs()
        try:
            _install_run_upgrade_remove_purge(package, tmp_path)
        finally:
            deb.put_back(before)


def _feedback_unit_reads_the_log_through_group_adm() -> None:
    """The feedback unit's ExecStart (with --once) as `mailflow`: Debian's mail.log (root:adm
    0640) is read with the unit's SupplementaryGroups=adm, and refused without it."""
    assert "SupplementaryGroups=adm" in (deb.UNIT_DIR / "mailflow-feedback.service").read_text()
    where = Path(tempfile.mkdtemp(dir="/var/tmp"))
    try:
        where.chmod(0o755)
        maillog = where / "mail.log"
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
        maillog.write_text(
            f"{stamp} mx postfix/smtpd[1]: 4DEB1A: client=mua[198.51.100.1], sasl_method=PLAIN, "
            "sasl_username=alice@shop.example\n"
            f"{stamp} mx postfix/qmgr[2]: 4DEB1A: from=<alice@shop.example>, size=300, nrcpt=1 (queue active)\n"
            f"{stamp} mx postfix/smtp[3]: 4DEB1A: to=<bob@elsewhere.example>, "
            "relay=mx.elsewhere.example[192.0.2.7]:25, delay=1, delays=0/0/0/1, dsn=2.0.0, "
            "status=sent (250 2.0.0 Ok)\n")
        os.chown(maillog, 0, grp.getgrnam("adm").gr_gid)
        maillog.chmod(0o640)
        command = [*deb.exec_start("mailflow-feedback.service"), "--once", "--from-start", "--log", str(maillog)]
        denied = subprocess.run(["runuser", "-u", "mailflow", "--", *command], capture_output=True, text=True,
                                timeout=60)
        assert denied.returncode == 2 and "Permission denied" in denied.stderr, denied.stderr
        # As the unit runs it: User=mailflow, Group=mailflow, SupplementaryGroups=adm.
        read = subprocess.run(["runuser", "-u", "mailflow", "-g", "mailflow", "-G", "adm", "--", *command],
                              capture_output=True, text=True, timeout=60)
        assert read.returncode == 0 and "attributed=1" in read.stderr, read.stderr
    finally:
        shutil.rmtree(where)


def _install_run_upgrade_remove_purge(package: Path, tmp_path: Path) -> None:
    milter: subprocess.Popen[bytes] | None = None
    mta: PrivatePostfix | None = None
    joined = False
    try:
        deb.install(package)

        # What the install leaves.
        assert Path("/usr/bin/mailflow").resolve() == Path("/usr/lib/mailflow/bin/mailflow")
        assert pwd.getpwnam("mailflow").pw_shell in ("/usr/sbin/nologin", "/bin/false")
        assert _owner(STATE) == ("mailflow", "mailflow", 0o750)
        assert _owner(KEY) == ("root", "mailflow", 0o640)
        key = KEY.read_text()
        assert len(key) == 65 and key.endswith("\n") and all(c in "0123456789abcdef" for c in key[:64])
        assert str(CONFIG) in deb.run("dpkg-query", "-W", "-f=${Conffiles}", "mailflow").stdout
        shipped = deb.run("dpkg", "-c", str(package)).stdout
        assert ".pyc" not in shipped and "/root/.pyenv" not in Path("/usr/lib/mailflow/pyvenv.cfg").read_text()
        for unit in UNITS:
            assert (Path("/etc/systemd/system/multi-user.target.wants") / unit).is_symlink()  # enabled
            text = (deb.UNIT_DIR / unit).read_text()
            assert "/usr/local" not in text and "ProtectSystem=strict" in text and "CapabilityBoundingSet=\n" in text
        assert "ExecReload=/bin/kill -HUP $MAINPID" in (deb.UNIT_DIR / "mailflow.service").read_text()
        verify = deb.run("systemd-analyze", "verify", *(str(deb.UNIT_DIR / u) for u in UNITS))
        assert "mailflow" not in verify.stdout + verify.stderr
        checked = deb.run("runuser", "-u", "mailflow", "--", "mailflow", "check-config", "-c", str(CONFIG))
        assert "OK" in checked.stdout and "unix:/run/mailflow/milter.sock" in checked.stdout and checked.stderr == ""

        # The unit's ExecStart as the service user; Postfix reaches the socket through group mailflow.
        joined = deb.join_group("postfix", "mailflow")
        log = tmp_path / "milter.log"
        milter = deb.start_as_service("mailflow.service", log)
        deb.wait_for_path(SOCKET, milter, log)
        assert _owner(SOCKET) == ("mailflow", "mailflow", 0o660)
        mta = PrivatePostfix(f"unix:{SOCKET}").start()
        message = ("From: alice@shop.example\r\nTo: bob@elsewhere.example\r\nSubject: packaged\r\n"
                   "Message-ID: <deb-1@shop.example>\r\n\r\nthrough the installed milter\r\n")
        sent = mta.sendmail("alice@shop.example", ["bob@elsewhere.example"], message)
        assert sent.returncode == 0, sent.stderr
        assert mta.wait_delivered(1)[0]["recipients"] == ["<bob@elsewhere.example>"]
        decided = "stage=eom"  # the milter's decision line for the message, as the account it charged
        deadline = time.monotonic() + 10
        while decided not in log.read_text(errors="replace") and time.monotonic() < deadline:
            time.sleep(0.1)
        line = next((t for t in log.read_text(errors="replace").splitlines() if decided in t), "")
        assert "account=shop.example" in line and "source=local" in line, log.read_text(errors="replace")
        assert _owner(STATE / "state.db")[0] == "mailflow"

        # ExecReload (/bin/kill -HUP $MAINPID): the config is read again, mail flows on.
        reload = next(line for line in (deb.UNIT_DIR / "mailflow.service").read_text().splitlines()
                      if line.startswith("ExecReload="))
        pid = deb.main_pid(milter)
        deb.run(*reload.removeprefix("ExecReload=").replace("$MAINPID", str(pid)).split())
        deadline = time.monotonic() + 20
        while "reloaded" not in log.read_text(errors="replace") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "reloaded" in log.read_text(errors="replace") and milter.poll() is None, log.read_text(errors="replace")
        sent = mta.sendmail("alice@shop.example", ["bob@elsewhere.example"], message.replace("deb-1@", "deb-2@"))
        assert sent.returncode == 0, sent.stderr
        assert len(mta.wait_delivered(2)) == 2
        mta.stop()
        mta = None
        deb.stop(milter)
        milter = None

        _feedback_unit_reads_the_log_through_group_adm()

        # Upgrade (the same version again runs the same maintainer scripts): config, key, state kept.
        with CONFIG.open("a") as fh:
            fh.write("# edited by the admin\n")
        before = {p: _digest(p) for p in (CONFIG, KEY, STATE / "state.db")}
        deb.install(package)
        assert {p: _digest(p) for p in before} == before

        # Remove: the program goes, config, key and state stay.
        deb.run("dpkg", "-r", "mailflow")
        assert not Path("/usr/bin/mailflow").exists() and not Path("/usr/lib/mailflow").exists()
        assert CONFIG.exists() and KEY.exists() and (STATE / "state.db").exists()

        # Purge: config, key, state and the socket directory go; the user stays (Debian practice).
        deb.purge()
        assert not Path("/etc/mailflow").exists() and not STATE.exists() and not SOCKET.parent.exists()
        assert not deb.known()
        pwd.getpwnam("mailflow")
    finally:
        if mta is not None:
            mta.stop()
        if milter is not None:
            deb.stop(milter)
        if joined:
            deb.leave_group("postfix", "mailflow")
        if deb.known():  # ours: usable() skipped the test otherwise
            deb.purge()
