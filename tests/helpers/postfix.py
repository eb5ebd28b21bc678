"""A private Postfix instance for end-to-end tests: its own config, queue and data directories,
one smtpd on a loopback port, relaying everything to an smtp-sink that dumps each message.

Facts it relies on (Debian 12, Postfix 3.7): `-c DIR` on every command moves the instance;
queue_directory must be root-owned and data_directory postfix-owned, with every parent searchable
by postfix; Postfix logs to `maillog_file` through the postlog service, not syslog.
"""

from __future__ import annotations

import os
import re
import shutil
import smtplib
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.helpers.servers import MilterProcess, free_port, wait_for_port
from tests.helpers.smtp_sink import refusing_sink

_MASTER_CF = """\
{smtp_listen} inet n - n - - smtpd
pickup    unix  n - n 60   1 pickup
cleanup   unix  n - n -    0 cleanup
qmgr      unix  n - n 300  1 qmgr
rewrite   unix  - - n -    - trivial-rewrite
bounce    unix  - - n -    0 bounce
defer     unix  - - n -    0 bounce
trace     unix  - - n -    0 bounce
verify    unix  - - n -    1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n -    - proxymap
smtp      unix  - - n -    - smtp
relay     unix  - - n -    - smtp
showq     unix  n - n -    - showq
error     unix  - - n -    - error
retry     unix  - - n -    - error
discard   unix  - - n -    - discard
local     unix  - n n -    - local
anvil     unix  - - n -    1 anvil
scache    unix  - - n -    1 scache
postlog   unix-dgram n - n - 1 postlogd
"""


def available() -> bool:
    return os.geteuid() == 0 and shutil.which("postfix") is not None and shutil.which("smtp-sink") is not None


class PrivatePostfix:
    def __init__(self, milter_port: int | str | None, sasl_users: dict[str, str] | None = None,
                 sink_dump: bool = True, refusing: Mapping[str, str] | None = None) -> None:
        # pytest's tmp dirs are 0700; Postfix's own users must be able to search every parent.
        self.dir = Path(tempfile.mkdtemp(prefix="mailflow-postfix-"))
        self.dir.chmod(0o755)
        self.etc, self.queue, self.data, self.sink_dir = (self.dir / n for n in ("etc", "queue", "data", "sink"))
        self.port, self.sink_port = free_port(), free_port()
        self.milter_port = milter_port
        self.sasl_users = sasl_users or {}
        self.sink_dump = sink_dump  # benchmarks count instead of writing a file per message
        self.sink: subprocess.Popen[bytes] | None = None
        # Recipient domain -> the reply an smtp-sink of its own refuses every RCPT with (transport_maps).
        self.refusing = {domain: (reply, free_port()) for domain, reply in (refusing or {}).items()}
        self.refusers: list[subprocess.Popen[bytes]] = []

    # -- life cycle ----------------------------------------------------------------------

    def start(self) -> PrivatePostfix:
        for d in (self.etc, self.queue, self.data, self.sink_dir, self.etc / "sasl"):
            d.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.data, "postfix", "postfix")
        shutil.chown(self.sink_dir, "postfix", "postfix")
        # texthash: read as it is, no postmap; the rest goes to relayhost (the accepting sink).
        (self.etc / "transport").write_text("".join(f"{domain} smtp:[127.0.0.1]:{port}\n"
                                                    for domain, (_, port) in self.refusing.items()))
        (self.etc / "main.cf").write_text(self._main_cf())
        (self.etc / "master.cf").write_text(_MASTER_CF.format(smtp_listen=f"127.0.0.1:{self.port}"))
        self._sasl()
        dump = ["-d", f"{self.sink_dir}/%Y%m%d%H%M%S."] if self.sink_dump else ["-c"]
        with open(self.dir / "sink.out", "wb") as out:  # -c writes its running count here
            self.sink = subprocess.Popen(["smtp-sink", "-u", "postfix", *dump, f"127.0.0.1:{self.sink_port}", "256"],
                                         stdout=out, stderr=subprocess.DEVNULL)
        self.refusers = [refusing_sink(port, reply) for reply, port in self.refusing.values()]
        self._postfix("check")
        self._postfix("start")
        try:
            wait_for_port(self.port, timeout=20)
            wait_for_port(self.sink_port, timeout=5)
            for _, port in self.refusing.values():
                wait_for_port(port, timeout=5)
        except Exception:
            raise RuntimeError(f"private postfix did not start:\n{self.maillog()}") from None
        return self

    def stop(self) -> None:
        subprocess.run(["postfix", "-c", str(self.etc), "stop"], capture_output=True, timeout=30)
        for sink in [self.sink, *self.refusers]:
            if sink and sink.poll() is None:
                sink.kill()
                sink.wait(timeout=5)
        # master may take a moment to go; then nothing of this instance is left.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (self.data / "master.lock").exists() and self._master_running():
            time.sleep(0.2)
        shutil.rmtree(self.dir, ignore_errors=True)

    def _master_running(self) -> bool:
        return subprocess.run(["postfix", "-c", str(self.etc), "status"], capture_output=True).returncode == 0

    def _postfix(self, *args: str) -> None:
        result = subprocess.run(["postfix", "-c", str(self.etc), *args], capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"postfix {' '.join(args)} failed: {result.stderr}\n{self.maillog()}")

    def _main_cf(self) -> str:
        # A port on loopback, or Postfix's own spelling of a socket (unix:/run/mailflow/milter.sock).
        milter = f"inet:127.0.0.1:{self.milter_port}" if isinstance(self.milter_port, int) else self.milter_port or ""
        return f"""\
compatibility_level = 3.6
queue_directory = {self.queue}
data_directory = {self.data}
myhostname = mta.test
mydomain = mta.test
myorigin = $myhostname
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8, 192.0.2.0/28
# Tests play a client on another network (192.0.2.0/28) with XCLIENT (they talk only to 127.0.0.1).
smtpd_authorized_xclient_hosts = 127.0.0.1
relayhost = [127.0.0.1]:{self.sink_port}
transport_maps = texthash:{self.etc}/transport
smtp_tls_security_level = none
smtpd_tls_security_level = none
smtpd_relay_restrictions = permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = cyrus
smtpd_sasl_path = smtpd
cyrus_sasl_config_path = {self.etc}/sasl
smtpd_sasl_security_options = noanonymous
smtpd_milters = {milter}
non_smtpd_milters = {milter}
milter_protocol = 6
milter_default_action = tempfail
milter_connect_macros = j {{daemon_name}} v {{client_addr}}
milter_mail_macros = i {{auth_type}} {{auth_authen}} {{auth_author}} {{mail_addr}}
maillog_file = {self.dir}/maillog
maillog_file_prefixes = {self.dir}
maillog_file_compressor = true
maillog_file_rotate_suffix = %Y%m%d-%H%M%S
biff = no
# Do not add missing From:/Date: for SMTP clients on this host: the milter must see what they sent.
local_header_rewrite_clients =
smtputf8_enable = yes
delay_warning_time = 0
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
"""

    def _sasl(self) -> None:
        db = self.etc / "sasl" / "sasldb2"
        (self.etc / "sasl" / "smtpd.conf").write_text(
            f"pwcheck_method: auxprop\nauxprop_plugin: sasldb\nsasldb_path: {db}\nmech_list: PLAIN LOGIN\n"
        )
        for login, password in self.sasl_users.items():
            user, _, realm = login.partition("@")
            subprocess.run(["saslpasswd2", "-c", "-p", "-f", str(db), "-u", realm, user],
                           input=password.encode(), check=True, timeout=30)
        if db.exists():
            shutil.chown(db, "postfix", "postfix")

    # -- using it ------------------------------------------------------------------------

    def smtp(self, source_address: str | None = None) -> smtplib.SMTP:
        return smtplib.SMTP("127.0.0.1", self.port, source_address=(source_address, 0) if source_address else None,
                            timeout=30)

    def smtp_as(self, address: str, name: str) -> smtplib.SMTP:
        """A session Postfix (and so the milter) sees as coming from `address` (XCLIENT)."""
        smtp = self.smtp()
        smtp.ehlo()
        code, reply = smtp.docmd("XCLIENT", f"ADDR={address} NAME={name}")
        if code != 220:
            raise RuntimeError(f"XCLIENT refused: {code} {reply!r}")
        smtp.ehlo()
        return smtp

    def sendmail(self, sender: str, recipients: list[str], message: str) -> subprocess.CompletedProcess[bytes]:
        """Local submission, as PHP mail() or cron would do it (goes through non_smtpd_milters)."""
        return subprocess.run(["sendmail", "-C", str(self.etc), "-f", sender, *recipients],
                              input=message.encode(), capture_output=True, timeout=30)

    def maildrop(self) -> list[Path]:
        return [p for p in (self.queue / "maildrop").glob("*") if p.is_file()]

    def hold(self) -> list[Path]:
        return [p for p in (self.queue / "hold").rglob("*") if p.is_file()]

    def delivered(self) -> list[dict[str, object]]:
        """Messages the sink received: sender and recipients from its dump files."""
        return [{"sender": sender, "recipients": list(recipients), "text": text}
                for sender, recipients, text in sink_messages(self.sink_dir)]

    def wait_delivered(self, count: int, timeout: float = 20) -> list[dict[str, object]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.delivered()
            if len(got) >= count:
                return got
            time.sleep(0.2)
        raise TimeoutError(f"sink got {len(self.delivered())} of {count} messages\n{self.maillog()[-3000:]}")

    def sink_count(self) -> int:
        """Messages the sink received, from its -c running counter (sink_dump=False)."""
        text = (self.dir / "sink.out").read_bytes().decode(errors="replace")
        counts = re.findall(r"mesg=(\d+)", text)
        return int(counts[-1]) if counts else 0

    @property
    def maillog_path(self) -> Path:
        """Postfix's own log (maillog_file): what `mailflow feedback follow --log` reads."""
        return self.dir / "maillog"

    def maillog(self) -> str:
        path = self.maillog_path
        return path.read_text(errors="replace") if path.exists() else ""

    def logrotate(self) -> None:
        """Rotate the log the way Postfix does it (`postfix logrotate`: rename to maillog.SUFFIX,
        reopen; the compressor is `true`, so the follower can read what was left behind)."""
        self._postfix("logrotate")

    def flush_queue(self) -> None:
        """Retry the deferred mail now (postqueue -f)."""
        subprocess.run(["postqueue", "-c", str(self.etc), "-f"], capture_output=True, timeout=30)



def sink_messages(directory: Path) -> list[tuple[str, tuple[str, ...], str]]:
    """(sender, recipients, text) of each message smtp-sink dumped into `directory`, from its
    X-Mail-Args and X-Rcpt-Args lines; a file the sink is still writing (its envelope lines not yet
    ended by a blank line) is not a message yet."""
    out = []
    for path in sorted(directory.glob("*")):
        text = path.read_text(errors="replace")
        sender, recipients, complete = "", [], False
        for line in text.splitlines():
            if line.startswith("X-Mail-Args: "):
                sender = line.split(" ", 1)[1].split()[0]
            elif line.startswith("X-Rcpt-Args: "):
                recipients.append(line.split(" ", 1)[1].split()[0])
            elif not line.strip():
                complete = True
                break
        if complete:
            out.append((sender, tuple(recipients), text))
    return out


def empty_store_url(backend: str, workdir: Path, request: pytest.FixtureRequest) -> str:
    """An empty store for one rig: a new SQLite file in `workdir`, or the session's Redis
    (tests/conftest.py's redis_instance) flushed of what earlier test modules left in it."""
    if backend == "sqlite":
        return f"sqlite://{workdir}/state.db"
    url: str = request.getfixturevalue("redis_instance")[0]
    redis.Redis.from_url(url).flushall()
    return url


@contextmanager
def running_rig(workdir: Path, milter_config: dict[str, Any],
                sasl_users: dict[str, str]) -> Iterator[tuple[PrivatePostfix, MilterProcess]]:
    """A milter with `milter_config` and a private Postfix using it; both stopped afterwards."""
    milter = MilterProcess(workdir, milter_config).start()
    try:
        mta = PrivatePostfix(milter.port, sasl_users=sasl_users).start()
        try:
            yield mta, milter
        finally:
            mta.stop()
    finally:
        milter.stop()


def wait_for(predicate: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise TimeoutError("condition not met")
