"""Hostile input through a real Postfix and libmilter (issue 13, findings 2 and 3): replies that
embed a client's input are still sent, refusals never become `on_error = "accept"`, `%` reaches
the client once, and headers longer than Postfix passes to milters are judged and logged."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import postfix
from tests.helpers.postfix import running_rig

pytestmark = [
    pytest.mark.postfix,
    pytest.mark.skipif(not postfix.available(), reason="needs root and Debian's postfix (make test installs it)"),
]

USERS = {"bob@shop.example": "secret"}


def folded(size: int, tail: str = "") -> str:
    """A header value of about `size` characters in lines of 998, as a mail client folds it."""
    return "\r\n ".join(["x" * 997] * (size // 1000)) + tail


def test_hostile_replies_and_headers_through_postfix(tmp_path: Path) -> None:
    config = {
        "store": {"url": f"sqlite://{tmp_path}/state.db"},
        "milter": {"on_error": "accept"},  # the setting under which a failed reply used to let mail through
        "ratelimit": {"limits": ["100/hour"]},
        "suppression": {"hash_key_env": "MAILFLOW_SUPPRESSION_KEY"},
    }
    with running_rig(tmp_path, config, USERS) as (mta, milter):
        added = subprocess.run([sys.executable, "-m", "mailflow", "suppress", "add", "@dest.example",
                                "-c", str(milter.config_path)], capture_output=True, text=True, timeout=60)
        assert added.returncode == 0, added.stderr
        with mta.smtp() as smtp:
            smtp.login("bob@shop.example", "secret")
            assert smtp.mail("bob@shop.example")[0] == 250
            # A 1,000-character local part: the reply embeds it, bounded; libmilter sends it.
            code, text = smtp.rcpt("a" * 1000 + "@dest.example")
            assert (code, text) == (550, b"5.7.1 <" + b"a" * 77 + b"...>: recipient is on the provider's suppression list")
            # One `%` in, one `%` out (the adapter doubles it for libmilter, Postfix undoubles it).
            assert smtp.rcpt("100%off@dest.example") == (550, b"5.7.1 <100%off@dest.example>: recipient is on the provider's suppression list")
            assert smtp.rcpt("friend@elsewhere.example")[0] == 250

            # A From: with a 100 KB display name: Postfix passes milters at most 60,000 bytes of it;
            # judged (refused: too long for an address header) at once, and the cut is logged.
            started = time.monotonic()
            code, text = smtp.data(f"From: {folded(100_000)} <bob@shop.example>\r\nSubject: hi\r\n\r\nhello\r\n")
            assert time.monotonic() - started < 5
            assert (code, text) == (550, b"5.7.1 From: header is longer than 998 characters; it needs exactly one valid address")

            # A List-Unsubscribe: whose URI comes after Postfix's cut: the milter never sees it.
            smtp.rset()
            smtp.mail("bob@shop.example")
            smtp.rcpt("reader@elsewhere.example")
            code, text = smtp.data(f"From: bob@shop.example\r\nPrecedence: bulk\r\nList-Unsubscribe: {folded(70_000)}\r\n"
                                   " <mailto:leave@shop.example>\r\n\r\nhello\r\n")
            assert code == 550 and b"List-Unsubscribe" in text
        log = milter.log()
        assert log.count("possibly cut") == 2, log[-3000:]
        assert "applying on_error" not in log and "Traceback" not in log
