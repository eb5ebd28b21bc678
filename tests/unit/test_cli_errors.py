"""Every subcommand answers a bad config, URL, store or file with one line on stderr and exit 2,
never a traceback, and no output ever shows a store password (issue 13, findings 7 and 8)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mailflow.cli import main
from tests.helpers.servers import REPO, free_port

SECRET = "s3cret"
KEY_ENV = {"hash_key_env": "MAILFLOW_SUPPRESSION_KEY"}

# Every subcommand, with arguments that are otherwise valid.
STORE_COMMANDS = [
    ["run"], ["check-config"], ["ratelimit", "status", "shop.example"], ["ratelimit", "reset", "shop.example"],
    ["domains", "add", "shop.example", "shop-news.example"], ["domains", "remove", "shop.example", "x.example"],
    ["domains", "list", "shop.example"], ["suppress", "add", "a@x.example"], ["suppress", "remove", "a@x.example"],
    ["suppress", "check", "a@x.example"], ["suppress", "list"], ["suppress", "export"],
    ["suppress", "import", "IMPORT"], ["suppress", "rekey", "--finish"], ["account", "hold", "a"], ["account", "release", "a"], ["account", "list"],
    ["held"], ["held", "--json", "--account", "a"], ["account", "release", "--drop", "a"],
    ["rbl", "watch", "--cycles", "1"],
    ["ratelimit", "grant", "shop.example", "5/hour", "--for", "1h", "--reason", "x"],
    ["ratelimit", "extend", "shop.example", "--for", "1h"], ["ratelimit", "revoke", "shop.example"],
    ["ratelimit", "grants"], ["audit"],
    ["top"], ["top", "--day", "--json"], ["near-limit"],
    ["ratelimit", "status", "shop.example", "--json"],
]
ALL_COMMANDS = STORE_COMMANDS + [["rbl", "check"], ["replay", "--from-log", "tests/fixtures/mail.log"]]


@pytest.fixture(autouse=True)
def _keep_logging() -> Iterator[None]:
    """In-process commands may set up logging on pytest's captured stderr; undo it after."""
    logger = logging.getLogger("mailflow")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.propagate = saved[0], saved[2]
    logger.setLevel(saved[1])


def run_main(capsys: pytest.CaptureFixture[str], args: list[str]) -> tuple[int, str, str]:
    """The CLI in-process (fast); `mailflow_subprocess` below checks the real interpreter too."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    out, err = capsys.readouterr()
    code = exit_info.value.code
    return (code if isinstance(code, int) else 1), out, err


def assert_one_line_exit_2(code: int, out: str, err: str, *needles: str) -> None:
    assert code == 2, (code, out, err)
    assert err.startswith("mailflow: ") and err.count("\n") == 1, err
    assert "Traceback" not in err + out and SECRET not in err + out
    for needle in needles:
        assert needle in err, (needle, err)


def _with_config(args: list[str], cfg: Path, tmp_path: Path) -> list[str]:
    listing = tmp_path / "import.txt"
    listing.write_text("a@x.example\n")
    args = [str(listing) if a == "IMPORT" else a for a in args]
    return args[:2] + ["-c", str(cfg)] + args[2:] if args[0] in ("ratelimit", "domains", "suppress", "account", "rbl") \
        else args + ["-c", str(cfg)]


def _config(tmp_path: Path, store_url: str, extra: str = "") -> Path:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[store]\nurl = "{store_url}"\n[suppression]\nhash_key_env = "MAILFLOW_SUPPRESSION_KEY"\n'
                   f'[rbl]\nips = ["192.0.2.1"]\nnameservers = ["127.0.0.1:{free_port()}"]\n{extra}')
    return cfg


BAD_CONFIGS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "non-numeric port": (lambda p: _config(p, f"redis://:{SECRET}@127.0.0.1:abc/0"), "port is not a number"),
    "port out of range": (lambda p: _config(p, f"redis://user:{SECRET}@127.0.0.1:70000/0"), "port is not a number"),
    "unencoded slash in password": (lambda p: _config(p, f"redis://:{SECRET}/x@127.0.0.1:6379/0"), "percent-encoded"),
    "no host": (lambda p: _config(p, "redis:///0"), "names no host"),
    "unencoded @ and #": (lambda p: _config(p, f"redis://:Tr0ub@dor#{SECRET}@127.0.0.1:6379/0"), "@ as %40"),
    "bad IPv6 host": (lambda p: _config(p, "redis://[zz]:6379/0"), "[IPv6]"),
    "unclosed IPv6 bracket": (lambda p: _config(p, f"redis://:{SECRET}@[::1:6379/0"), "[IPv6]"),
    "db not a number": (lambda p: _config(p, "redis://127.0.0.1:6379/zero"), "database number"),
    "unknown scheme": (lambda p: _config(p, "mysql://127.0.0.1/x"), "expected sqlite"),
    "sqlite:// without a path": (lambda p: _config(p, "sqlite://"), "names no database file"),
    "bad milter socket": (lambda p: _config(p, f"sqlite://{p}/s.db", '[milter]\nsocket = "inet:99999@127.0.0.1"\n'),
                          "milter.socket"),
    "TOML syntax": (lambda p: _write(p, b'[store]\nurl = "sqlite:///x.db\n'), "line 2"),
    "not UTF-8": (lambda p: _write(p, b'[store]\nurl = "sqlite:///tmp/caf\xe9.db"\n'), "not UTF-8 (line 2, byte 32 is 0xe9)"),
    "key file readable by others": (lambda p: _key_config(p, 0o644), "is mode 0644: readable by others; chmod 0640"),
    "key file writable by group": (lambda p: _key_config(p, 0o660), "is mode 0660: writable by group"),
}

BAD_STORES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "directory as the SQLite file": (lambda p: _config(p, f"sqlite://{p}"), "is a directory"),
    "not a database": (lambda p: _config(p, f"sqlite://{_text_file(p)}"), "is not a SQLite database"),
    "missing parent directory": (lambda p: _config(p, f"sqlite://{p}/no/such/dir/s.db"), "does not exist"),
}


def _write(tmp_path: Path, data: bytes) -> Path:
    cfg = tmp_path / "c.toml"
    cfg.write_bytes(data)
    return cfg


def _text_file(tmp_path: Path) -> Path:
    path = tmp_path / "notes.txt"
    path.write_text("not a database\n")
    return path


def _key_config(tmp_path: Path, mode: int) -> Path:
    key = tmp_path / "suppression.key"
    key.write_text("0123456789abcdef0123456789abcdef\n")
    key.chmod(mode)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[store]\nurl = "sqlite://{tmp_path}/s.db"\n[suppression]\nhash_key_file = "{key}"\n')
    return cfg


@pytest.mark.parametrize("command", ALL_COMMANDS, ids=lambda c: " ".join(c[:2]))
@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_every_subcommand_answers_a_bad_config_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                             command: list[str], case: str) -> None:
    make, needle = BAD_CONFIGS[case]
    assert_one_line_exit_2(*run_main(capsys, _with_config(command, make(tmp_path), tmp_path)), needle)


@pytest.mark.parametrize("command", STORE_COMMANDS, ids=lambda c: " ".join(c[:2]))
@pytest.mark.parametrize("case", sorted(BAD_STORES))
def test_every_store_command_answers_a_bad_store_file_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                    command: list[str], case: str) -> None:
    make, needle = BAD_STORES[case]
    assert_one_line_exit_2(*run_main(capsys, _with_config(command, make(tmp_path), tmp_path)), "store.url", needle)


@pytest.mark.parametrize("command", [c for c in STORE_COMMANDS if c[0] not in ("run", "check-config", "rbl")],
                         ids=lambda c: " ".join(c[:2]))
def test_a_store_that_does_not_answer_is_one_line_with_the_password_masked(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]) -> None:
    cfg = _config(tmp_path, f"redis://user:{SECRET}@127.0.0.1:{free_port()}/0")
    code, out, err = run_main(capsys, _with_config(command, cfg, tmp_path))
    assert_one_line_exit_2(code, out, err)


def mailflow_subprocess(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailflow", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, env=os.environ.copy())


@pytest.mark.parametrize("case", ["non-numeric port", "not UTF-8", "key file readable by others"])
def test_the_real_interpreter_prints_one_line_too(tmp_path: Path, case: str) -> None:
    make, needle = BAD_CONFIGS[case]
    result = mailflow_subprocess("run", "-c", str(make(tmp_path)))
    assert_one_line_exit_2(result.returncode, result.stdout, result.stderr, needle)


def test_a_sqlite_file_run_cannot_open_is_one_line(tmp_path: Path) -> None:
    """A store fault at start (here a database file that is a FIFO) is one line, not a traceback."""
    fifo = tmp_path / "s.db"
    os.mkfifo(fifo)
    result = mailflow_subprocess("check-config", "-c", str(_config(tmp_path, f"sqlite://{fifo}")))
    assert_one_line_exit_2(result.returncode, result.stdout, result.stderr, "not a regular file")


def test_passwords_never_show_in_check_config_or_the_milter_log(tmp_path: Path) -> None:
    for url in (f"redis://:{SECRET}@127.0.0.1:{free_port()}/0", f"redis://user:{SECRET}@127.0.0.1:{free_port()}/0",
                f"redis://127.0.0.1:{free_port()}/0?password={SECRET}"):
        cfg = _config(tmp_path, url)
        checked = mailflow_subprocess("check-config", "-c", str(cfg))
        assert checked.returncode == 0 and "***" in checked.stdout and SECRET not in checked.stdout + checked.stderr
    # The milter with an unreachable password-protected Redis: it starts, and says so without the password.
    port = free_port()
    cfg = _config(tmp_path, f"redis://user:{SECRET}@127.0.0.1:{free_port()}/0",
                  f'[milter]\nsocket = "inet:{port}@127.0.0.1"\n')
    proc = subprocess.Popen([sys.executable, "-m", "mailflow", "run", "-c", str(cfg)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        from tests.helpers.servers import wait_for_port

        wait_for_port(port, timeout=20)
        time.sleep(0.3)
    finally:
        proc.kill()
        output = proc.communicate(timeout=10)[0]
    assert "not answering at start" in output and "user:***@" in output and SECRET not in output, output
    assert "Traceback" not in output


def test_an_unexpected_error_is_one_line_not_a_traceback(capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import mailflow.cli as cli

    def broken(_: str | None) -> None:
        raise KeyError(f"redis://:{SECRET}@h/0")

    monkeypatch.setattr(cli, "_load", broken)
    code, out, err = run_main(capsys, ["check-config"])
    assert code == cli.EXIT_INTERNAL and err.count("\n") == 1 and "internal error: KeyError" in err
    assert SECRET not in err and "Traceback" not in err


def test_a_socket_in_use_is_one_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = _config(tmp_path, f"sqlite://{tmp_path}/s.db", f'[milter]\nsocket = "inet:{port}@127.0.0.1"\n')
        result = mailflow_subprocess("run", "-c", str(cfg))
    errors = [line for line in result.stderr.splitlines() if line.startswith("mailflow: ")]
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert errors == [f"mailflow: cannot listen on inet:{port}@127.0.0.1: cannot opensocket (in use, or no permission?)"]


def test_a_missing_socket_directory_or_a_file_in_the_way_is_caught_by_check_config(tmp_path: Path) -> None:
    cfg = _config(tmp_path, f"sqlite://{tmp_path}/s.db", f'[milter]\nsocket = "unix:{tmp_path}/run/m.sock"\n')
    result = mailflow_subprocess("check-config", "-c", str(cfg))
    assert_one_line_exit_2(result.returncode, result.stdout, result.stderr, f"directory {tmp_path}/run does not exist")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "m.sock").write_text("a file\n")
    result = mailflow_subprocess("check-config", "-c", str(cfg))
    assert_one_line_exit_2(result.returncode, result.stdout, result.stderr, "m.sock exists and is not a socket")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run check-config as another user")
@pytest.mark.parametrize("exists", [True, False])
def test_a_database_the_user_cannot_write_is_caught_by_check_config(exists: bool) -> None:
    """As `nobody`: a root-owned 0644 database, or a root-owned directory to create it in. In a
    directory of its own under /tmp, since pytest's base directory is 0700."""
    import shutil
    import tempfile

    workdir = Path(tempfile.mkdtemp(prefix="mailflow-readonly-"))
    try:
        workdir.chmod(0o755)
        db = workdir / "s.db"
        if exists:
            db.write_bytes(b"SQLite format 3\0" + bytes(100))
            db.chmod(0o644)
        cfg = _config(workdir, f"sqlite://{db}")
        cfg.chmod(0o644)
        result = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable,
                                 "-m", "mailflow", "check-config", "-c", str(cfg)],
                                capture_output=True, text=True, timeout=30, cwd=REPO,
                                env={**os.environ, "HOME": "/nonexistent"})
    finally:
        shutil.rmtree(workdir)
    needle = "is read-only for uid 65534" if exists else "is not writable for uid 65534"
    assert_one_line_exit_2(result.returncode, result.stdout, result.stderr, needle)
