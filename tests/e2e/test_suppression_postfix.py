"""Suppression, spam traps and the bulk gate through a real Postfix, lists managed with the CLI."""

from __future__ import annotations

import smtplib
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import postfix
from tests.helpers.postfix import running_rig, wait_for
from tests.helpers.servers import MilterProcess

pytestmark = [
    pytest.mark.postfix,
    pytest.mark.skipif(not postfix.available(), reason="needs root and Debian's postfix (make test installs it)"),
]

USERS = {"bob@shop.example": "secret", "carol@trapped.example": "secret", "news@bulk.example": "secret"}


def cli(milter: MilterProcess, *args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "mailflow", *args, "-c", str(milter.config_path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def message(sender: str, *extra: str) -> str:
    return "\n".join([f"From: {sender}", "Subject: e2e", *extra, "", "hello", ""])


def test_suppression_traps_and_bulk_through_postfix(tmp_path: Path) -> None:
    config = {
        "store": {"url": f"sqlite://{tmp_path}/state.db"},
        "ratelimit": {"limits": ["100/hour"]},
        "suppression": {"hash_key_env": "MAILFLOW_SUPPRESSION_KEY", "trap_hits_before_hold": 2},
    }
    with running_rig(tmp_path, config, USERS) as (mta, milter):
        cli(milter, "suppress", "add", "--account", "shop.example", "optout@dest.example")
        cli(milter, "suppress", "add", "--reason", "trap", "spamtrap@traps.example")
        cli(milter, "suppress", "add", "--account", "blog.example", "optout-local@dest.example")

        # 1. An opted-out recipient is refused at RCPT; the others are delivered.
        with mta.smtp() as smtp:
            smtp.login("bob@shop.example", "secret")
            refused = smtp.sendmail("bob@shop.example", ["a@dest.example", "optout@dest.example", "b@dest.example"],
                                    message("bob@shop.example"))
        assert refused == {"optout@dest.example": (550, b"5.7.1 <optout@dest.example>: recipient has opted out of mail from shop.example")}
        wait_for(lambda: any(m["sender"] == "<bob@shop.example>" for m in mta.delivered()))
        [bob] = [m for m in mta.delivered() if m["sender"] == "<bob@shop.example>"]
        assert bob["recipients"] == ["<a@dest.example>", "<b@dest.example>"]

        # 2. Spam-trap hits: refused like any suppression; the second one holds the account.
        for round_ in (1, 2):
            with mta.smtp() as smtp:
                smtp.login("carol@trapped.example", "secret")
                refused = smtp.sendmail("carol@trapped.example", ["spamtrap@traps.example", f"friend{round_}@dest.example"],
                                        message("carol@trapped.example"))
            assert refused["spamtrap@traps.example"][1].endswith(b"recipient is on the provider's suppression list")
        wait_for(lambda: len(mta.hold()) == 1)
        assert "trapped.example" in cli(milter, "account", "list")
        assert [d["action"] for d in milter.decisions() if d.get("account") == "trapped.example" and d["stage"] == "eom"] == ["continue", "hold"]

        # 3. Bulk mail without a way out is refused at end of message; with one it is delivered.
        with mta.smtp() as smtp:
            smtp.login("news@bulk.example", "secret")
            with pytest.raises(smtplib.SMTPDataError) as err:
                smtp.sendmail("news@bulk.example", ["reader@dest.example"], message("news@bulk.example", "Precedence: bulk"))
            assert err.value.smtp_code == 550 and b"List-Unsubscribe" in err.value.smtp_error
            smtp.sendmail("news@bulk.example", ["reader@dest.example"],
                          message("news@bulk.example", "Precedence: bulk", "List-Unsubscribe: <mailto:leave@bulk.example>"))
        wait_for(lambda: any(m["sender"] == "<news@bulk.example>" for m in mta.delivered()))

        # 4. Local mail: the suppressed recipient is removed at end of message, the rest delivered.
        assert mta.sendmail("wp@blog.example", ["ok@dest.example", "optout-local@dest.example"],
                            message("wp@blog.example")).returncode == 0
        wait_for(lambda: any(m["sender"] == "<wp@blog.example>" for m in mta.delivered()))
        [local] = [m for m in mta.delivered() if m["sender"] == "<wp@blog.example>"]
        assert local["recipients"] == ["<ok@dest.example>"]
        assert [d["removed"].strip("<>") for d in milter.decisions() if d.get("account") == "blog.example"] == ["optout-local@dest.example"]
