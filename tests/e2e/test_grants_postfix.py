"""A grant through a real Postfix, on both stores: at 2/hour the 3rd message waits; a grant of
5/hour lets more through within refresh_ms; a revoke brings the refusal back; the audit log
names each action with its user and reason."""

from __future__ import annotations

import json
import smtplib
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import postfix
from tests.helpers.postfix import PrivatePostfix, empty_store_url, running_rig
from tests.helpers.servers import MilterProcess

pytestmark = [
    pytest.mark.postfix,
    pytest.mark.skipif(not postfix.available(), reason="needs root and Debian's postfix (make test installs it)"),
]

REFRESH_MS = 200
SETTLE = 3 * REFRESH_MS / 1000  # "within refresh_ms", with room for a busy CI machine
USERS = {"bob@shop.example": "secret"}
MESSAGE = "From: bob@shop.example\nTo: undisclosed-recipients:;\nSubject: grants e2e\n\nhello\n"


def cli(milter: MilterProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailflow", *args, "-c", str(milter.config_path)],
                          capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "SUDO_USER": "alice"})


def send(mta: PrivatePostfix, n: int) -> int | None:
    """Send one message; None when accepted, else the refusal's code."""
    with mta.smtp() as smtp:
        smtp.login("bob@shop.example", "secret")
        try:
            smtp.sendmail("bob@shop.example", [f"r{n}@dest.example"], MESSAGE)
        except smtplib.SMTPRecipientsRefused as exc:
            return int(exc.recipients[f"r{n}@dest.example"][0])
        except smtplib.SMTPDataError as exc:  # a grant that ended between RCPT and end of message
            return exc.smtp_code
    return None


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_grant_raises_the_limit_fleet_wide_and_revoke_ends_it(tmp_path: Path, request: pytest.FixtureRequest,
                                                             backend: str) -> None:
    url = empty_store_url(backend, tmp_path, request)
    config = {"store": {"url": url, "refresh_ms": REFRESH_MS}, "ratelimit": {"limits": ["2/hour"]}}
    with running_rig(tmp_path, config, USERS) as (mta, milter):
        assert [send(mta, 1), send(mta, 2), send(mta, 3)] == [None, None, 451]

        given = cli(milter, "ratelimit", "grant", "shop.example", "5/hour", "--for", "1h", "--reason", "launch day")
        assert given.returncode == 0 and "granted 5/hour (in place of 2/hour)" in given.stdout, given.stderr
        time.sleep(SETTLE)
        assert [send(mta, 4), send(mta, 5), send(mta, 6), send(mta, 7)] == [None, None, None, 451]
        listed = json.loads(cli(milter, "ratelimit", "grants", "--json").stdout)
        assert [(g["account"], g["limits"], g["reason"]) for g in listed] == [("shop.example", ["5/hour"], "launch day")]

        revoked = cli(milter, "ratelimit", "revoke", "shop.example", "--reason", "campaign over")
        assert revoked.returncode == 0, revoked.stderr
        time.sleep(SETTLE)
        assert send(mta, 8) == 451
        assert cli(milter, "ratelimit", "grants").stdout.strip() == "no grants"

        entries = json.loads(cli(milter, "audit", "--account", "shop.example", "--json").stdout)
        assert [(e["action"], e["why"]) for e in entries] == [("ratelimit revoke", "campaign over"),
                                                            ("ratelimit grant", "launch day")]
        assert all(e["who"].endswith("(sudo by alice)") for e in entries)
        text = cli(milter, "audit").stdout
        assert "ratelimit grant shop.example  5/hour for 1h" in text and "why: launch day" in text
    eom = [d for d in milter.decisions() if d["stage"] == "eom" and d.get("account") == "shop.example"]
    assert len([d for d in eom if d["action"] == "continue"]) == 5  # 2 under the config, 3 under the grant
