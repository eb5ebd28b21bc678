"""`mailflow replay` through the milter protocol: the corpus is the regression net for every rule."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.helpers.corpus import (
    SESSION_FILES,
    corpus_config,
    load_corpus_lists,
    replay,
    session_count,
    summary_line,
    write,
)
from tests.helpers.servers import MilterProcess


def test_the_corpus_replays_green(start_milter: Callable[..., MilterProcess], store_url: str) -> None:
    milter = start_milter(corpus_config(store_url))
    load_corpus_lists(milter.config_path)
    result = replay(*SESSION_FILES, "--milter", milter.socket)
    assert result.returncode == 0, result.stdout + result.stderr
    assert summary_line(result.stdout) == f"{session_count()} passed, 0 failed"
    assert result.stdout.count("\nok   ") + result.stdout.startswith("ok   ") == session_count()


def test_a_wrong_expectation_exits_1_and_names_the_session(
    start_milter: Callable[..., MilterProcess], tmp_path: Path
) -> None:
    milter = start_milter(corpus_config(f"sqlite://{tmp_path}/s.db"))
    sessions = write(tmp_path / "wrong.yaml", """
sessions:
  - name: right
    login: bob@shop.example
    mail_from: bob@shop.example
    rcpt_to: [a@dest.example]
    expect: {rcpt: accept, eom: accept}
  - name: deliberately-wrong
    login: bob@shop.example
    mail_from: bob@shop.example
    rcpt_to: [a@dest.example]
    expect: {rcpt: "550 5.7.1", eom: accept}
""")
    result = replay(sessions, "--milter", milter.socket)
    assert result.returncode == 1
    assert "FAIL deliberately-wrong: rcpt[1] <a@dest.example> expected '550 5.7.1' got 'accept'" in result.stdout
    assert summary_line(result.stdout) == "1 passed, 1 failed"


def test_a_bad_file_exits_2_naming_file_session_and_field(tmp_path: Path) -> None:
    bad = write(tmp_path / "bad.yaml", """
sessions:
  - name: fine
    mail_from: a@b.example
    rcpt_to: [c@d.example]
  - name: broken
    mail_from: a@b.example
    rcpt_to: [c@d.example, e@f.example]
    expect: {rcpt: [accept]}
""")
    result = replay(bad, "--milter", "inet:1@127.0.0.1")
    assert result.returncode == 2
    assert result.stderr.strip() == f"mailflow: {bad}: session broken: expect.rcpt: 1 replies for 2 recipients"


def test_an_unreachable_milter_is_a_clear_error(tmp_path: Path) -> None:
    ok = write(tmp_path / "ok.yaml", "sessions:\n  - {name: s, mail_from: a@b.example, rcpt_to: [c@d.example]}\n")
    result = replay(ok, "--milter", "inet:1@127.0.0.1")
    assert result.returncode == 2 and "cannot talk to milter" in result.stderr
