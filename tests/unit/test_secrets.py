"""Files and secrets (issue 13, finding 7): the key file's mode, the suppression key's fingerprint
in the store, the unix milter socket's mode and group, and masked store passwords."""

from __future__ import annotations

import grp
import os
import socket
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from mailflow.cli import main
from mailflow.config import ConfigError, load_config
from mailflow.suppression.keys import FINGERPRINT_STATE, fingerprint
from mailflow.urls import redact_text, redact_url, store_url_problem
from tests.helpers.servers import REPO

KEY_A = "first-suppression-key-0123456789"
KEY_B = "second-suppression-key-987654321"


def _key_config(tmp_path: Path, mode: int) -> Path:
    key = tmp_path / "suppression.key"
    key.write_text(KEY_A + "\n")
    key.chmod(mode)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[store]\nurl = "sqlite://{tmp_path}/s.db"\n[suppression]\nhash_key_file = "suppression.key"\n')
    return cfg


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o400, 0o440])
def test_a_key_file_only_owner_and_group_can_read_is_accepted(tmp_path: Path, mode: int) -> None:
    assert load_config(str(_key_config(tmp_path, mode))).suppression.secret == KEY_A.encode()


@pytest.mark.parametrize(("mode", "why"), [
    (0o644, "readable by others"), (0o604, "readable by others"), (0o602, "writable by others"),
    (0o601, "executable by others"), (0o620, "writable by group"), (0o660, "writable by group"),
    (0o666, "readable by others, writable by others, writable by group"),
])
def test_a_key_file_others_can_reach_or_the_group_can_change_is_refused(tmp_path: Path, mode: int, why: str) -> None:
    cfg = _key_config(tmp_path, mode)
    with pytest.raises(ConfigError) as info:
        load_config(str(cfg))
    assert str(info.value) == (f"{cfg}: suppression.hash_key_file: suppression key {tmp_path}/suppression.key is mode "
                               f"{mode:04o}: {why}; chmod 0640 (root:mailflow) or 0600")


def test_a_key_file_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "suppression.key").mkdir(mode=0o700)
    cfg = tmp_path / "c.toml"
    cfg.write_text('[suppression]\nhash_key_file = "suppression.key"\n')
    with pytest.raises(ConfigError, match="is not a regular file"):
        load_config(str(cfg))


# -- the key's fingerprint -----------------------------------------------------------------


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def _store_config(tmp_path: Path, store_url: str) -> str:
    cfg = tmp_path / "keyed.toml"
    cfg.write_text(f'[store]\nurl = "{store_url}"\n[suppression]\nhash_key_env = "MAILFLOW_SUPPRESSION_KEY"\n')
    return str(cfg)


def test_the_store_refuses_lists_under_another_key(tmp_path: Path, store_url: str, capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _store_config(tmp_path, store_url)
    monkeypatch.setenv("MAILFLOW_SUPPRESSION_KEY", KEY_A)
    assert _cli(capsys, "suppress", "add", "-c", cfg, "a@x.example")[0] == 0
    monkeypatch.setenv("MAILFLOW_SUPPRESSION_KEY", KEY_B)
    for args in (["check", "a@x.example"], ["add", "b@x.example"], ["list"], ["export"], ["remove", "a@x.example"]):
        code, out, err = _cli(capsys, "suppress", args[0], "-c", cfg, *args[1:])
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
        assert (f"the suppression key differs from the one this store's lists were made with (fingerprint "
                f"{fingerprint(KEY_B.encode())[:12]} vs {fingerprint(KEY_A.encode())[:12]}); restore the old key") in err
    monkeypatch.setenv("MAILFLOW_SUPPRESSION_KEY", KEY_A)
    code, out, _ = _cli(capsys, "suppress", "check", "-c", cfg, "a@x.example")
    assert code == 0 and "suppressed by a@x.example" in out


def test_an_empty_store_adopts_the_first_key(tmp_path: Path, store_url: str, capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _store_config(tmp_path, store_url)
    monkeypatch.setenv("MAILFLOW_SUPPRESSION_KEY", KEY_B)
    assert _cli(capsys, "suppress", "list", "-c", cfg)[0] == 0
    monkeypatch.setenv("MAILFLOW_SUPPRESSION_KEY", KEY_A)
    code, _, err = _cli(capsys, "suppress", "list", "-c", cfg)
    assert code == 2 and "the suppression key differs" in err


def test_lists_made_before_fingerprints_are_checked_by_their_entries(
        tmp_path: Path, store_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _store_config(tmp_path, store_url)
    monkeypatch.setenv("MAILFLOW_SUPPRESSION_KEY", KEY_A)
    assert _cli(capsys, "suppress", "add", "-c", cfg, "a@x.example")[0] == 0
    _forget_fingerprint(store_url)
    monkeypatch.setenv("MAILFLOW_SUPPRESSION_KEY", KEY_B)
    code, _, err = _cli(capsys, "suppress", "check", "-c", cfg, "a@x.example")
    assert code == 2 and "differs from the one the global list was made with" in err and err.count("\n") == 1
    monkeypatch.setenv("MAILFLOW_SUPPRESSION_KEY", KEY_A)
    assert _cli(capsys, "suppress", "check", "-c", cfg, "a@x.example")[0] == 0  # the right key: adopted again


def _forget_fingerprint(store_url: str) -> None:
    if store_url.startswith("sqlite://"):
        with sqlite3.connect(store_url[len("sqlite://"):]) as conn:
            conn.execute("DELETE FROM state WHERE key = ?", (FINGERPRINT_STATE,))
        return
    client = redis.Redis.from_url(store_url)
    client.delete(f"mailflow:{FINGERPRINT_STATE}")
    client.close()


def test_run_refuses_a_different_key(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _store_config(tmp_path, f"sqlite://{tmp_path}/s.db")
    monkeypatch.setenv("MAILFLOW_SUPPRESSION_KEY", KEY_A)
    assert _cli(capsys, "suppress", "add", "-c", cfg, "a@x.example")[0] == 0
    result = subprocess.run([sys.executable, "-m", "mailflow", "run", "-c", cfg], capture_output=True, text=True,
                            timeout=30, cwd=REPO, env={**os.environ, "MAILFLOW_SUPPRESSION_KEY": KEY_B})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1].startswith("mailflow: the suppression key differs")
    assert sum(not line.startswith("20") for line in result.stderr.splitlines()) == 1  # one line besides the log


# -- the unix milter socket ----------------------------------------------------------------


def _other_group() -> grp.struct_group:
    """A group this process may give a file to: any group if root, else one of its own."""
    candidates = [g.gr_gid for g in grp.getgrall()] if os.geteuid() == 0 else os.getgroups()
    gid = next((g for g in candidates if g != os.getegid()), os.getegid())
    return grp.getgrgid(gid)


@pytest.mark.parametrize("group", ["", "other"])
def test_the_unix_socket_gets_its_mode_and_group_not_the_umask(tmp_path: Path, group: str) -> None:
    path = tmp_path / "milter.sock"
    group_name = _other_group().gr_name if group else ""
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[milter]\nsocket = "unix:{path}"\nsocket_group = "{group_name}"\n'
                   f'[store]\nurl = "sqlite://{tmp_path}/s.db"\n')
    proc = subprocess.Popen([sys.executable, "-m", "mailflow", "run", "-c", str(cfg)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=lambda: os.umask(0))
    try:
        deadline = time.monotonic() + 20
        while not path.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(5)
            client.connect(str(path))  # libmilter listens: the mode was set before this could happen
        info = path.stat()
    finally:
        proc.kill()
        output = proc.communicate(timeout=10)[0].decode()
    assert stat.S_ISSOCK(info.st_mode), output
    assert stat.S_IMODE(info.st_mode) == 0o660, f"{stat.S_IMODE(info.st_mode):o}"
    assert info.st_gid == (grp.getgrnam(group_name).gr_gid if group_name else os.getegid())


def test_socket_settings_are_checked(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    for body, needle in [('socket_group = "no-such-group-here"', "no group named"),
                         ('socket_mode = "0666"', "no bits for others"), ('socket_mode = "rw"', "octal mode"),
                         ('socket = "inet:0@127.0.0.1"', "PORT 1-65535")]:
        cfg.write_text(f"[milter]\n{body}\n")
        with pytest.raises(ConfigError, match=needle):
            load_config(str(cfg))


# -- store URLs ----------------------------------------------------------------------------


@pytest.mark.parametrize("url", [
    "redis://:s3cret@cache.internal:6380/2", "redis://user:s3cret@cache.internal/0", "rediss://u:s3cret@h:1/0",
    "redis://:s3/cr#et@h:6379/0", "redis://h:6379/0?password=s3cret", "unix://:s3cret@/run/redis.sock?db=1",
    "redis://:s3cret@h:notaport/0",
])
def test_store_passwords_are_masked_however_written(url: str) -> None:
    assert "s3cret" not in redact_url(url) and "***" in redact_url(url)
    assert "s3cret" not in (store_url_problem(url) or "")
    assert "s3cret" not in redact_text(f"error: cannot reach '{url}' (refused)\nnext line")


def test_masking_keeps_what_is_no_secret() -> None:
    assert redact_url("redis://:s3cret@cache.internal:6380/2") == "redis://:***@cache.internal:6380/2"
    assert redact_url("sqlite:///var/lib/mail@flow/state.db") == "sqlite:///var/lib/mail@flow/state.db"
    assert redact_text("from=<a@b.example> no url here") == "from=<a@b.example> no url here"
    # Linear: it also runs on log lines that carry client input. Four times the input may take
    # about four times as long (a quadratic scan would take sixteen); best of three, against noise.
    def best_time(copies: int) -> float:
        line = ("x" * 20_000 + "://" + "y" * 20_000) * copies
        timings = []
        for _ in range(3):
            started = time.perf_counter()
            redact_text(line)
            timings.append(time.perf_counter() - started)
        return min(timings)

    assert best_time(8) < 8 * best_time(2)


def test_run_checks_the_key_once_a_store_that_was_down_answers(tmp_path: Path) -> None:
    """Redis frozen (SIGSTOP) at start: the milter starts, then stops with exit 2 once Redis
    answers with another key's fingerprint."""
    import signal

    from tests.helpers.servers import free_port, redis_server

    with redis_server(tmp_path) as (url, port):
        client = redis.Redis.from_url(url)
        client.set(f"mailflow:{FINGERPRINT_STATE}", fingerprint(KEY_A.encode()))
        pid = int((tmp_path / f"redis-{port}.pid").read_text())
        milter_port = free_port()
        cfg = tmp_path / "c.toml"
        cfg.write_text(f'[milter]\nsocket = "inet:{milter_port}@127.0.0.1"\n[store]\nurl = "{url}"\n'
                       '[suppression]\nhash_key_env = "MAILFLOW_SUPPRESSION_KEY"\n')
        os.kill(pid, signal.SIGSTOP)
        try:
            with open(tmp_path / "out", "wb") as out:
                proc = subprocess.Popen([sys.executable, "-m", "mailflow", "run", "-c", str(cfg)], cwd=REPO,
                                        env={**os.environ, "MAILFLOW_SUPPRESSION_KEY": KEY_B}, stdout=out,
                                        stderr=subprocess.STDOUT)
            # The socket is open before a worker checks the store: wait until one serves without it.
            deadline = time.monotonic() + 20
            while b"ready" not in (tmp_path / "out").read_bytes() and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            os.kill(pid, signal.SIGCONT)
        try:
            code = proc.wait(timeout=20)
        finally:
            proc.kill()
            proc.wait(timeout=10)
            output = (tmp_path / "out").read_text()
        client.close()
    assert "the suppression key is checked once it does" in output
    assert code == 2 and output.splitlines()[-1].startswith("mailflow: the suppression key differs"), output
    assert "Traceback" not in output


def test_group_read_is_allowed_only_on_a_key_root_owns(tmp_path: Path) -> None:
    """0640 root:mailflow is how the service user reads a key root administers; on a key the user
    owns itself, group read only widens who can read it."""
    cfg = _key_config(tmp_path, 0o640)
    os.chown(tmp_path / "suppression.key", 65534, 0)  # owned by nobody, not root
    with pytest.raises(ConfigError, match="mode 0640: readable by group of a key root does not own") as refused:
        load_config(str(cfg))
    assert str(refused.value).endswith("; chown root:mailflow (group read needs a file root owns), or chmod 0600")
    os.chmod(tmp_path / "suppression.key", 0o644)  # the mode wrong too: chmod is the fix
    with pytest.raises(ConfigError, match="readable by others; chmod 0640"):
        load_config(str(cfg))
    os.chmod(tmp_path / "suppression.key", 0o600)
    assert load_config(str(cfg)).suppression.secret == KEY_A.encode()
