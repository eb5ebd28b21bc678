"""Replay files are bounded before they are believed (issue 13, finding 8): recipients, sessions,
repeats, nesting, aliases and size; every error names the file and the session, in one line."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mailflow.replay import sessions
from mailflow.replay.sessions import SessionFileError, load_sessions
from tests.helpers.servers import REPO

GOOD = "{name: s%d, mail_from: a@shop.example, rcpt_to: [b@dest.example]}"


def _load(tmp_path: Path, text: str, name: str = "s.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    started = time.perf_counter()
    with pytest.raises(SessionFileError) as info:
        load_sessions(str(path))
    assert time.perf_counter() - started < 5
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message and len(message) < 400, message
    return message


def test_a_huge_recipient_count_is_refused_before_it_is_built(tmp_path: Path) -> None:
    text = "sessions:\n- {name: big, mail_from: a@x.example, rcpt_to: {count: 100000000000, pattern: 'u{n}@d.example'}}\n"
    assert _load(tmp_path, text).endswith("session big: rcpt_to.count: 100000000000 recipients; at most 100000 a session")


def test_the_largest_session_allowed_loads(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("sessions:\n- {name: big, mail_from: a@x.example, rcpt_to: {count: 100000, pattern: 'u{n}@d.example'}}\n")
    assert len(load_sessions(str(path))[0].rcpt_to) == 100_000


def test_recipients_per_file_are_bounded(tmp_path: Path) -> None:
    many = ", ".join(f"{{name: s{i}, mail_from: a@x.example, rcpt_to: {{count: 100000, pattern: 'u{{n}}@d.example'}}}}"
                     for i in range(11))
    assert "session s10: rcpt_to: more than 1000000 recipients in this file" in _load(tmp_path, f"sessions: [{many}]")


def test_repeat_is_bounded(tmp_path: Path) -> None:
    text = "sessions:\n- {name: r, mail_from: a@x.example, rcpt_to: [b@d.example], repeat: 100000000000}\n"
    assert "session r: repeat: expected a whole number from 1 to 100000" in _load(tmp_path, text)


def test_sessions_per_file_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sessions, "MAX_SESSIONS", 3)
    text = "sessions: [" + ", ".join(GOOD % i for i in range(4)) + "]"
    assert _load(tmp_path, text).endswith("4 sessions; at most 3 a file")


def test_size_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sessions, "MAX_FILE_BYTES", 100)
    assert _load(tmp_path, "sessions: [" + ", ".join(GOOD % i for i in range(5)) + "]").endswith("larger than 0 MiB")


@pytest.mark.parametrize("depth", [40, 100_000])
def test_deep_yaml_nesting_is_one_line(tmp_path: Path, depth: int) -> None:
    assert "not valid YAML: nested deeper than 32 levels at line 1" in _load(tmp_path, "sessions: " + "[" * depth + "]" * depth)


def test_deep_json_nesting_is_one_line(tmp_path: Path) -> None:
    assert "not valid JSON: nested too deeply" in _load(tmp_path, '{"sessions": ' + "[" * 200_000 + "]" * 200_000 + "}", "s.json")


def test_an_alias_bomb_is_refused_not_expanded(tmp_path: Path) -> None:
    """Each level refers to the one before ten times: 10^9 strings if anything expanded it."""
    levels = ['a0: &a0 ["xxxxxxxxxx"]'] + [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 10)]
    text = "defaults:\n  macros:\n    connect:\n      bomb: {" + ", ".join(levels) + "}\n" \
           "sessions:\n- {name: laughs, mail_from: a@x.example, rcpt_to: [b@d.example], client: {name: *a9}}\n"
    message = _load(tmp_path, text)
    assert "session laughs: " in message and "expected a text or a number" in message


def test_errors_name_an_unnamed_session_by_its_index(tmp_path: Path) -> None:
    text = "sessions:\n- " + (GOOD % 1) + "\n- {mail_from: a@x.example, rcpt_to: [b@d.example], pause: [1]}\n"
    assert _load(tmp_path, text).endswith("session #2: name: missing")


def test_a_file_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_bytes(b"sessions: []\n# caf\xe9\n")
    with pytest.raises(SessionFileError, match=r"s\.yaml: not UTF-8 \(byte 18\)"):
        load_sessions(str(path))


def test_the_cli_answers_a_bounded_file_with_one_line_and_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "big.json"
    path.write_text(json.dumps({"sessions": [{"name": "big", "mail_from": "a@x.example",
                                              "rcpt_to": {"count": 10 ** 11, "pattern": "u{n}@d.example"}}]}))
    result = subprocess.run([sys.executable, "-m", "mailflow", "replay", str(path), "--milter", "inet:1@127.0.0.1"],
                            capture_output=True, text=True, timeout=30, cwd=REPO)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"mailflow: {path}: session big: rcpt_to.count:")
