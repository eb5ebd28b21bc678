"""The admin CLI: one-line errors with exit 2, config discovery, bucket status."""

from __future__ import annotations

import json
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


def test_check_config_says_the_reputation_ladder_s_mode(tmp_path: Path) -> None:
    """Found by an admin: with [reputation] mode = "monitor" uncommented, check-config said only
    "mode enforce" (the milter's)."""
    good = tmp_path / "good.toml"
    good.write_text(f'[store]\nurl = "sqlite://{tmp_path}/s.db"\n')
    assert "reputation" not in mailflow("check-config", "-c", str(good)).stdout
    good.write_text(f'[store]\nurl = "sqlite://{tmp_path}/s.db"\n[reputation]\nmode = "monitor"\n')
    result = mailflow("check-config", "-c", str(good))
    assert result.returncode == 0 and "mode enforce, reputation monitor)" in result.stdout, result.stdout


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
    hourly = next(line for line in status.stdout.splitlines() if line.startswith("    in use") and "of 600 " in line)
    # Spent 600 a moment ago: the bucket refills one token per 6 s while the CLI starts up.
    left = float(hourly.split("left ")[1].split(";")[0])
    assert left < 1 and any(f"next recipient fits in {n} s" in hourly for n in range(1, 7)), hourly
    assert "up to 1200 in its first hour" in status.stdout  # what a token bucket allows, said
    assert "never seen" not in status.stdout  # its buckets are in use
    assert mailflow("ratelimit", "reset", "-c", str(cfg), "shop.example").returncode == 0
    reset = json.loads(mailflow("ratelimit", "status", "--json", "-c", str(cfg), "shop.example").stdout)
    assert [limit["left"] for limit in reset["limits"]] == [600, 5000] and reset["seen"] is False
    assert "never seen" in mailflow("ratelimit", "status", "-c", str(cfg), "shop.example").stdout


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


def _suppression_config(tmp_path: Path) -> Path:
    cfg = tmp_path / "s.toml"
    cfg.write_text(f'[store]\nurl = "sqlite://{tmp_path}/s.db"\n[suppression]\nhash_key_env = "MAILFLOW_SUPPRESSION_KEY"\n')
    return cfg


def test_suppress_import_reports_bad_lines_and_keeps_the_rest(tmp_path: Path) -> None:
    cfg = _suppression_config(tmp_path)
    listing = tmp_path / "list.csv"
    listing.write_text("address,reason,added_at,source\na@x.example,complaint,2026-01-02T03:04:05Z,fbl\n"
                       "not an address,,,\nb@x.example,,1700000000,\n@x2.example,bogus,,\nc@x.example\n")
    result = mailflow("suppress", "import", "-c", str(cfg), str(listing))
    assert result.returncode == 0
    assert "list.csv: line 3: 'not an address'" in result.stderr and "list.csv: line 5: 'bogus' is not a reason" in result.stderr
    assert "3 entries read, 3 new, 0 already listed, 2 bad lines skipped" in result.stdout
    again = mailflow("suppress", "import", "-c", str(cfg), str(listing))
    assert "3 entries read, 0 new, 3 already listed" in again.stdout
    export = mailflow("suppress", "export", "-c", str(cfg))
    rows = sorted(export.stdout.splitlines()[1:])
    assert rows == ["a@x.example,complaint,2026-01-02T03:04:05Z,fbl", "b@x.example,unsubscribe,2023-11-14T22:13:20Z,list.csv",
                    f"c@x.example,unsubscribe,{rows[2].split(',')[2]},list.csv"]
    exported = tmp_path / "exported.csv"
    exported.write_text(export.stdout)
    assert "3 new" in mailflow("suppress", "import", "-c", str(cfg), "--account", "shop.example", str(exported)).stdout


def test_suppress_check_exit_codes_and_remove(tmp_path: Path) -> None:
    cfg = _suppression_config(tmp_path)
    assert mailflow("suppress", "add", "-c", str(cfg), "--account", "shop.example", "User+x@Dest.example").returncode == 0
    assert mailflow("suppress", "check", "-c", str(cfg), "--account", "shop.example", "user@dest.example").returncode == 0
    assert mailflow("suppress", "check", "-c", str(cfg), "user@dest.example").returncode == 1  # global list: no
    assert mailflow("suppress", "remove", "-c", str(cfg), "--account", "shop.example", "user@dest.example").returncode == 0
    assert mailflow("suppress", "check", "-c", str(cfg), "--account", "shop.example", "user@dest.example").returncode == 1
    bad = mailflow("suppress", "add", "-c", str(cfg), "--reason", "because", "x@y.example")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1


def test_suppress_without_a_suppression_table_is_a_clear_error(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[store]\nurl = "sqlite://{tmp_path}/s.db"\n')
    result = mailflow("suppress", "list", "-c", str(cfg))
    assert result.returncode == 2 and "suppression is not configured" in result.stderr


def test_account_hold_release_list(tmp_path: Path) -> None:
    cfg = _suppression_config(tmp_path)
    assert "no account is held" in mailflow("account", "list", "-c", str(cfg)).stdout
    assert mailflow("account", "hold", "-c", str(cfg), "Shop.example").returncode == 0
    assert "shop.example" in mailflow("account", "list", "-c", str(cfg)).stdout
    assert mailflow("account", "release", "-c", str(cfg), "shop.example").returncode == 0
    assert mailflow("account", "release", "-c", str(cfg), "shop.example").returncode == 1
