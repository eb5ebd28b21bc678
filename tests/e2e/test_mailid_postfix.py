"""X-Mailflow-ID through a real Postfix: the client's copies are gone from the delivered message,
the milter's one reads back as the account; a complaint built from the delivered message
suppresses its recipient, and Postfix refuses the next RCPT to them."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from mailflow.config import parse_config
from mailflow.feedback.arf import Attribution, process
from mailflow.feedback.mailid import make_id, read_id
from mailflow.store import open_store
from mailflow.suppression.keys import read_key_file
from tests.helpers import postfix
from tests.helpers.arf import BOUNDARY, write_id_key
from tests.helpers.postfix import running_rig, wait_for

pytestmark = [
    pytest.mark.postfix,
    pytest.mark.skipif(not postfix.available(), reason="needs root and Debian's postfix (make test installs it)"),
]

USERS = {"bob@shop.example": "secret"}


def complaint_about(delivered: str) -> bytes:
    """A Yahoo-style report wrapping the message as the receiver got it."""
    original = delivered.split("\n\n", 1)[1] if delivered.startswith("X-Mail-Args") else delivered
    return (f'Message-ID: <r1@loop.example>\r\nFrom: <feedback@arf.mail.yahoo.com>\r\nMIME-Version: 1.0\r\n'
            f'Content-Type: multipart/report; report-type=feedback-report; boundary="{BOUNDARY}"\r\n\r\n'
            f"--{BOUNDARY}\r\nContent-Type: text/plain\r\n\r\nabuse report\r\n"
            f"--{BOUNDARY}\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\n"
            f"User-Agent: Yahoo!-Mail-Feedback/2.0\r\nVersion: 0.1\r\n\r\n"
            f"--{BOUNDARY}\r\nContent-Type: message/rfc822\r\n\r\n{original}\r\n--{BOUNDARY}--\r\n").encode()


def test_the_id_survives_postfix_alone_and_a_complaint_suppresses(tmp_path: Path) -> None:
    key_file = write_id_key(tmp_path / "id.key")
    key = read_key_file(str(key_file))
    raw = {"store": {"url": f"sqlite://{tmp_path}/state.db"}, "ratelimit": {"limits": ["100/hour"]},
           "suppression": {"hash_key_env": "MAILFLOW_SUPPRESSION_KEY"}, "feedback": {"id_key_file": str(key_file)}}
    copied = make_id(key, "victim.example", time.time())
    with running_rig(tmp_path, raw, USERS) as (mta, milter):
        with mta.smtp() as smtp:
            smtp.login("bob@shop.example", "secret")
            smtp.sendmail("bob@shop.example", ["reader@dest.example"],
                          f"From: bob@shop.example\nTo: reader@dest.example\nSubject: news\nMessage-ID: <n1@shop.example>\n"
                          f"X-Mailflow-ID: {copied}\nX-MAILFLOW-ID: 1.junk\n\nhello\n")
        wait_for(lambda: len(mta.delivered()) == 1)
        [message] = mta.delivered()
        text = str(message["text"])
        ids = re.findall(r"(?mi)^X-Mailflow-ID: *(\S+)", text)
        assert len(ids) == 1 and read_id(key, ids[0]) == "shop.example", text

        settings = parse_config(raw, str(tmp_path))
        store = open_store(settings.store.url, 2000)
        try:
            outcome = process(settings, store, Attribution(settings, store), complaint_about(text), time.time())
        finally:
            store.close()
        assert outcome.counted and "account=shop.example by=X-Mailflow-ID" in outcome.line, outcome.line
        assert "complainer=reader@dest.example suppressed" in outcome.line

        with mta.smtp() as smtp:
            smtp.login("bob@shop.example", "secret")
            refused = smtp.sendmail("bob@shop.example", ["reader@dest.example", "other@dest.example"],
                                    "From: bob@shop.example\nSubject: again\n\nhello\n")
        assert refused == {"reader@dest.example": (
            550, b"5.7.1 <reader@dest.example>: recipient has opted out of mail from shop.example")}
