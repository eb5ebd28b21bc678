from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from mailflow.config import parse_config
from mailflow.replay.postfix_log import sessions_from_log
from mailflow.replay.whatif import what_if

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
