"""`[metrics]`: addresses are IP literals and loopback unless the admin says otherwise."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mailflow.config import ConfigError, parse_config
from tests.helpers.servers import REPO, free_port


def test_off_when_absent() -> None:
    assert parse_config({}).metrics.listen is None and parse_config({}).metrics.rbl_listen is None


def test_loopback_addresses() -> None:
    metrics = parse_config({"metrics": {"listen": "127.0.0.1:9358", "rbl_listen": "[::1]:9359"}}).metrics
    assert (metrics.listen, metrics.rbl_listen) == (("127.0.0.1", 9358), ("::1", 9359))


@pytest.mark.parametrize(("listen", "error"), [
    ("0.0.0.0:9358", "metrics.listen: '0.0.0.0:9358' is not a loopback address"),
    ("192.0.2.1:9358", "set metrics.allow_remote = true"),
    ("localhost:9358", "'localhost' is not an IP address"),
    ("::1:9358", 'put an IPv6 address in brackets, like "[::1]:9358"'),
    ("127.0.0.1:0", "is not HOST:PORT"),
    ("127.0.0.1:65536", "is not HOST:PORT"),
    ("127.0.0.1", "is not HOST:PORT"),
])
def test_bad_addresses_are_config_errors(listen: str, error: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config({"metrics": {"listen": listen}})
    assert error in str(raised.value)


def test_remote_needs_allow_remote_and_ports_differ() -> None:
    metrics = parse_config({"metrics": {"listen": "0.0.0.0:9358", "allow_remote": True}}).metrics
    assert metrics.listen == ("0.0.0.0", 9358)
    with pytest.raises(ConfigError, match="each need a port of their own"):
        parse_config({"metrics": {"listen": "127.0.0.1:9358", "rbl_listen": "127.0.0.1:9358"}})
    with pytest.raises(ConfigError, match="metrics.listn"):
        parse_config({"metrics": {"listn": "127.0.0.1:9358"}})


def test_run_refuses_a_metrics_port_in_use_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        cfg = tmp_path / "m.toml"
        cfg.write_text(f'[milter]\nsocket = "inet:{free_port()}@127.0.0.1"\n[store]\nurl = "sqlite://{tmp_path}/s.db"\n'
                       f'[metrics]\nlisten = "127.0.0.1:{port}"\n')
        run = subprocess.run([sys.executable, "-m", "mailflow", "run", "-c", str(cfg)], capture_output=True, text=True,
                             timeout=30, cwd=REPO)
    assert run.returncode == 2
    assert run.stderr.splitlines()[-1] == (f"mailflow: cannot listen for metrics on 127.0.0.1:{port}: Address already "
                                           "in use (in use, or no permission?)")
    assert "Traceback" not in run.stderr


def test_metrics_silence_the_on_error_accept_warning() -> None:
    from mailflow.config import config_warnings

    unwatched = config_warnings(parse_config({"milter": {"on_error": "accept"}}))
    assert unwatched and "no metrics to alert on ([metrics] listen)" in unwatched[0]
    assert config_warnings(parse_config({"milter": {"on_error": "accept"}, "metrics": {"listen": "127.0.0.1:9358"}})) == []
