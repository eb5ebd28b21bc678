"""`mailflow reputation [ACCOUNT] [--json]` and `mailflow reputation reset ACCOUNT --reason` over a
real SQLite store: the listing worst first, one account's figures with their samples, the reset's
marker, audit and event, and one-line answers to bad arguments."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailflow import events
from mailflow.feedback.model import BOUNCE_ADDRESS, DELIVERED
from mailflow.reputation.model import BLOCK, HOLD, NORMAL, WARN, Standing
from mailflow.reputation.rates import HOUR
from mailflow.store.sqlite import SqliteStore
from tests.helpers.cli import run_cli as run


@pytest.fixture
def config(tmp_path: Path) -> str:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[store]\nurl = "sqlite://{tmp_path}/s.db"\n[reputation]\nmode = "monitor"\n'
                   'contact = "abuse@provider.example"\n[reputation.accounts."vip.example"]\nexempt = true\n')
    return str(cfg)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(f"{tmp_path}/s.db")
    yield s
    s.close()



def put(store: SqliteStore, account: str, standing: Standing) -> None:
    assert store.swap_reputation(account, None, standing.value())


def test_the_listing_is_worst_first_and_skips_normal(capsys: pytest.CaptureFixture[str], config: str,
                                                    store: SqliteStore) -> None:
    now = time.time()
    put(store, "warned.example", Standing(WARN, now - 50, "hard bounces 6.0% (12 of 200 recipients in 24 h) >= 5%"))
    put(store, "blocked.example", Standing(BLOCK, now - 10, "120 unknown recipients in the last hour >= 100",
                                           contact="abuse@provider.example"))
    put(store, "reset.example", Standing(NORMAL, now, "reset by root: cleaned", rule="admin"))
    code, out, err = run(capsys, "reputation", "-c", config)
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert [line.split()[0] for line in lines] == ["blocked.example", "warned.example"]
    assert "(monitor: not enforced)" in lines[0] and "120 unknown recipients" in lines[0]
    code, out, _ = run(capsys, "reputation", "--json", "-c", config)
    rows = json.loads(out)
    assert [(r["account"], r["state"], r["mode"]) for r in rows] == [
        ("blocked.example", BLOCK, "monitor"), ("warned.example", WARN, "monitor")]
    assert set(rows[0]) >= {"since", "why", "rule", "contact", "rates_at_move", "evidence", "exempt"}


def test_one_account_shows_its_figures_with_their_samples(capsys: pytest.CaptureFixture[str], config: str,
                                                           store: SqliteStore) -> None:
    now = time.time()
    hour = int(now // HOUR)
    store.add_feedback(None, 0, {(hour, "buyer.example", DELIVERED): 180, (hour, "buyer.example", BOUNCE_ADDRESS): 20}, {})
    put(store, "buyer.example", Standing(HOLD, now, "hard bounces 10.0% (20 of 200 recipients in 24 h) >= 10%",
                                         rule="hard_bounces", evidence=("to=<a@x> status=bounced (550 5.1.1)",)))
    code, out, _ = run(capsys, "reputation", "Buyer.Example", "--json", "-c", config)
    data = json.loads(out)
    assert data["state"] == HOLD and data["rule"] == "hard_bounces" and data["evidence"] == ["to=<a@x> status=bounced (550 5.1.1)"]
    bounces = data["rates_now"]["hard_bounces"]
    assert bounces == {"value": 10.0, "unit": "percent", "sample": 200, "min_sample": 200, "window": "24 h",
                       "reaches": HOLD, "thresholds": {"warn": 5.0, "throttle": 7.5, "hold": 10.0}}
    assert data["rates_now"]["complaints"]["sample"] == 180 and data["counts_now"]["attempted_24h"] == 200
    code, out, _ = run(capsys, "reputation", "-c", config, "buyer.example")
    assert code == 0 and out.startswith("account buyer.example: hold since ") and "evidence:" in out
    assert "hard_bounces        10.00% of 200" in out
    code, out, _ = run(capsys, "reputation", "nobody.example", "-c", config)
    assert code == 0 and out.startswith("account nobody.example: normal (monitor: not enforced)\n"
                                        "  nothing counted for this account in the rules' windows (is the name right?")
    assert "nothing counted" not in run(capsys, "reputation", "buyer.example", "-c", config)[1]
    code, out, _ = run(capsys, "reputation", "vip.example", "-c", config)
    assert out.startswith("account vip.example: normal (exempt)")


def test_reset_stores_a_marker_audits_and_publishes(capsys: pytest.CaptureFixture[str], config: str,
                                                    store: SqliteStore, published: list[events.Event]) -> None:
    put(store, "buyer.example", Standing(HOLD, time.time() - 100, "x", rule="hard_bounces"))
    code, out, err = run(capsys, "reputation", "reset", "buyer.example", "--reason", "list cleaned, ticket 42",
                         "-c", config)
    assert code == 0 and out == "account buyer.example: hold -> normal; its figures count again from now\n", err
    marker = Standing.from_value(store.reputation_states()["buyer.example"])
    assert marker is not None and marker.state == NORMAL and marker.rule == "admin" and "ticket 42" in marker.why
    [event] = published
    assert event.kind == events.REPUTATION_LOWERED and event.detail["state"] == NORMAL
    assert event.detail["before"] == HOLD and event.detail["rule"] == "admin"
    assert not [key for key in event.detail if key.startswith("rate_")]  # the marker's baseline is no rate
    code, out, _ = run(capsys, "audit", "--account", "buyer.example", "--json", "-c", config)
    [entry] = json.loads(out)
    assert entry["action"] == "reputation reset" and entry["why"] == "list cleaned, ticket 42" and entry["what"] == "from hold"
    code, out, err = run(capsys, "reputation", "reset", "buyer.example", "--reason", "again", "-c", config)
    assert code == 1 and err == "mailflow: account buyer.example is normal: nothing to reset\n"
    code, out, _ = run(capsys, "reputation", "-c", config)
    assert out == "every account is normal\n"


def test_the_listing_says_when_the_ladder_is_off(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Found by an admin: with [reputation] still commented out, "every account is normal" read as
    a clean bill of health."""
    cfg = tmp_path / "off.toml"
    cfg.write_text(f'[store]\nurl = "sqlite://{tmp_path}/s.db"\n')
    code, out, _ = run(capsys, "reputation", "-c", str(cfg))
    assert code == 0 and out == ("every account is normal\n"
                                 "([reputation] is not in the config: the ladder does not run)\n")


def test_the_config_option_may_come_before_reset(capsys: pytest.CaptureFixture[str], config: str,
                                                  store: SqliteStore) -> None:
    """Found by an admin: `reputation -c FILE` lists, so `reputation -c FILE reset A --reason R` was
    tried, and answered "No such option '--reason'" (it went to the listing)."""
    put(store, "buyer.example", Standing(HOLD, time.time() - 100, "x", rule="hard_bounces"))
    code, out, err = run(capsys, "reputation", "-c", config, "reset", "buyer.example", "--reason", "cleaned")
    assert code == 0 and out.startswith("account buyer.example: hold -> normal"), err
    code, out, _ = run(capsys, "reputation", "--config", config, "show", "reset")  # an account named reset
    assert code == 0 and out.startswith("account reset: normal")


def test_a_reset_is_not_undone_by_its_own_hour(capsys: pytest.CaptureFixture[str], config: str,
                                               store: SqliteStore) -> None:
    """Found by an admin: the next batch in the reset's clock hour held the account again on the
    bounces the reset forgave. The hour's counts at the reset are kept and taken off."""
    from mailflow import cli as mailflow_cli
    from mailflow.reputation.evaluate import evaluate

    now, account = time.time(), "buyer.example"
    hour = int(now // HOUR)
    store.add_feedback(None, 0, {(hour, account, DELIVERED): 180, (hour, account, BOUNCE_ADDRESS): 40}, {})
    put(store, account, Standing(HOLD, now - 60, "hard bounces 18.2%", rule="hard_bounces"))
    assert run(capsys, "reputation", "reset", account, "--reason", "list cleaned", "-c", config)[0] == 0
    store.add_feedback(None, 1, {(hour, account, DELIVERED): 1}, {})  # a clean delivery, same hour
    cfg = mailflow_cli._load(config)
    assert evaluate(cfg, store, [account], now + 1) == []
    data = json.loads(run(capsys, "reputation", account, "--json", "-c", config)[1])
    assert data["state"] == NORMAL and data["rates_now"]["hard_bounces"]["sample"] == 1
    # What the account does after the reset counts, in the same hour too.
    store.add_feedback(None, 2, {(hour, account, DELIVERED): 170, (hour, account, BOUNCE_ADDRESS): 30}, {})
    [move] = evaluate(cfg, store, [account], now + 2)
    assert move.after is not None and move.after.state == HOLD and "(30 of 201 recipients" in move.after.why


@pytest.mark.parametrize("args, needle", [
    (["reset", "buyer.example"], "--reason"),
    (["reset", "buyer.example", "--reason", "  "], "--reason"),
    (["reset", "a b", "--reason", "x"], "ACCOUNT"),
    (["reset", "--reason", "x"], "ACCOUNT"),
    (["a\x00b"], "ACCOUNT"),
    (["x" * 300, "--json"], "ACCOUNT"),
    (["one.example", "two.example"], "unexpected extra argument"),
    (["--jsn"], "--jsn"),
])
def test_bad_arguments_are_one_line_exit_2(capsys: pytest.CaptureFixture[str], config: str, args: list[str],
                                           needle: str) -> None:
    code, out, err = run(capsys, "reputation", *args, "-c", config)
    assert code == 2 and err.startswith("mailflow: ") and err.count("\n") == 1 and needle in err, (code, err)
    assert "Traceback" not in out + err


def test_a_bad_config_is_one_line_per_key(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(f'[store]\nurl = "sqlite://{tmp_path}/s.db"\n[reputation]\nmode = "on"\nclean_days = 0\n')
    code, _, err = run(capsys, "reputation", "-c", str(cfg))
    assert code == 2 and err.count("\n") == 2 and "reputation.mode" in err and "reputation.clean_days" in err
