"""The session corpus under tests/sessions/ and the policy it is written against."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

from mailflow.replay.sessions import load_sessions
from tests.helpers.servers import REPO

SESSIONS_DIR = REPO / "tests" / "sessions"
SESSION_FILES = sorted(str(p) for p in SESSIONS_DIR.glob("*.yaml"))


def corpus_config(store_url: str) -> dict[str, Any]:
    config = tomllib.loads((SESSIONS_DIR / "mailflow.toml").read_text())
    config["store"] = {"url": store_url, "timeout_ms": 2000}
    return config


def load_corpus_lists(config_path: Path) -> None:
    """The suppression lists the corpus expects, imported with the CLI as an admin would."""
    lists = SESSIONS_DIR / "lists"
    for args in (["global.csv"], ["--account", "sup.example", "sup.example.txt"], ["--hashed", "md5", "broker.md5"]):
        *options, name = args
        result = subprocess.run([sys.executable, "-m", "mailflow", "suppress", "import", "-c", str(config_path),
                                 *options, str(lists / name)], capture_output=True, text=True, timeout=120, cwd=REPO)
        assert result.returncode == 0, result.stderr


def corpus_logins() -> dict[str, str]:
    return {s.login: s.password or "" for f in SESSION_FILES for s in load_sessions(f) if s.login}


def replay(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailflow", "replay", *args], capture_output=True, text=True,
                          timeout=300, cwd=REPO)


def summary_line(output: str) -> str:
    return output.strip().splitlines()[-1]


def session_count() -> int:
    return sum(s.repeat for f in SESSION_FILES for s in load_sessions(f))


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)
