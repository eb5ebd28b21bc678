"""X-Mailflow-ID through a real Sendmail 8.17: the milter's header changes (CHGHDRS, ADDHDRS) are
applied, the client's copies gone from the delivered message."""

from __future__ import annotations

import re
import time
from pathlib import Path

from mailflow.feedback.mailid import make_id, read_id
from mailflow.suppression.keys import read_key_file
from tests.e2e.test_sendmail import SASL_USERS, milter_config, packages  # noqa: F401 (packages: a fixture)
from tests.helpers.arf import write_id_key
from tests.helpers.sendmail import PrivateSendmail
from tests.helpers.servers import MilterProcess


def test_sendmail_applies_the_removal_and_the_addition(packages: None, tmp_path: Path) -> None:  # noqa: F811
    key_file = write_id_key(tmp_path / "id.key")
    key = read_key_file(str(key_file))
    config = {**milter_config(f"sqlite://{tmp_path}/state.db", "refuse"), "feedback": {"id_key_file": str(key_file)}}
    milter = MilterProcess(tmp_path, config).start()
    try:
        mta = PrivateSendmail(milter.port, SASL_USERS).start()
        try:
            with mta.smtp() as smtp:
                smtp.login("alice@shop.example", "secret")
                smtp.sendmail("alice@shop.example", ["stamped@dest.example"],
                              f"From: alice@shop.example\nTo: stamped@dest.example\nSubject: id\n"
                              f"X-Mailflow-ID: {make_id(key, 'victim.example', time.time())}\n"
                              "x-mailflow-id: 1.junk\n\nhello\n")
            [message] = mta.wait_delivered(lambda m: m.to("stamped@dest.example"))
        finally:
            mta.stop()
    finally:
        milter.stop()
    ids = re.findall(r"(?mi)^X-Mailflow-ID: *(\S+)", message.text)
    assert len(ids) == 1 and read_id(key, ids[0]) == "shop.example", message.text
