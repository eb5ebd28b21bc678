"""The reputation shadow of `mailflow replay --from-log`: over a crafted Postfix log, a list-buyer
(15 % of 300 recipients hard-bounce 5.1.1) would have been held, when its 200th recipient was
counted; a clean account is untouched; nothing is stored or published."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from mailflow import events
from mailflow.config import parse_config
from mailflow.replay.shadow import shadow_report, shadow_run
from tests.helpers.cli import run_cli

START = 1_795_600_800  # 2026-11-26T09:20:00Z: a stamp of this log, not the clock's
BOUNCE = ("host dest.example[203.0.113.5] said: 550 5.1.1 <{rcpt}>: Recipient address rejected: "
          "User unknown in virtual mailbox table (in reply to RCPT TO command)")


def stamp(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(at))


def message(n: int, at: float, login: str, recipient: str, bounced: bool) -> list[str]:
    qid = f"4B{n:08X}"
    head = f"{stamp(at)} mx1 postfix"
    to = (f"to=<{recipient}>, relay=dest.example[203.0.113.5]:25, delay=1.2, delays=0.1/0/0.6/0.5, "
          + (f"dsn=5.1.1, status=bounced ({BOUNCE.format(rcpt=recipient)})" if bounced
             else "dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as 9F00AA)"))
    return [f"{head}/smtpd[2100]: {qid}: client=mua.example[198.51.100.20]:40000, sasl_method=PLAIN, "
            f"sasl_username={login}",
            f"{head}/qmgr[2101]: {qid}: from=<{login}>, size=1024, nrcpt=1 (queue active)",
            f"{head}/smtp[2102]: {qid}: {to}",
            f"{head}/qmgr[2101]: {qid}: removed"]


def crafted_log() -> list[str]:
    """300 recipients each, one message every 20 s, over 100 minutes; the buyer's every 20th
    recipient from the 0th, 1st and 2nd bounces: 15 %."""
    lines = ["garbage without a stamp", f"{stamp(START)} mx1 kernel: unrelated"]
    for i in range(300):
        at = START + i * 20
        lines += message(2 * i, at, "buyer@list.example", f"lead{i}@dest.example", bounced=i % 20 < 3)
        lines += message(2 * i + 1, at + 1, "ann@clean.example", f"friend{i}@dest.example", bounced=False)
    return lines


CONFIG = {"accounts": {"identify": ["sasl", "local", "trusted_ip"]}, "reputation": {"mode": "monitor"}}


def test_the_list_buyer_would_have_been_held_and_the_clean_account_untouched() -> None:
    published: list[events.Event] = []
    unsubscribe = events.subscribe(published.append)
    try:
        shadow = shadow_run(parse_config(CONFIG), crafted_log())
    finally:
        unsubscribe()
    assert [(m.account, m.before, m.state) for m in shadow.moves] == [("list.example", "normal", "hold")]
    [move] = shadow.moves
    # The 200th recipient (i = 199, 66 min 20 s in) falls in the batch ending at 09:20 + 70 min.
    assert START + 199 * 20 <= move.at < START + 70 * 60
    assert move.at == START + 209 * 20 + 1  # the batch's last line: the clean account's 210th
    assert move.why == "hard bounces 15.7% (33 of 210 recipients in 24 h) >= 10% (hard_bounces hold)"
    assert "clean.example" not in shadow.standings
    assert shadow.stats.attributed == 600 and shadow.batches == 20
    assert published == []  # a shadow: no event, no store
    report = shadow_report(parse_config(CONFIG), shadow)
    assert report[0].startswith("reputation shadow: 600 deliveries read, 600 tied to an account")
    assert report[2].split()[:3] == ["list.example", "normal->hold", stamp(move.at).replace("+00:00", "Z")]


def test_replay_prints_the_shadow_after_the_what_if(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "mail.log"
    log.write_text("\n".join(crafted_log()) + "\n")
    config = tmp_path / "mailflow.toml"
    config.write_text(f'[store]\nurl = "sqlite://{tmp_path}/absent.db"\n[accounts]\n'
                      'identify = ["sasl", "local", "trusted_ip"]\n')
    code, out, err = run_cli(capsys, "replay", "--from-log", str(log), "-c", str(config))
    assert code == 0, err
    shadow = out[out.index("reputation shadow"):].splitlines()
    assert shadow[0].startswith("reputation shadow ([reputation] is not in the config: its defaults)")
    assert [line.split()[:2] for line in shadow[2:]] == [["list.example", "normal->hold"]]
