import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailflow.config import parse_config
from mailflow.replay.postfix_log import sessions_from_log
from mailflow.replay.whatif import what_if
from mailflow.store.sqlite import SqliteStore
from mailflow.suppression.entries import GLOBAL, Matcher
from mailflow.suppression.keys import Keyring
from mailflow.suppression.normalize import AddressForms

LOG = Path(__file__).resolve().parents[1] / "fixtures" / "mail.log"


def test_sessions_from_a_postfix_log() -> None:
    sessions = {s.name: s for s in sessions_from_log(LOG.read_text().splitlines(), year=2026)}
    assert set(sessions) == {"4A1B2C3D4E", "5B2C3D4E5F", "6C3D4E5F6A", "7D4E5F6A7B"}
    sasl = sessions["4A1B2C3D4E"]
    assert (sasl.login, sasl.mail_from, sasl.client.address) == ("bob@shop.example", "bob@shop.example", "192.0.2.10")
    # nrcpt=3 but only two to= lines: the third recipient still counts.
    assert sasl.rcpt_to == ("a@dest.example", "b@dest.example", "unlogged-3@recipient.invalid")
    pickup = sessions["5B2C3D4E5F"]
    assert pickup.client.is_pickup and pickup.mail_from == "wp@blog.example" and pickup.login is None
    assert sessions["6C3D4E5F6A"].client.address == "198.51.100.7"
    assert sessions["7D4E5F6A7B"].client.address == "2001:db8::25" and sessions["7D4E5F6A7B"].rcpt_to == (
        "unlogged-1@recipient.invalid",
    )
    assert [s.name for s in sessions_from_log(LOG.read_text().splitlines(), year=2026)][0] == "4A1B2C3D4E"


@given(st.lists(st.text(max_size=200), max_size=20))
def test_the_log_parser_never_raises(lines: list[str]) -> None:
    sessions_from_log(lines, year=2026)


def test_what_if_runs_in_log_time() -> None:
    """600 messages in 10 minutes, then 600 more an hour later: the bucket refilled in between."""
    lines = []
    for n in range(1200):
        minute = n // 60 if n < 600 else 70 + (n - 600) // 60
        stamp = f"Nov 22 10:{minute % 60:02d}:{n % 60:02d}" if minute < 60 else f"Nov 22 11:{minute - 60:02d}:{n % 60:02d}"
        qid = f"Q{n:08X}"
        lines.append(f"{stamp} mx postfix/smtpd[1]: {qid}: client=mua[198.51.100.1], sasl_method=PLAIN, sasl_username=bob@shop.example")
        lines.append(f"{stamp} mx postfix/qmgr[2]: {qid}: from=<bob@shop.example>, size=1, nrcpt=1 (queue active)")
        lines.append(f"{stamp} mx postfix/smtp[3]: {qid}: to=<r{n}@dest.example>, relay=x, status=sent (ok)")
    report = what_if(parse_config({"ratelimit": {"limits": ["500/hour"]}}), sessions_from_log(lines, year=2026))
    shop = report["shop.example"]
    assert shop["messages"] == 1200
    # Each burst: 500 tokens plus about 83 refilled during its ten minutes. Replayed in wall-clock
    # time instead, the whole day would have got 500.
    assert 2 * 575 <= shop["accepted"] <= 2 * 585
    assert shop["deferred"] == 1200 - shop["accepted"] and shop["rcpt_deferred"] == shop["deferred"]


def test_what_if_reports_inbound_separately() -> None:
    sessions = sessions_from_log(LOG.read_text().splitlines(), year=2026)
    report = what_if(parse_config({}), sessions)
    assert report["(inbound)"]["inbound"] == 1
    assert report["shop.example"]["accepted"] == 2 and report["blog.example"]["accepted"] == 1


def _logged(qid: str, login: str, recipients: int, second: int = 1) -> list[str]:
    stamp = f"Nov 22 10:00:{second:02d}"
    lines = [f"{stamp} mx postfix/smtpd[1]: {qid}: client=mua[198.51.100.1], sasl_method=PLAIN, sasl_username={login}",
             f"{stamp} mx postfix/qmgr[2]: {qid}: from=<{login}>, size=1, nrcpt={recipients} (queue active)"]
    return lines + [f"{stamp} mx postfix/smtp[3]: {qid}: to=<r{n}@dest.example>, relay=x, status=sent (ok)"
                    for n in range(recipients)]


def test_header_rules_are_not_judged_from_a_log() -> None:
    """30 recipients, no List-Unsubscribe seen (a log shows no headers): not a bulk refusal."""
    lines = _logged("AAAA000001", "news@bulk.example", 30)
    judged: list[tuple[str, str, str, str]] = []
    config = parse_config({"ratelimit": {"limits": ["1000/hour"]}, "bulk": {"min_recipients": 25}})
    report = what_if(config, sessions_from_log(lines, year=2026),
                     on_message=lambda s, account, action, reason: judged.append((s.queue_id, account, action, reason)))
    assert judged == [("AAAA000001", "bulk.example", "accepted", "ok")]
    assert report["bulk.example"]["bulk_not_judged"] == 1 and report["bulk.example"]["rejected"] == 0


def test_suppression_and_holds_are_judged_from_the_real_store(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILFLOW_TEST_KEY", "k" * 32)
    config = parse_config({"ratelimit": {"limits": ["1000/hour"]}, "suppression": {"hash_key_env": "MAILFLOW_TEST_KEY"}})
    real = SqliteStore(str(tmp_path / "state.db"))
    matcher = Matcher(AddressForms(False, True), Keyring(config.suppression.secret))
    real.add_suppressions(GLOBAL, [matcher.make_entry("r0@dest.example", "trap", "test", 0)])
    real.hold_account("held.example", "3 spam-trap hits")
    lines = [*_logged("AAAA000001", "bob@shop.example", 1, 1), *_logged("AAAA000002", "amy@held.example", 2, 2)]
    judged: list[tuple[str, str, str]] = []
    what_if(config, sessions_from_log(lines, year=2026), real,
            on_message=lambda s, account, action, reason: judged.append((s.queue_id, action, reason)))
    assert judged == [("AAAA000001", "rejected", "suppressed"), ("AAAA000002", "held", "account_held")]
    assert real.held_messages() == []  # the what-if wrote nothing to the real store
    real.close()


def test_details_on_the_command_line(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'[store]\nurl = "sqlite://{tmp_path}/none.db"\n[ratelimit]\nlimits = ["1/hour"]\n')
    result = subprocess.run([sys.executable, "-m", "mailflow", "replay", "--from-log", str(LOG), "--year", "2026",
                             "--details", "-c", str(config)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["4A1B2C3D4E", "shop.example", "accepted", "ok"]  # 1 of its 3 recipients
    assert lines[3].split() == ["7D4E5F6A7B", "shop.example", "deferred", "ratelimit"]
    assert lines[2].split() == ["6C3D4E5F6A", "(inbound)", "inbound", "inbound"]
    assert "not judged (no headers in a log)" in result.stdout
    assert f"not judged ({tmp_path}/none.db does not exist)" in result.stdout
    assert not (tmp_path / "none.db").exists()
