"""The optional rspamd anchor: what many admins run instead, as a milter, rate limiting only.

rspamd (Debian's package) runs privately from a scratch directory: its proxy worker in milter
mode with `self_scan`, the ratelimit plugin as its only module (no rules, no other plugins), one
rate keyed like the reference milter's (the envelope sender's domain; smtp-source does not
authenticate) in the benchmark's own Redis, and its resolver pointed at a loopback DNS stub
started here, so nothing leaves the machine. Stopped by pid at the end.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.harness import children
from tests.helpers.dns_server import dns_server
from tests.helpers.servers import free_port, wait_for_port

PLUGINS = Path("/usr/share/rspamd/plugins")
START_SECONDS = 180  # the first start compiles its symbol cache (and hyperscan databases)

CONFIG = """
options {{
    pidfile = "{dir}/rspamd.pid";
    filters = "";  # no C modules (chartable, dkim, regexp, fuzzy_check)
    dns {{ nameserver = ["127.0.0.1:{dns_port}"]; timeout = 1s; retransmits = 1; }}
    local_addrs = [];  # loopback clients are rate limited like any other
    cache_file = "{dir}/symbols.cache";
    tempdir = "{dir}";
}}
logging {{ type = "file"; filename = "{dir}/rspamd.log"; level = "error"; }}
worker "rspamd_proxy" {{
    bind_socket = "127.0.0.1:{port}";
    milter = yes;
    timeout = 120s;
    upstream "local" {{ default = yes; self_scan = yes; }}
    count = 1;
}}
modules {{ path = "{plugins}/ratelimit.lua"; }}
redis {{ servers = "127.0.0.1:{redis_port}"; }}
ratelimit {{
    rates {{
        sender_domain = {{ selector = "from('smtp'):domain"; bucket = {{ burst = 100000000; rate = "100000000 / 1h"; }} }}
    }}
}}
"""


def rspamd_available() -> bool:
    return shutil.which("rspamd") is not None and (PLUGINS / "ratelimit.lua").exists()


@contextmanager
def rspamd_milter(workdir: Path, redis_port: int) -> Iterator[tuple[int, int]]:
    """(milter port, main process pid) of a private rspamd; its workers are the pid's children."""
    directory = workdir / "rspamd"
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    with dns_server() as dns:
        config = directory / "rspamd.conf"
        config.write_text(CONFIG.format(dir=directory, dns_port=dns.server_address[1], port=port,
                                        plugins=PLUGINS, redis_port=redis_port))
        log = (directory / "stdout.log").open("wb")
        # -f: stay in the foreground (our pid is the main process); -i: allow running as root.
        proc = subprocess.Popen(["rspamd", "-f", "-i", "-c", str(config)], stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            _wait_for_proxy_worker(proc, time.monotonic() + START_SECONDS)
            wait_for_port(port, proc=proc)
            yield port, proc.pid
        finally:
            _stop(proc)
            log.close()


def _wait_for_proxy_worker(proc: subprocess.Popen[bytes], deadline: float) -> None:
    """The main process binds the port before its worker exists: a client would wait in the backlog."""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"rspamd exited with {proc.returncode}; see its log in the scratch directory")
        for child in children(proc.pid):
            try:
                if b"rspamd_proxy" in Path(f"/proc/{child}/cmdline").read_bytes():
                    return
            except OSError:
                pass
        time.sleep(0.2)
    raise TimeoutError(f"rspamd's proxy worker did not start within {START_SECONDS}s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()  # the main process stops its workers
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
    try:  # whatever of its session is left (start_new_session: the group id is the main pid)
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
