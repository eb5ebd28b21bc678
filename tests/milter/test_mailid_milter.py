"""X-Mailflow-ID through the real milter protocol: added to accepted and held outbound mail, every
copy the client wrote removed, nothing on inbound or in monitor mode; and a complaint about
that mail (the ARF reader) makes the next RCPT to the complainer refused."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mailflow.config import parse_config
from mailflow.feedback.arf import Attribution, process
from mailflow.feedback.mailid import make_id, read_id
from mailflow.milter.client import MilterClient, Response
from mailflow.store import open_store
from mailflow.suppression.keys import read_key_file
from tests.helpers.arf import Original, report, write_id_key
from tests.helpers.servers import MilterProcess

AUTH = {"{auth_authen}": "bob@shop.example"}


def config(store_url: str, key: Path | None, **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "store": {"url": store_url, "timeout_ms": 1000},
        "accounts": {"identify": ["sasl", "local", "trusted_ip"], "trusted_networks": ["192.0.2.0/24"]},
        "ratelimit": {"limits": ["100/hour"]},
        "suppression": {"hash_key_env": "MAILFLOW_SUPPRESSION_KEY"},
    }
    if key is not None:
        base["feedback"] = {"id_key_file": str(key)}
    for section, values in overrides.items():
        base[section] = {**base.get(section, {}), **values}
    return base


def send(milter: MilterProcess, sender: str, recipients: list[str], headers: list[tuple[str, str]],
         macros: dict[str, str] | None = AUTH) -> tuple[list[str], Response | None]:
    with MilterClient(milter.socket) as c:
        c.connect("mua.example", "198.51.100.20", 40000)
        c.helo("mua.example")
        if c.mail(sender, macros=macros).action != "continue":
            return [], None
        replies = [c.rcpt(r).smtp for r in recipients]
        if "continue" not in replies:
            c.abort()
            return replies, None
        for name, value in [("From", sender), ("Subject", "test"), *headers]:
            c.header(name, value)
        c.eoh()
        return replies, c.eom(macros={"i": "4ABCDEF"})


@pytest.fixture
def key(tmp_path: Path) -> Path:
    return write_id_key(tmp_path / "id.key")


def test_accepted_mail_gets_the_id_and_loses_the_clients_copies(start_milter: Callable[..., MilterProcess],
                                                               store_url: str, key: Path) -> None:
    milter = start_milter(config(store_url, key))
    copied = make_id(read_key_file(str(key)), "victim.example", 0)
    _, eom = send(milter, "bob@shop.example", ["a@x.example"],
                  [("X-Mailflow-ID", copied), ("x-mailflow-id", "1.whatever")])
    assert eom is not None and eom.action == "continue"
    assert eom.headers_changed == [("X-Mailflow-ID", 2, ""), ("X-Mailflow-ID", 1, "")]  # both removed, last first
    [(name, value)] = eom.headers_added
    assert name == "X-Mailflow-ID" and read_id(read_key_file(str(key)), value) == "shop.example"
    _, plain = send(milter, "bob@shop.example", ["a@x.example"], [])
    assert plain is not None and plain.headers_changed == [] and len(plain.headers_added) == 1
    # Refused at end of message (a second From: of a domain the account does not own): untouched.
    _, refused = send(milter, "bob@shop.example", ["a@x.example"], [("From", "ceo@bank.example"), ("X-Mailflow-ID", "1.x")])
    assert refused is not None and refused.action == "reject" and not refused.headers_added
    assert not refused.headers_changed


def test_held_mail_is_stamped_too(start_milter: Callable[..., MilterProcess], tmp_path: Path, key: Path) -> None:
    url = f"sqlite://{tmp_path}/state.db"
    milter = start_milter(config(url, key))
    store = open_store(url)
    store.hold_account("shop.example", "under review")
    store.close()
    _, eom = send(milter, "bob@shop.example", ["a@x.example"], [("X-Mailflow-ID", "1.copied")])
    assert eom is not None and eom.quarantine is not None
    assert [name for name, _ in eom.headers_added] == ["X-Mailflow-ID"] and len(eom.headers_changed) == 1


def test_nothing_on_inbound_mail_in_monitor_mode_or_without_a_key(start_milter: Callable[..., MilterProcess],
                                                                  tmp_path: Path, key: Path) -> None:
    url = f"sqlite://{tmp_path}/state.db"
    enforcing = start_milter(config(url, key))
    with MilterClient(enforcing.socket) as c:  # inbound: accepted at MAIL, so no header can be added or removed
        c.connect("mx.remote.example", "198.51.100.30", 40000)
        assert c.mail("stranger@remote.example").action == "accept"
    monitor = start_milter(config(url, key, milter={"mode": "monitor"}), name="monitor")
    _, watched = send(monitor, "bob@shop.example", ["a@x.example"], [("X-Mailflow-ID", "1.x")])
    assert watched is not None and not watched.headers_added and not watched.headers_changed
    keyless = start_milter(config(url, None), name="keyless")
    _, plain = send(keyless, "bob@shop.example", ["a@x.example"], [("X-Mailflow-ID", "1.x")])
    assert plain is not None and not plain.headers_added and not plain.headers_changed


def test_a_complaint_about_stamped_mail_refuses_the_next_rcpt_to_the_complainer(
        start_milter: Callable[..., MilterProcess], store_url: str, key: Path, tmp_path: Path) -> None:
    raw = config(store_url, key)
    milter = start_milter(raw)
    _, eom = send(milter, "bob@shop.example", ["reader@mail.example"], [])
    assert eom is not None
    [(_, stamp)] = eom.headers_added
    # The receiver's feedback loop sends the message back; its From: names a domain nobody owns,
    # so only the header can attribute it.
    arf = report(Original(sender="news@unowned.example", to="reader@mail.example", mailflow_id=stamp))
    settings = parse_config(raw, str(tmp_path))
    store = open_store(store_url, 2000)
    try:
        outcome = process(settings, store, Attribution(settings, store), arf, time.time())
    finally:
        store.close()
    assert outcome.counted and "account=shop.example by=X-Mailflow-ID" in outcome.line, outcome.line
    deadline = time.monotonic() + 10  # Redis: the milter's suppression replica catches up within refresh_ms
    while True:
        replies, _ = send(milter, "bob@shop.example", ["reader@mail.example", "other@mail.example"], [])
        if replies[0] != "continue" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert replies[0].startswith("550 5.7.1 <reader@mail.example>: recipient has opted out of mail from shop.example")
    assert replies[1] == "continue"
