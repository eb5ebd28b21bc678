"""`mailflow feedback follow` arguments and exit codes: a bad --log, config or store is one line
on stderr; --once exits 0 when applied, 1 on a store fault (nothing counted twice next time)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import tomli_w

from mailflow.config import load_config
from mailflow.store import open_store
from tests.feedback.conftest import MailLog, totals, write_config
from tests.helpers.cli import run_cli
from tests.helpers.servers import free_port


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mailflow: "), err
    return lines[0]


def test_once_counts_then_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str], store_url: str) -> None:
    log = MailLog(tmp_path / "mail.log")
    log.write(30)
    config = write_config(tmp_path, store_url, log.path)
    code, _, err = run_cli(capsys, "feedback", "follow", "-c", str(config), "--once", "--from-start")
    assert code == 0, err
    assert "event=feedback_summary" in err and "batches=1" in err and "attributed=30" in err
    store = open_store(store_url)
    try:
        assert totals(store, log) == log.expected
    finally:
        store.close()


@pytest.mark.parametrize("log_arg,why", [("missing.log", "No such file or directory"), (".", "not a regular file")])
def test_a_bad_log_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], log_arg: str,
                                          why: str) -> None:
    config = write_config(tmp_path, f"sqlite://{tmp_path}/state.db", tmp_path / "mail.log")
    code, _, err = run_cli(capsys, "feedback", "follow", "-c", str(config), "--once", "--log", str(tmp_path / log_arg))
    assert code == 2 and why in one_line(err) and "--log" in err


def test_an_unreadable_log_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "mail.log"
    log.write_text("")
    log.chmod(0)
    config = write_config(tmp_path, f"sqlite://{tmp_path}/state.db", log)
    code, _, err = run_cli(capsys, "feedback", "follow", "-c", str(config), "--once")
    if os.geteuid() == 0:  # root reads it anyway
        assert code == 0, err
    else:
        assert code == 2 and "Permission denied" in one_line(err)


@pytest.mark.parametrize("feedback,why", [
    ({"log": "relative/mail.log"}, "feedback.log"),
    ({"outbound_ips": {"postfix-out2/smtp": "192.0.2.300"}}, "is not an IP address"),
    ({"outbound_ips": {"postfix out/smtp": "192.0.2.3"}}, "not a syslog service name"),
    ({"lgo": "/var/log/mail.log"}, "feedback.lgo: unknown key"),
])
def test_a_bad_feedback_table_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    feedback: dict[str, object], why: str) -> None:
    config = write_config(tmp_path, f"sqlite://{tmp_path}/state.db", tmp_path / "mail.log")
    text = config.read_text().split("[feedback]")[0]
    config.write_text(text + tomli_w.dumps({"feedback": feedback}))
    code, _, err = run_cli(capsys, "feedback", "follow", "-c", str(config), "--once")
    assert code == 2 and why in one_line(err)


def test_outbound_ips_are_read(tmp_path: Path) -> None:
    config = write_config(tmp_path, f"sqlite://{tmp_path}/state.db", tmp_path / "mail.log")
    config.write_text(config.read_text().split("[feedback]")[0] + tomli_w.dumps(
        {"feedback": {"log": "/var/log/mail.log", "outbound_ips": {"postfix/smtp": "192.0.2.10",
                                                                   "postfix-out2/smtp": "2001:DB8::0:11"}}}))
    assert dict(load_config(str(config)).feedback.outbound_ips) == {"postfix/smtp": "192.0.2.10",
                                                              "postfix-out2/smtp": "2001:db8::11"}


def test_once_with_the_store_down_is_one_line_and_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = MailLog(tmp_path / "mail.log")
    log.write(5)
    config = write_config(tmp_path, f"redis://127.0.0.1:{free_port()}/0", log.path)
    code, _, err = run_cli(capsys, "feedback", "follow", "-c", str(config), "--once")
    assert code == 1 and "store" in one_line(err) and "read" in err


def test_unknown_option_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "feedback", "follow", "--twice")
    assert code == 2 and "--twice" in one_line(err)
