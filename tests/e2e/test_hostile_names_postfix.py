"""A local customer names an account with a terminal escape: Postfix's sendmail passes
`-f 'php@ev<ESC>c.example'` to the milter, whose account is named after the sender domain. A From: that looks like
paypal.com gets the message held and recorded; `mailflow held` and `mailflow top` show the account
printable, never the raw escape. Both stores, a real Postfix."""

from __future__ import annotations

import re
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

CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # any control character but tab and newline


def cli(milter: MilterProcess, *args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "mailflow", *args, "-c", str(milter.config_path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_an_escape_in_a_local_sender_domain_never_reaches_the_admin_raw(tmp_path: Path, store_url: str) -> None:
    config = {"store": {"url": store_url}, "accounts": {"identify": ["sasl", "local"]},
              "forgery": {"protected_brands": ["paypal.com"], "rules": {"from_header": "off", "from_domain": "off"}}}
    with running_rig(tmp_path, config, {}) as (mta, milter):
        done = mta.sendmail("php@ev\x1bc.example", ["a@dest.example"], "From: service@paypa1.com\nSubject: x\n\nhi\n")
        assert done.returncode == 0, done.stderr
        wait_for(lambda: any(d.get("action") == "hold" for d in milter.decisions()))
        [held] = [d for d in milter.decisions() if d.get("action") == "hold"]
        assert "\\u001b" in str(held["account"])  # the customer did get an escape into the account (escaped in the log)
        wait_for(lambda: "rcpt" in cli(milter, "held"), timeout=10)
        listing = cli(milter, "held")
        assert not CONTROL.search(listing), listing
        assert "ev?" in listing
        top = cli(milter, "top")
        assert not CONTROL.search(top), top
