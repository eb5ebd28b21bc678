"""Grants: parsing, the overlay on the config's limits, expiry by an injected clock, the events
the refresh publishes, and the CLI's one-line answers to bad input."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailflow import events
from mailflow.audit import AuditEntry, who_runs
from mailflow.ratelimit.grants import (Grant, GrantError, GrantOverlay, check_account, overlay, parse_duration,
                                       parse_grant_limits)
from mailflow.ratelimit.limits import parse_limit
from mailflow.settings import RateLimitSettings, RatePolicy
from mailflow.store.sqlite import SqliteStore
from tests.helpers.cli import run_cli as run

BASE = RatePolicy((parse_limit("2/hour"), parse_limit("100/day")))
SETTINGS = RateLimitSettings(default=BASE, accounts={"vip.example": RatePolicy(BASE.limits, exempt=True)})
NOW = 1_800_000_000.0


def grant(limits: str, until: float = NOW + 3600, reason: str = "campaign") -> Grant:
    return Grant(parse_grant_limits(limits.split()), until, reason, "alice", NOW)


def test_durations() -> None:
    assert [parse_duration(t) for t in ("90m", "24h", "7d", "1d12h", " 2w ", "3600s")] == \
        [5400, 86400, 7 * 86400, 129600, 14 * 86400, 3600]
    for bad in ("", "24", "h", "1y", "-1h", "1h-", "30s", "91d", "1" * 40 + "h", "1.5h"):
        with pytest.raises(GrantError):
            parse_duration(bad)


def test_limits_and_accounts() -> None:
    assert parse_grant_limits(["2000/hour", "20000/days"]) == (parse_limit("2000/hour"), parse_limit("20000/day"))
    for bad in ([], ["5/fortnight"], ["0/hour"], ["5/hour", "6/hours"], ["x" * 10_000]):
        with pytest.raises(GrantError):
            parse_grant_limits(bad)
    assert check_account(" Shop.Example ") == "shop.example"
    for name in ("", "a b", "a\nb", "a\x00", "x" * 256):
        with pytest.raises(GrantError):
            check_account(name)


def test_a_sliding_grant_keeps_its_kind_through_the_store_and_its_text() -> None:
    given = grant("600/hour sliding 5000/day")  # the kind as its own argument, as a shell passes it
    assert [limit.kind for limit in given.limits] == ["sliding", "bucket"]
    back = Grant.from_value(given.value())
    assert back.limits == given.limits
    assert back.limits_text() == "600/hour sliding, 5000/day"
    assert parse_grant_limits(["600/hour sliding"]) == (parse_limit("600/hour sliding"),)
    for bad in (["sliding"], ["5/hour", "sliding", "sliding"], ["5/hour", "fast"]):
        with pytest.raises(GrantError):
            parse_grant_limits(bad)


def test_overlay_replaces_the_same_period_keeps_others_and_adds_new_ones() -> None:
    assert overlay(BASE, grant("5/hour")).limits == (parse_limit("5/hour"), parse_limit("100/day"))
    assert overlay(BASE, grant("1/hour")).limits[0] == parse_limit("1/hour")  # lowering is allowed
    assert overlay(BASE, grant("10/minute 500/day")).limits == (
        parse_limit("2/hour"), parse_limit("500/day"), parse_limit("10/minute"))
    exempt = overlay(SETTINGS.policy_for("vip.example"), grant("5/hour"))
    assert exempt.exempt


def test_a_grant_reads_back_as_stored_and_bounds_its_text() -> None:
    given = grant("5/hour 50/day", reason="r" * 5000)
    back = Grant.from_value(given.value())
    assert back.limits == given.limits and back.until == given.until and len(back.reason) == 300
    for junk in ("", "{}", "[1]", json.dumps({"limits": ["5/ever"], "until": 1, "reason": "", "by": "", "given": 1})):
        with pytest.raises(GrantError):
            Grant.from_value(junk)



def test_the_overlay_ignores_an_expired_grant_at_once_then_removes_it_and_says_so_once(
        store: SqliteStore, published: list[events.Event]) -> None:
    clock = [NOW]
    store.swap_grant("shop.example", None, grant("5/hour", until=NOW + 60).value())
    grants = GrantOverlay(SETTINGS, store, 3600, clock=lambda: clock[0])
    try:
        assert grants.policy_for("shop.example").limits[0] == parse_limit("5/hour")
        assert grants.policy_for("other.example") is BASE
        clock[0] = NOW + 60  # no refresh yet: the milter's own clock ends it
        assert grants.policy_for("shop.example") is BASE
        assert store.grants() and not published
        grants.refresh()
        assert store.grants() == {}  # removed lazily
        [ended] = published
        assert (ended.kind, ended.account, ended.detail["how"], ended.detail["limits"]) == (
            events.GRANT_ENDED, "shop.example", "expired", "5/hour")
        assert ended.detail["by"] == "alice" and ended.detail["reason"] == "campaign"
        grants.refresh()
        assert len(published) == 1  # once
    finally:
        grants.stop()


def test_a_revoked_grant_ends_without_an_expiry_event_and_a_new_one_is_seen(
        store: SqliteStore, published: list[events.Event]) -> None:
    clock = [NOW]
    value = grant("5/hour").value()
    store.swap_grant("shop.example", None, value)
    grants = GrantOverlay(SETTINGS, store, 3600, clock=lambda: clock[0])
    store.swap_grant("shop.example", value, None)  # revoked by the CLI (which publishes its own event)
    grants.refresh()
    assert grants.policy_for("shop.example") is BASE and not published
    store.swap_grant("shop.example", None, grant("9/hour").value())
    grants.refresh()
    assert grants.policy_for("shop.example").limits[0] == parse_limit("9/hour")


def test_an_unreadable_grant_or_a_store_outage_keeps_the_last_good_grants(
        store: SqliteStore, caplog: pytest.LogCaptureFixture) -> None:
    store.swap_grant("junk.example", None, "not json")
    store.swap_grant("shop.example", None, grant("5/hour", until=NOW + 10**6).value())
    grants = GrantOverlay(SETTINGS, store, 3600, clock=lambda: NOW)
    assert grants.policy_for("junk.example") is BASE
    store.close()
    store.path = "/nonexistent/dir/state.db"  # every call now fails
    store._next_check = 0  # look at the file at once
    for _ in range(3):
        grants.refresh()
    assert grants.policy_for("shop.example").limits[0] == parse_limit("5/hour")
    assert caplog.text.count("cannot refresh grants") == 1  # once per outage, not every refresh_ms


def test_who_runs_names_the_unix_user_and_sudo(monkeypatch: pytest.MonkeyPatch) -> None:
    import pwd
    import os

    user = pwd.getpwuid(os.getuid()).pw_name
    monkeypatch.delenv("SUDO_USER", raising=False)
    assert who_runs() == user
    monkeypatch.setenv("SUDO_USER", "alice\n\x1b[31m")
    assert who_runs() == f"{user} (sudo by alice ?[31m)"


def test_an_audit_entry_reads_back_and_junk_is_skipped() -> None:
    entry = AuditEntry(NOW, "root", "ratelimit grant", "shop.example", "5/hour for 1h", "campaign")
    assert AuditEntry.from_value(entry.value()) == entry
    assert "why: campaign" in entry.line() and entry.line().startswith("2027-01-15T08:00:00Z  root  ratelimit grant")
    assert AuditEntry.from_value("[]") is None and AuditEntry.from_value("{") is None


@pytest.fixture
def config(tmp_path: Path) -> str:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[store]\nurl = "sqlite://{tmp_path}/s.db"\n[ratelimit]\nlimits = ["2/hour"]\n')
    return str(cfg)


@pytest.mark.parametrize("args, needle", [
    (["grant", "shop.example", "5/fortnight", "--for", "1h", "--reason", "x"], "LIMIT"),
    (["grant", "shop.example", "5/hour", "5/hours", "--for", "1h", "--reason", "x"], "one limit per period"),
    (["grant", "shop.example", "5/hour", "--for", "1y", "--reason", "x"], "--for"),
    (["grant", "shop.example", "5/hour", "--for", "100d", "--reason", "x"], "at most 90 days"),
    (["grant", "a b", "5/hour", "--for", "1h", "--reason", "x"], "ACCOUNT"),
    (["grant", "shop.example", "5/hour", "--for", "1h"], "--reason"),
    (["grant", "shop.example", "--for", "1h", "--reason", "x"], "LIMIT"),
    (["extend", "shop.example", "--for", "soon"], "--for"),
    (["revoke", "a\x00b"], "ACCOUNT"),
    (["grants", "x" * 300], "ACCOUNT"),
])
def test_bad_arguments_are_one_line_exit_2(capsys: pytest.CaptureFixture[str], config: str, args: list[str],
                                           needle: str) -> None:
    code, out, err = run(capsys, "ratelimit", args[0], "-c", config, *args[1:])
    assert code == 2 and err.startswith("mailflow: ") and err.count("\n") == 1 and needle in err, (code, err)
    assert "Traceback" not in out + err


def test_the_cli_round_trip_and_its_audit(capsys: pytest.CaptureFixture[str], config: str,
                                          published: list[events.Event], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUDO_USER", "alice")
    code, out, _ = run(capsys, "ratelimit", "grant", "Shop.Example", "5/hour", "--for", "1h", "--reason", "launch", "-c", config)
    assert code == 0 and "granted 5/hour (in place of 2/hour)" in out
    code, out, _ = run(capsys, "ratelimit", "extend", "shop.example", "--for", "30m", "-c", config)
    assert code == 0 and "now ends" in out
    code, out, _ = run(capsys, "ratelimit", "grants", "--json", "-c", config)
    [listed] = json.loads(out)
    assert listed["account"] == "shop.example" and listed["limits"] == ["5/hour"] and 5300 < listed["seconds_left"] <= 5400
    code, out, _ = run(capsys, "ratelimit", "revoke", "shop.example", "--reason", "done", "-c", config)
    assert code == 0
    code, out, err = run(capsys, "ratelimit", "revoke", "shop.example", "-c", config)
    assert code == 1 and "has no grant" in err
    code, out, err = run(capsys, "ratelimit", "extend", "shop.example", "--for", "1h", "-c", config)
    assert code == 1 and "no grant to extend" in err
    assert [(e.kind, e.detail["how"]) for e in published] == [
        (events.GRANT_GIVEN, "given"), (events.GRANT_GIVEN, "extended"), (events.GRANT_ENDED, "revoked")]
    code, out, _ = run(capsys, "audit", "--account", "shop.example", "--json", "-c", config)
    entries = json.loads(out)
    assert [e["action"] for e in entries] == ["ratelimit revoke", "ratelimit extend", "ratelimit grant"]
    assert entries[0]["why"] == "done" and entries[2]["why"] == "launch" and entries[2]["who"].endswith("(sudo by alice)")


def test_an_audit_write_that_fails_says_the_action_is_done_and_exits_3(
        capsys: pytest.CaptureFixture[str], config: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from mailflow.store.base import StoreError

    def refuse(self: SqliteStore, value: str, keep: int) -> None:
        raise StoreError("sqlite: database or disk is full")

    monkeypatch.setattr(SqliteStore, "add_audit", refuse)
    code, out, err = run(capsys, "ratelimit", "reset", "shop.example", "-c", config)
    assert code == 3 and "buckets refilled" in out
    assert err == "mailflow: ratelimit reset done, but NOT written to the audit log: sqlite: database or disk is full\n"


def test_the_hot_path_never_reads_the_store(tmp_path: Path) -> None:
    class Counting(SqliteStore):
        reads = 0

        def grants(self) -> dict[str, str]:
            Counting.reads += 1
            return super().grants()

    store = Counting(str(tmp_path / "state.db"))
    store.swap_grant("shop.example", None, grant("5/hour", until=NOW + 3600).value())
    grants = GrantOverlay(SETTINGS, store, 3600, clock=lambda: NOW)
    try:
        for _ in range(1000):
            grants.policy_for("shop.example")
            grants.policy_for("other.example")
        assert Counting.reads == 1  # the read at start; then only the background refresh (hourly here)
    finally:
        grants.stop()
        store.close()
