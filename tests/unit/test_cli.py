"""The admin CLI: one-line errors with exit 2, config discovery, bucket status."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def mailflow(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailflow", *args], capture_output=True, text=True, timeout=60,
                          cwd=REPO, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("args", [["--bogus"], ["run", "--nope"], ["nosuchcommand"], ["ratelimit", "status"]])
def test_bad_arguments_get_one_line_and_exit_2(args: list[str]) -> None:
    result = mailflow(*args)
    assert result.returncode == 2
    assert result.stderr.startswith("mailflow: ") and result.stderr.count("\n") == 1, result.stderr


def test_check_config_names_the_bad_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[ratelimit.accounts."big.example"]\nlimits = ["10/hour", "5/fortnight"]\n')
    result = mailflow("check-config", "-c", str(bad))
    assert result.returncode == 2
    assert 'ratelimit.accounts."big.example".limits[1]' in result.stderr and result.stderr.count("\n") == 1


def test_run_refuses_a_bad_config_before_binding(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[milter]\nsocket = "inet:1@127.0.0.1"\nmode = "loud"\n')
    result = mailflow("run", "-c", str(bad))
    assert result.returncode == 2 and "milter.mode" in result.stderr


def test_config_comes_from_the_environment(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(f'[store]\nurl = "sqlite://{tmp_path}/s.db"\n')
    result = mailflow("check-config", env={"MAILFLOW_CONFIG": str(good)})
    assert result.returncode == 0 and "OK" in result.stdout


def test_status_and_reset(tmp_path: Path) -> None:
    from mailflow.config import load_config
    from mailflow.store import open_store

    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[store]\nurl = "sqlite://{tmp_path}/s.db"\n[ratelimit]\nlimits = ["600/hour", "5000/day"]\n')
    config = load_config(str(cfg))
    store = open_store(config.store.url)
    store.debit("shop.example", config.ratelimit.default.limits, 600)
    store.close()
    status = mailflow("ratelimit", "status", "-c", str(cfg), "Shop.Example")
    assert status.returncode == 0
    assert "600/hour" in status.stdout and "left       0.0" in status.stdout and "next in 6s" in status.stdout
    assert mailflow("ratelimit", "reset", "-c", str(cfg), "shop.example").returncode == 0
    assert "left     600.0" in mailflow("ratelimit", "status", "-c", str(cfg), "shop.example").stdout


def test_store_url_passwords_are_not_shown() -> None:
    from mailflow.urls import redact_url

    assert redact_url("redis://:s3cret@cache.internal:6380/2") == "redis://:***@cache.internal:6380/2"
    assert redact_url("sqlite:///var/lib/mailflow/state.db") == "sqlite:///var/lib/mailflow/state.db"


def test_replay_what_if_from_a_mail_log() -> None:
    result = mailflow("replay", "--from-log", "tests/fixtures/mail.log", "-c", "tests/sessions/mailflow.toml", "--year", "2026")
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()[2:]}
    assert rows["shop.example"][:2] == ["2", "2"] and rows["(inbound)"][5] == "1"


@pytest.mark.parametrize("args", [["replay"], ["replay", "x.yaml"], ["replay", "x.yaml", "--milter", "a", "--smtp", "b:1"]])
def test_replay_argument_errors(args: list[str]) -> None:
    result = mailflow(*args)
    assert result.returncode == 2 and result.stderr.count("\n") == 1


def test_domains_add_list_remove(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[store]\nurl = "sqlite://{tmp_path}/s.db"\n[forgery.accounts."shop.example"]\ndomains = ["shop-news.example"]\n')
    assert mailflow("domains", "add", "-c", str(cfg), "shop.example", "Bücher.example").returncode == 0
    listing = mailflow("domains", "list", "-c", str(cfg), "shop.example").stdout
    assert "xn--bcher-kva.example" in listing and "store" in listing and "shop-news.example" in listing
    taken = mailflow("domains", "add", "-c", str(cfg), "other.example", "xn--bcher-kva.example")
    assert taken.returncode == 1 and "belongs to account shop.example" in taken.stderr
    suffix = mailflow("domains", "add", "-c", str(cfg), "shop.example", "co.uk")
    assert suffix.returncode == 2 and "public suffix" in suffix.stderr and suffix.stderr.count("\n") == 1
    assert mailflow("domains", "remove", "-c", str(cfg), "shop.example", "bücher.example").returncode == 0
    assert "store" not in mailflow("domains", "list", "-c", str(cfg), "shop.example").stdout
