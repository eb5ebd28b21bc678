"""A real Sendmail 8.17 for end-to-end tests, from Debian 12's packages unpacked, not installed
(sendmail-bin conflicts with the postfix package): one MTA with two loopback listeners (MTA-v4,
and the MSP's as conf/sendmail.mc names it, `{daemon_name}`), mailflow as its milter, SMTP AUTH
from a private sasldb, every message relayed to Postfix's smtp-sink; and the MSP (submit.cf) run
as a Unix user. The project's conf/sendmail.mc and conf/submit.mc go into the two .mc files as
shipped, only their ports moved, so these tests also prove what the README tells admins to add.

Facts it relies on (this machine kind): there is no /dev/log and the host name is unqualified, so
a small LD_PRELOAD shim (tests/fixtures/sendmail/shim.c) writes syslog(3) to a file and answers
gethostname() with a qualified name; the unpacked binary has lost its setgid bit, or the loader
would ignore LD_PRELOAD. Cyrus SASL reads Sendmail.conf only from /usr/lib/sasl2, so the daemon
runs in a private mount namespace where a directory of ours is bind-mounted there.
"""

from __future__ import annotations

import re
import shutil
import smtplib
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from tests.helpers.postfix import sink_messages
from tests.helpers.servers import REPO, free_port, wait_for_port

FIXTURES = REPO / "tests" / "fixtures" / "sendmail"
PACKAGES = REPO / "var" / "sendmail-root"
HOSTNAME = "mx1.provider.example"
SASL_DIR = Path("/usr/lib/sasl2")  # the only place Cyrus SASL looks for Sendmail.conf


def unpack_packages() -> str | None:
    """Fetch and unpack Debian's Sendmail packages (idempotent); None, or why they are missing."""
    result = subprocess.run([str(REPO / "scripts" / "sendmail-debs.sh")], capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        return result.stderr.strip() or f"scripts/sendmail-debs.sh exited {result.returncode}"
    return None


def fill(template: str, **fields: object) -> str:
    """The template with every @NAME@ replaced; a field left over is a bug in the caller."""
    for name, value in fields.items():
        template = template.replace(f"@{name}@", str(value))
    leftover = re.findall(r"@[A-Z_]+@", template)
    if leftover:
        raise ValueError(f"unfilled template fields: {leftover}")
    return template


@dataclass(frozen=True)
class Delivered:
    sender: str  # as smtp-sink saw it: "<a@b.example>", "<>" for a bounce
    recipients: tuple[str, ...]  # "<c@d.example>", ...
    text: str

    def to(self, address: str) -> bool:
        return f"<{address}>" in self.recipients


def _substitute(path: str, pattern: str, replacement: str, what: str) -> str:
    """The project's file with its one `pattern` (what it is: `what`) replaced."""
    text, count = re.subn(pattern, replacement, (REPO / path).read_text())
    if count != 1:
        raise ValueError(f"{path}: expected one {what}, found {count}")
    return text


def shipped_sendmail_mc(milter_port: int, msp_port: int) -> str:
    """conf/sendmail.mc, as an admin adds it to the MTA's sendmail.mc: its milter socket and its
    one listener (the MSP's) moved to the rig's ports; everything else as shipped."""
    text = _substitute("conf/sendmail.mc", r"S=inet:\d+@127\.0\.0\.1", f"S=inet:{milter_port}@127.0.0.1",
                       "S=inet:PORT@127.0.0.1 milter socket")
    text, count = re.subn(r"^(DAEMON_OPTIONS\(.*)\bPort=\d+", rf"\g<1>Port={msp_port}", text, flags=re.MULTILINE)
    if count != 1:
        raise ValueError(f"conf/sendmail.mc: expected one DAEMON_OPTIONS(... Port=N ...) line, found {count}")
    return text


def shipped_msp_listener() -> str:
    """The Name= of conf/sendmail.mc's MSP listener: what [accounts] msp_daemons must list."""
    names = re.findall(r"^DAEMON_OPTIONS\(.*\bName=([\w.-]+)", (REPO / "conf/sendmail.mc").read_text(), re.MULTILINE)
    if len(names) != 1:
        raise ValueError(f"conf/sendmail.mc: expected one DAEMON_OPTIONS(... Name=N ...) line, found {names}")
    return str(names[0])


def shipped_submit_mc(msp_port: int) -> str:
    """conf/submit.mc, as an admin puts it in submit.mc: relaying to the rig's MSP listener."""
    return _substitute("conf/submit.mc", r"TCP \$h \d+", f"TCP $h {msp_port}", "`TCP $h PORT' relay argument")


class Sink:
    """Postfix's smtp-sink on a loopback port, dumping each message into its own file."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Sink:
        self.dir.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.dir, "postfix", "postfix")
        self.proc = subprocess.Popen(["smtp-sink", "-u", "postfix", "-d", f"{self.dir}/%Y%m%d%H%M%S.",
                                      f"127.0.0.1:{self.port}", "64"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, timeout=5, proc=self.proc)
        return self

    def stop(self) -> None:
        stop_process(self.proc)

    def messages(self) -> list[Delivered]:
        """Each message received, from smtp-sink's dump files (X-Mail-Args, X-Rcpt-Args lines)."""
        return [Delivered(*message) for message in sink_messages(self.dir)]


def stop_process(proc: subprocess.Popen[bytes] | None, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds: by pid, never by name."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


class PrivateSendmail:
    """The MTA (and MSP configuration) in a private directory; stopped and removed by stop()."""

    def __init__(self, milter_port: int, sasl_users: dict[str, str] | None = None,
                 msp_user: str = "www-data", debug: str = "") -> None:
        # Readable by the MSP's Unix user (pytest's tmp dirs are 0700).
        self.dir = Path(tempfile.mkdtemp(prefix="mailflow-sendmail-"))
        self.dir.chmod(0o755)
        self.milter_port = milter_port
        self.sasl_users = sasl_users or {}
        self.msp_user = msp_user
        self.debug = debug  # e.g. "64.20": Sendmail's milter debugging, into self.dir/"stdout"
        self.port, self.msp_port = free_port(), free_port()
        self.sink = Sink(self.dir / "sink")
        self.log_path = self.dir / "maillog"
        self.proc: subprocess.Popen[bytes] | None = None

    # -- life cycle ----------------------------------------------------------------------

    def start(self) -> PrivateSendmail:
        try:
            self._prepare()
            self.sink.start()
            self._start_mta()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        stop_process(self.proc)
        self.sink.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _prepare(self) -> None:
        bin_dir, lib_dir = self.dir / "bin", self.dir / "lib"
        for d in (bin_dir, lib_dir, self.dir / "mqueue", self.dir / "sasl", self.dir / "clientmqueue"):
            d.mkdir()
        (self.dir / "mqueue").chmod(0o700)
        # Private copies every user can run: the MSP runs as msp_user, whatever the repo's modes.
        shutil.copy(PACKAGES / "usr/libexec/sendmail/sendmail", bin_dir / "sendmail")
        for lib in (PACKAGES / "usr/lib/x86_64-linux-gnu").glob("libwrap.so.0*"):
            shutil.copy(lib, lib_dir / lib.name)
        subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", str(lib_dir / "shim.so"), str(FIXTURES / "shim.c"),
                        "-ldl"], check=True, capture_output=True, timeout=60)
        self.log_path.touch(mode=0o666)
        self.log_path.chmod(0o666)  # both the MTA (root) and the MSP (msp_user) append to it
        (self.dir / "helpfile").touch()
        (self.dir / "service.switch").write_text("hosts files\naliases files\n")
        (self.dir / "hosts").write_text(f"127.0.0.1 {HOSTNAME} localhost\n")
        fields = dict(DIR=self.dir, HOSTNAME=HOSTNAME, MTA_PORT=self.port, MSP_PORT=self.msp_port,
                      SINK_PORT=self.sink.port, USER=self.msp_user,
                      SENDMAIL_MC=shipped_sendmail_mc(self.milter_port, self.msp_port),
                      SUBMIT_MC=shipped_submit_mc(self.msp_port))
        self._build_cf("mta", **fields)
        self._build_cf("submit", **fields)
        clientmqueue = self.dir / "clientmqueue"
        shutil.chown(clientmqueue, self.msp_user, self.msp_user)
        clientmqueue.chmod(0o770)
        self._sasl()

    def _build_cf(self, name: str, **fields: object) -> None:
        mc = self.dir / f"{name}.mc"
        mc.write_text(fill((FIXTURES / f"{name}.mc").read_text(), **fields))
        cf_dir = PACKAGES / "usr/share/sendmail/cf"
        result = subprocess.run([str(PACKAGES / "usr/bin/m4"), f"-D_CF_DIR_={cf_dir}/", str(cf_dir / "m4/cf.m4"), str(mc)],
                                capture_output=True, text=True, timeout=30)
        if result.returncode != 0 or "ERROR" in result.stderr:
            raise RuntimeError(f"m4 {name}.mc failed: {result.stderr}")
        (self.dir / f"{name}.cf").write_text(result.stdout)

    def _sasl(self) -> None:
        sasl = self.dir / "sasl"
        db = SASL_DIR / "sasldb2"  # the path Sendmail sees inside its mount namespace
        (sasl / "Sendmail.conf").write_text(
            f"pwcheck_method: auxprop\nauxprop_plugin: sasldb\nsasldb_path: {db}\nmech_list: PLAIN LOGIN CRAM-MD5\n"
        )
        for login, password in self.sasl_users.items():
            user, _, realm = login.partition("@")
            subprocess.run(["saslpasswd2", "-c", "-p", "-f", str(sasl / "sasldb2"), "-u", realm, user],
                           input=password.encode(), check=True, capture_output=True, timeout=30)

    def env(self) -> dict[str, str]:
        return {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "LD_LIBRARY_PATH": str(self.dir / "lib"),
            "LD_PRELOAD": str(self.dir / "lib" / "shim.so"),
            "SM_SHIM_LOG": str(self.log_path),
            "SM_SHIM_HOSTNAME": HOSTNAME,
        }

    def _start_mta(self) -> None:
        # -bD: the daemon in the foreground, so this pid is Sendmail's own and stop() reaches it.
        # unshare and sh exec into it; the namespace (and its bind mount) goes with it.
        command = [str(self.dir / "bin" / "sendmail"), "-C", str(self.dir / "mta.cf"), "-bD"]
        if self.debug:
            command.append(f"-d{self.debug}")
        with open(self.dir / "stdout", "wb") as out:
            self.proc = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                 'mount --bind "$0" "$1" && shift && exec "$@"', str(self.dir / "sasl"), str(SASL_DIR), *command],
                env=self.env(), stdout=out, stderr=subprocess.STDOUT,
            )
        try:
            wait_for_port(self.port, timeout=20, proc=self.proc)
            wait_for_port(self.msp_port, timeout=5, proc=self.proc)
        except Exception as exc:
            raise RuntimeError(f"sendmail did not start ({exc}):\n{self.output()}\n{self.log()}") from None

    # -- using it ------------------------------------------------------------------------

    def smtp(self, port: int | None = None) -> smtplib.SMTP:
        return smtplib.SMTP("127.0.0.1", port or self.port, local_hostname="client.test", timeout=60)

    def submit(self, message: str, *args: str, user: str | None = None) -> subprocess.CompletedProcess[bytes]:
        """The MSP, as PHP's mail() runs it (`sendmail -t -i`), as a Unix user (msp_user)."""
        user = user or self.msp_user
        command = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups",
                   str(self.dir / "bin" / "sendmail"), "-C", str(self.dir / "submit.cf"), "-i", "-t", *args]
        return subprocess.run(command, input=message.encode(), env=self.env(), capture_output=True, timeout=60,
                              cwd=self.dir)

    def bs(self, commands: list[str], timeout: float = 30, user: str | None = None) -> list[str]:
        """`sendmail -bs` as root with the MTA's configuration, or with `user` as that Unix user
        through the MSP (Symfony Mailer's default): SMTP on stdin/stdout. Each command is sent
        after the previous reply (a DATA body as one command ending in `.`); returns every reply
        (the greeting first). Killed after `timeout` seconds, which ends every read."""
        as_user = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"] if user else []
        config = self.dir / ("submit.cf" if user else "mta.cf")
        proc = subprocess.Popen([*as_user, str(self.dir / "bin" / "sendmail"), "-C", str(config), "-bs"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                env=self.env(), cwd=self.dir)
        assert proc.stdin is not None and proc.stdout is not None
        replies = []
        watchdog = threading.Timer(timeout, proc.kill)
        watchdog.start()
        try:
            replies.append(_read_reply(proc.stdout))
            for command in commands:
                proc.stdin.write(command.encode() + b"\r\n")
                proc.stdin.flush()
                replies.append(_read_reply(proc.stdout))
        finally:
            proc.stdin.close()
            proc.stdout.close()
            proc.wait()  # the watchdog bounds this too
            watchdog.cancel()
        return replies

    def delivered(self) -> list[Delivered]:
        return self.sink.messages()

    def wait_delivered(self, wanted: Callable[[Delivered], bool], count: int = 1, timeout: float = 10) -> list[Delivered]:
        """The messages at the sink that are `wanted`, once there are `count` of them."""
        deadline = time.monotonic() + timeout
        while True:
            got = [m for m in self.delivered() if wanted(m)]
            if len(got) >= count or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        if len(got) < count:
            raise TimeoutError(f"sink got {len(got)} of {count} matching messages\n{self.log()[-4000:]}")
        return got

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def output(self) -> str:
        path = self.dir / "stdout"
        return path.read_text(errors="replace") if path.exists() else ""


def _read_reply(stream: IO[bytes]) -> str:
    """One SMTP reply (all its lines), from a binary stream; '' at end of file."""
    lines = []
    for _ in range(100):  # bounded: no reply of ours has more lines
        line = stream.readline(4096).decode(errors="replace")
        lines.append(line.rstrip("\r\n"))
        if not line or line[3:4] != "-":
            break
    return "\n".join(lines)
