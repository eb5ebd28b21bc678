"""Every admin command that changes policy state leaves one audit entry: who, what, why."""

from __future__ import annotations

import json
import os
import pwd
from pathlib import Path

import pytest

from tests.unit.test_grants import run

KEY = {"MAILFLOW_SUPPRESSION_KEY": "mailflow-test-suppression-key-0123456789"}


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    for name, value in KEY.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("SUDO_USER", raising=False)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[store]\nurl = "sqlite://{tmp_path}/s.db"\n'
                   '[suppression]\nhash_key_env = "MAILFLOW_SUPPRESSION_KEY"\n')
    return str(cfg)


def test_each_changing_command_is_audited_with_its_why(capsys: pytest.CaptureFixture[str], config: str,
                                                       tmp_path: Path) -> None:
    listing = tmp_path / "optouts.txt"
    listing.write_text("a@x.example\nb@x.example\n")
    commands = [
        ["ratelimit", "reset", "shop.example", "--reason", "customer asked"],
        ["account", "hold", "shop.example", "--reason", "phishing report"],
        ["account", "release", "shop.example", "--why", "cleaned up"],
        ["suppress", "add", "--account", "shop.example", "--reason", "complaint", "--why", "ticket 9", "c@x.example"],
        ["suppress", "remove", "--account", "shop.example", "--reason", "asked to", "c@x.example"],
        ["suppress", "import", "--why", "broker list", str(listing)],
        ["domains", "add", "shop.example", "shop-news.example", "--why", "new brand"],
        ["domains", "remove", "shop.example", "shop-news.example"],
    ]
    for args in commands:
        code, out, err = run(capsys, *args[:2], "-c", config, *args[2:])
        assert code == 0, (args, err)
    code, out, _ = run(capsys, "audit", "--json", "-c", config)
    entries = json.loads(out)[::-1]
    user = pwd.getpwuid(os.getuid()).pw_name
    assert [(e["action"], e["account"], e["why"]) for e in entries] == [
        ("ratelimit reset", "shop.example", "customer asked"),
        ("account hold", "shop.example", "phishing report"),
        ("account release", "shop.example", "cleaned up"),
        ("suppress add", "shop.example", "ticket 9"),
        ("suppress remove", "shop.example", "asked to"),
        ("suppress import", "", "broker list"),
        ("domains add", "shop.example", "new brand"),
        ("domains remove", "shop.example", ""),
    ]
    assert {e["who"] for e in entries} == {user}
    assert entries[3]["what"] == "1 new of 1 in account:shop.example reason=complaint source=cli"
    assert entries[5]["what"].startswith("2 new of 2 in global from optouts.txt")
    assert "x.example" not in out.replace("shop-news.example", "")  # suppressed addresses stay sealed
    code, out, _ = run(capsys, "audit", "--account", "shop.example", "-n", "2", "-c", config)
    lines = out.splitlines()
    assert len(lines) == 2 and "domains remove shop.example  shop-news.example" in lines[0]


def test_a_refused_change_is_not_audited(capsys: pytest.CaptureFixture[str], config: str) -> None:
    code, _, _ = run(capsys, "account", "release", "-c", config, "nobody.example")
    assert code == 1
    code, out, _ = run(capsys, "audit", "-c", config)
    assert out == "no audit entries\n"
