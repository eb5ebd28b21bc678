"""The same corpus, as real SMTP through a private Postfix with the milter on smtpd_milters and
non_smtpd_milters. Sessions SMTP cannot reproduce from this host (Postfix pickup, clients on
other networks) are reported as skipped, by name."""

from __future__ import annotations

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
