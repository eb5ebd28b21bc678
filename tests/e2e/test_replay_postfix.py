"""The same corpus, as real SMTP through a private Postfix with the milter on smtpd_milters and
non_smtpd_milters. Sessions SMTP cannot reproduce from this host (Postfix pickup, clients on
other networks) are reported as skipped, by name."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import postfix
from tests.helpers.corpus import (
    SESSION_FILES,
    corpus_config,
    corpus_logins,
    load_corpus_lists,
    replay,
    session_count,
    summary_line,
)
from tests.helpers.postfix import PrivatePostfix
from tests.helpers.servers import MilterProcess

pytestmark = [
    pytest.mark.postfix,
    pytest.mark.skipif(not postfix.available(), reason="needs root and Debian's postfix (make test installs it)"),
]

NOT_SMTP = {
    "missing-auth-authen-from-the-internet-is-inbound",
    "postfix-pickup-is-judged-at-end-of-message",
    "postfix-pickup-over-the-limit-is-deferred",
    "postfix-pickup-message-larger-than-the-bucket-bounces",
    "sendmail-msp-user-is-charged",  # Sendmail's MSP listener and sendmail -bs: {daemon_name}, {client_addr}
    "sendmail-msp-user-account-is-full-at-end-of-message",
    "sendmail-bs-is-local-mail",
    # A trusted server must be on another network: loopback is never trusted_ip.
    "trusted-web-server-by-ip",
    "trusted-web-server-account-comes-from-the-ip-map",
}


def test_the_corpus_replays_green_through_postfix(tmp_path: Path) -> None:
    milter = MilterProcess(tmp_path, corpus_config(f"sqlite://{tmp_path}/state.db")).start()
    load_corpus_lists(milter.config_path)
    mta = PrivatePostfix(milter.port, sasl_users=corpus_logins())
    try:
        mta.start()
        result = replay(*SESSION_FILES, "--smtp", f"127.0.0.1:{mta.port}")
    finally:
        mta.stop()
        milter.stop()
    assert result.returncode == 0, result.stdout + result.stderr + milter.log()[-3000:]
    skipped = {line.split()[1].rstrip(":") for line in result.stdout.splitlines() if line.startswith("SKIP ")}
    assert skipped == NOT_SMTP
    assert summary_line(result.stdout) == f"{session_count() - len(NOT_SMTP)} passed, 0 failed, {len(NOT_SMTP)} skipped"


def test_a_real_postfix_log_replays_honestly(tmp_path: Path) -> None:
    """A what-if of a real Postfix log: header rules are not judged (the bulk message that carried
    its List-Unsubscribe is not refused for lacking one), suppression and holds are read from the
    store, and --details names each message by its queue id."""
    config = {"store": {"url": f"sqlite://{tmp_path}/state.db"}, "ratelimit": {"limits": ["100/hour"]},
              "bulk": {"min_recipients": 2}, "suppression": {"hash_key_env": "MAILFLOW_SUPPRESSION_KEY"}}
    milter = MilterProcess(tmp_path, config).start()
    mta = PrivatePostfix(milter.port, sasl_users={"bob@shop.example": "pw", "amy@held.example": "pw"})
    sent: dict[str, str] = {}
    try:
        mta.start()
        for login, recipients, extra in (("bob@shop.example", ["a@dest.example", "b@dest.example"],
                                          "List-Unsubscribe: <mailto:leave@shop.example>\n"),
                                         ("amy@held.example", ["c@dest.example"], ""),
                                         ("bob@shop.example", ["trap@dest.example"], "")):
            with mta.smtp() as smtp:
                smtp.login(login, "pw")
                smtp.mail(login)
                for rcpt in recipients:
                    smtp.rcpt(rcpt)
                code, reply = smtp.data(f"From: {login}\n{extra}Subject: t\n\nhi\n".encode())
                assert code == 250, reply
                sent[recipients[0]] = reply.decode().rsplit(" ", 1)[-1]
        mta.wait_delivered(3)
        log = tmp_path / "mail.log"
        log.write_text(mta.maillog())
    finally:
        mta.stop()
        milter.stop()
    for args in (("account", "hold", "held.example"), ("suppress", "add", "--reason", "trap", "trap@dest.example")):
        subprocess.run([sys.executable, "-m", "mailflow", *args, "-c", str(milter.config_path)], check=True,
                       capture_output=True, timeout=60)
    result = replay("--from-log", str(log), "--details", "-c", str(milter.config_path))
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()[:3]}
    assert rows == {sent["a@dest.example"]: ["shop.example", "accepted", "ok"],
                    sent["c@dest.example"]: ["held.example", "held", "account_held"],
                    sent["trap@dest.example"]: ["shop.example", "rejected", "suppressed"]}, result.stdout
    assert "not judged (no headers in a log); 1 message had enough recipients for the bulk gate" in result.stdout
