"""Reload and restart under load through a real, private Postfix: SIGHUP never costs a message a
4xx, and a SIGTERM (then a new milter) loses none: what got a 250 reaches the sink, what got a
4xx was never half-delivered (the client still holds it)."""

from __future__ import annotations

import re
import signal
import smtplib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import postfix
from tests.helpers.postfix import PrivatePostfix
from tests.helpers.servers import MilterProcess, write_config

pytestmark = [
    pytest.mark.postfix,
    pytest.mark.skipif(not postfix.available(), reason="needs root and Debian's postfix (make test installs it)"),
]

THREADS = 4
PER_SESSION = 3  # messages per SMTP session: sessions span reloads
RECIPIENTS = ["a@dest.example", "b@dest.example"]


def milter_config(store: str, unit: str) -> dict[str, Any]:
    return {
        "store": {"url": store, "timeout_ms": 2000},
        "accounts": {"local_smtp": "sender_domain"},  # plain SMTP from 127.0.0.1, charged by sender domain
        "ratelimit": {"limits": ["1000000/hour"], "unit": unit},  # unit shows in every eom line's cost
    }


class Load:
    """THREADS clients sending through Postfix until stopped; each message's reply code by token."""

    def __init__(self, mta: PrivatePostfix, tag: str) -> None:
        self.mta, self.tag = mta, tag
        self.results: dict[str, int] = {}
        self.stopped = threading.Event()
        self.threads = [threading.Thread(target=self._client, args=(n,)) for n in range(THREADS)]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        for thread in self.threads:
            thread.join(timeout=60)

    def _client(self, n: int) -> None:
        for session in range(10_000):  # bounded; stopped long before
            if self.stopped.is_set():
                return
            try:
                smtp = self.mta.smtp()
            except OSError:
                time.sleep(0.05)
                continue
            with smtp:
                for k in range(PER_SESSION):
                    token = f"{self.tag}-{n}-{session}-{k}"
                    self.results[token] = self._send(smtp, token)
                    if self.results[token] != 250:
                        time.sleep(0.05)  # the milter is down: do not spin
                    if self.results[token] == -1:
                        break

    @staticmethod
    def _send(smtp: smtplib.SMTP, token: str) -> int:
        message = f"From: t@load.example\nTo: a@dest.example\nSubject: {token}\n\n{token}\n"
        try:
            refused = smtp.sendmail("t@load.example", RECIPIENTS, message)
        except smtplib.SMTPResponseException as exc:
            return exc.smtp_code
        except smtplib.SMTPRecipientsRefused as exc:
            return min(code for code, _ in exc.recipients.values())
        except (smtplib.SMTPException, OSError):
            return -1
        return min((code for code, _ in refused.values()), default=250)

    def codes(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for code in self.results.values():
            counts[code] = counts.get(code, 0) + 1
        return counts


@pytest.fixture
def mta() -> Iterator[PrivatePostfix]:
    mta = PrivatePostfix(None)  # the milter's port is set by start_rig, before Postfix starts
    yield mta
    mta.stop()


def start_rig(tmp_path: Path, unit: str, mta: PrivatePostfix) -> MilterProcess:
    milter = MilterProcess(tmp_path, milter_config(f"sqlite://{tmp_path}/state.db", unit)).start()
    mta.milter_port = milter.port
    mta.start()
    return milter


def delivered_tokens(mta: PrivatePostfix) -> list[str]:
    return [m for m in (re.findall(r"^Subject: (\S+)$", str(d["text"]), re.M) for d in mta.delivered()) for m in m]


def wait_log(milter: MilterProcess, pattern: str, count: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while len(re.findall(pattern, milter.log())) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{pattern!r} x{count} not logged:\n{milter.log()[-3000:]}")
        time.sleep(0.05)


def test_reloads_under_load_give_no_4xx_and_take_effect(tmp_path: Path, mta: PrivatePostfix) -> None:
    milter = start_rig(tmp_path, "recipient", mta)
    try:
        assert milter.proc is not None
        with Load(mta, "hup") as load:
            time.sleep(1)
            for n, unit in enumerate(["message", "recipient", "message"], start=1):
                write_config(milter.config_path, {**milter_config(f"sqlite://{tmp_path}/state.db", unit),
                                                  "milter": {"socket": milter.socket}})
                milter.proc.send_signal(signal.SIGHUP)
                wait_log(milter, r"reloaded: worker", n)
                time.sleep(1)
            milter.config_path.write_text(milter.config_path.read_text().replace('"message"', '"per message"'))
            milter.proc.send_signal(signal.SIGHUP)
            wait_log(milter, r"reload refused", 1)
            time.sleep(1)
        codes = load.codes()
        print(f"replies during 3 reloads and 1 refused one: {codes}")
        assert set(codes) == {250} and codes[250] >= 20, codes  # not one 4xx, not one failure
        tokens = [t for t, code in load.results.items() if code == 250]
        mta.wait_delivered(len(tokens), timeout=30)
        assert sorted(delivered_tokens(mta)) == sorted(tokens)
        assert milter.proc.poll() is None
    finally:
        milter.stop()
    log = milter.log()
    assert re.search(r"reload refused, the running config stays: .*ratelimit\.unit", log), log[-2000:]
    costs = [d["cost"] for d in milter.decisions() if d["stage"] == "eom"]
    assert costs[0] == "2" and costs[-1] == "1" and "2" in costs[costs.index("1"):]  # 2 → 1 → 2 → 1 kept
    assert "Traceback" not in log and "cut" not in log


def test_a_restart_under_load_loses_nothing(tmp_path: Path, mta: PrivatePostfix) -> None:
    milter = start_rig(tmp_path, "recipient", mta)
    try:
        assert milter.proc is not None
        with Load(mta, "term") as load:
            time.sleep(1)
            with mta.smtp() as open_session:  # a session in progress at SIGTERM finishes
                open_session.mail("t@load.example")
                open_session.rcpt("a@dest.example")
                milter.proc.send_signal(signal.SIGTERM)
                wait_log(milter, r"worker stopping", 1)
                code, _ = open_session.data(b"From: t@load.example\nSubject: term-open\n\nopen at SIGTERM\n")
                assert code == 250
            assert milter.proc.wait(timeout=30) == 0
            time.sleep(1)  # Postfix answers 451 meanwhile: the clients keep their messages
            restarted = MilterProcess(tmp_path, milter_config(f"sqlite://{tmp_path}/state.db", "recipient"),
                                      name="milter2", port=milter.port).start()
            accepted_before = load.codes().get(250, 0)
            time.sleep(2)
        try:
            codes = load.codes()
            print(f"replies around a stop and a restart: {codes}")
            tokens = [t for t, code in load.results.items() if code == 250] + ["term-open"]
            mta.wait_delivered(len(tokens), timeout=30)
            time.sleep(1)  # anything half-delivered would show up now
            assert sorted(delivered_tokens(mta)) == sorted(tokens), codes  # every 250 arrived, once; nothing else
            assert codes[250] > accepted_before >= 10, codes  # served before the stop and after the restart
            assert all(code == 250 or code == -1 or 400 <= code < 500 for code in codes), codes
        finally:
            restarted.stop()
    finally:
        milter.stop()
    assert "mailflow stopped" in milter.log() and "cut" not in milter.log()
