"""The real milter daemon, driven over the milter protocol as an MTA would."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from miltertest import constants as C

from mailflow.milter.client import MilterClient
from tests.helpers.redis_cluster import store_url_with_cluster  # noqa: F401 (store_url: a Cluster too)
from tests.helpers.servers import MilterProcess

AUTH = {"{auth_authen}": "bob@shop.example"}


def config(store_url: str, **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "store": {"url": store_url, "timeout_ms": 250},
        "accounts": {"identify": ["sasl", "local", "trusted_ip"], "trusted_networks": ["192.0.2.0/24"]},
        "ratelimit": {"limits": ["3/hour"]},
    }
    for section, values in overrides.items():
        base[section] = {**base.get(section, {}), **values}
    return base


def send(milter: MilterProcess, sender: str, recipients: list[str], macros: dict[str, str] | None = None,
         client: tuple[str, str, int] = ("mua.example", "198.51.100.20", 40000)) -> tuple[list[str], str]:
    """One SMTP transaction; returns the reply to each RCPT and the end-of-message reply."""
    with MilterClient(milter.socket) as c:
        c.connect(*client)
        c.helo("mua.example")
        mail = c.mail(sender, macros=macros)
        if mail.action != "continue":
            return [], mail.smtp
        replies = [c.rcpt(r).smtp for r in recipients]
        if not any(r == "continue" for r in replies):
            c.abort()
            return replies, "no recipients"
        c.header("From", sender)
        c.header("Subject", "test")
        c.eoh()
        return replies, c.eom(macros={"i": "4ABCDEF"}).smtp


@pytest.fixture
def milter(start_milter: Callable[..., MilterProcess], store_url: str) -> MilterProcess:
    return start_milter(config(store_url))


def test_the_recipient_over_the_limit_gets_451(milter: MilterProcess) -> None:
    rcpt, eom = send(milter, "bob@shop.example", ["a@x.example", "b@x.example", "c@x.example", "d@x.example"], AUTH)
    assert rcpt[:3] == ["continue"] * 3
    assert rcpt[3].startswith("451 4.7.1 Rate limit 3/hour for shop.example reached; try again in ")
    assert eom == "continue"
    rcpt, eom = send(milter, "bob@shop.example", ["e@x.example"], AUTH)
    assert rcpt[0].startswith("451 4.7.1")
    decision = milter.decisions()[-1]
    assert decision["stage"] == "rcpt" and decision["account"] == "shop.example" and decision["action"] == "tempfail"


def test_one_log_line_per_message_with_the_facts(milter: MilterProcess) -> None:
    send(milter, "bob@shop.example", ["a@x.example", "b@x.example"], AUTH)
    [line] = [d for d in milter.decisions() if d["stage"] == "eom"]
    assert line["qid"] == "4ABCDEF" and line["account"] == "shop.example" and line["source"] == "sasl"
    assert line["identity"] == "bob@shop.example" and line["recipients"] == "2" and line["cost"] == "2"
    assert line["action"] == "continue" and line["reason"] == "ok"


def test_inbound_mail_is_accepted_untouched(milter: MilterProcess) -> None:
    for _ in range(5):
        _, reply = send(milter, "stranger@remote.example", ["user@shop.example"])
        assert reply == "accept"
    assert milter.decisions() == []


def test_message_unit_and_rejected_messages_cost_nothing(start_milter: Callable[..., MilterProcess], store_url: str) -> None:
    milter = start_milter(config(store_url, ratelimit={"unit": "message", "limits": ["2/hour"]}))
    many = [f"r{i}@x.example" for i in range(10)]
    assert send(milter, "bob@shop.example", many, AUTH) == (["continue"] * 10, "continue")
    # An aborted transaction is not charged.
    with MilterClient(milter.socket) as c:
        c.connect("mua", "198.51.100.20", 1)
        c.mail("bob@shop.example", macros=AUTH)
        c.rcpt("z@x.example")
        c.abort()
    assert send(milter, "bob@shop.example", many, AUTH)[1] == "continue"
    assert send(milter, "bob@shop.example", many, AUTH)[0][0].startswith("451 4.7.1")


def test_recipients_beyond_the_capacity_are_deferred_not_rejected(milter: MilterProcess) -> None:
    """The client retries deferred recipients in a later transaction, so they are delivered
    once the bucket refills; a 5xx would bounce mail that could have gone out."""
    rcpt, eom = send(milter, "bob@shop.example", [f"r{i}@x" for i in range(6)], AUTH)
    assert rcpt[:3] == ["continue"] * 3 and eom == "continue"
    assert all(r.startswith("451 4.7.1 Rate limit 3/hour for shop.example") for r in rcpt[3:])


def test_trusted_ip_submission(start_milter: Callable[..., MilterProcess], store_url: str) -> None:
    milter = start_milter(config(store_url, accounts={"ip_map": {"192.0.2.0/28": "web.example"}},
                                 forgery={"accounts": {"web.example": {"domains": ["customer.example"]}}}))
    send(milter, "app@customer.example", ["a@x.example"], client=("web1", "192.0.2.5", 3333))
    send(milter, "app@customer.example", ["a@x.example"], client=("web2", "192.0.2.99", 3333))
    accounts = [(d["source"], d["account"]) for d in milter.decisions()]
    # Without an ip_map entry: the account that owns the hosted domain pays, not the domain (P3.12).
    assert accounts == [("trusted_ip", "web.example"), ("trusted_ip", "web.example")]


@pytest.mark.parametrize("macro_lists", [True, False], ids=["client-from-mail-macros", "client-from-connect"])
def test_the_client_address_reaches_the_policy_with_or_without_macro_lists(
        start_milter: Callable[..., MilterProcess], store_url: str, macro_lists: bool) -> None:
    milter = start_milter(config(store_url, accounts={"ip_map": {"192.0.2.0/28": "web.example"}}))
    actions = C.SMFI_V6_ACTS if macro_lists else C.SMFI_V6_ACTS & ~C.SMFIF_SETSYMLIST
    with MilterClient(milter.socket, actions=actions) as c:
        # An MTA that sends the client's address at MAIL does not need the CONNECT step.
        assert bool(c.protocol & C.SMFIP_NOCONNECT) is macro_lists
        assert ("{client_addr}" in c.macro_lists.get(C.SMFIC_MAIL, ())) is macro_lists
        c.connect("web1", "192.0.2.5", 3333)
        assert c.mail("app@web.example").action == "continue"
        assert c.rcpt("a@x.example").action == "continue"
        c.header("From", "app@web.example")
        assert c.eom().action == "continue"
    [decision] = milter.decisions()
    assert (decision["source"], decision["account"], decision["client"]) == ("trusted_ip", "web.example", "192.0.2.5")


def test_postfix_pickup_is_judged_at_end_of_message(start_milter: Callable[..., MilterProcess], store_url: str) -> None:
    milter = start_milter(config(store_url))
    pickup = ("localhost", "127.0.0.1", 0)
    rcpt, eom = send(milter, "wp@blog.example", ["a@x", "b@x", "c@x"], client=pickup)
    assert rcpt == ["continue"] * 3 and eom == "continue"
    rcpt, eom = send(milter, "wp@blog.example", ["d@x"], client=pickup)
    assert rcpt == ["continue"] and eom.startswith("451 4.7.1 Rate limit 3/hour for blog.example")
    rcpt, eom = send(milter, "wp@other-blog.example", ["a@x", "b@x", "c@x", "d@x"], client=pickup)
    assert rcpt == ["continue"] * 4 and eom.startswith("550 5.7.1")


def test_local_over_limit_hold_quarantines(start_milter: Callable[..., MilterProcess], store_url: str) -> None:
    milter = start_milter(config(store_url, ratelimit={"limits": ["1/hour"], "local_over_limit": "hold"}))
    pickup = ("localhost", "127.0.0.1", 0)
    send(milter, "wp@blog.example", ["a@x"], client=pickup)
    with MilterClient(milter.socket) as c:
        c.connect(*pickup)
        c.mail("wp@blog.example")
        c.rcpt("b@x")
        c.header("X-PHP-Originating-Script", "1000:wp-mail.php")
        c.header("From", "wp@blog.example")
        result = c.eom()
    assert result.action == "continue" and result.quarantine and "Rate limit 1/hour" in result.quarantine
    assert milter.decisions()[-1]["php_script"] == "1000:wp-mail.php"


def test_sendmail_msp_header_names_the_local_user(start_milter: Callable[..., MilterProcess], store_url: str) -> None:
    milter = start_milter(config(store_url, accounts={"map": {"www-data": "hosting.example"}, "msp_daemons": ["MSP-v4"]},
                                 forgery={"accounts": {"hosting.example": {"domains": ["host.example"]}}}))
    with MilterClient(milter.socket) as c:
        c.connect("localhost", "127.0.0.1", 41000)
        assert c.mail("www-data@host.example", macros={"{daemon_name}": "MSP-v4"}).action == "continue"
        c.rcpt("a@x.example")
        c.header("Received", "(from www-data@localhost)\n\tby host.example (8.17.1/8.17.1/Submit) id 3AB; Thu, 26 Nov 2026")
        c.header("From", "www-data@host.example")
        assert c.eom().action == "continue"
    line = milter.decisions()[-1]
    assert (line["source"], line["identity"], line["account"]) == ("local", "www-data", "hosting.example")


def test_monitor_mode_logs_but_never_refuses(start_milter: Callable[..., MilterProcess], store_url: str) -> None:
    milter = start_milter(config(store_url, milter={"mode": "monitor"}))
    rcpt, eom = send(milter, "bob@shop.example", [f"r{i}@x" for i in range(5)], AUTH)
    assert rcpt == ["continue"] * 5 and eom == "continue"
    refusals = [d for d in milter.decisions() if d["action"] == "tempfail" or d["action"] == "reject"]
    assert refusals and all(d["mode"] == "monitor" for d in refusals)


def test_exempt_accounts_pass(start_milter: Callable[..., MilterProcess], store_url: str) -> None:
    milter = start_milter(config(store_url, ratelimit={"exempt": ["shop.example"]}))
    assert send(milter, "bob@shop.example", [f"r{i}@x" for i in range(10)], AUTH) == (["continue"] * 10, "continue")


@pytest.mark.parametrize("on_error, expected", [("tempfail", "451 4.3.0"), ("accept", "continue")])
def test_a_hanging_redis_gets_on_error_within_the_timeout(
    start_milter: Callable[..., MilterProcess], on_error: str, expected: str
) -> None:
    # A listener that accepts connections and never answers: the worst kind of dead store.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    try:
        port = silent.getsockname()[1]
        milter = start_milter(config(f"redis://127.0.0.1:{port}/0", milter={"on_error": on_error}))
        rcpt, eom = send(milter, "bob@shop.example", ["a@x.example"], AUTH)
        # The first RCPT asks whether the account is held (the replica that answers that without
        # Redis never got ready), so on_error meets it there; with "accept" the debit meets it too.
        if expected == "continue":
            assert (rcpt, eom) == (["continue"], "continue")
        else:
            assert rcpt[0].startswith(expected) and eom == "no recipients"
        assert "store unavailable" in milter.log()
    finally:
        silent.close()


def test_the_milter_recovers_when_redis_comes_back(start_milter: Callable[..., MilterProcess], tmp_path: Path) -> None:
    from tests.helpers.servers import redis_server

    with redis_server(tmp_path) as (url, port):
        milter = start_milter(config(url))
        assert send(milter, "bob@shop.example", ["a@x"], AUTH) == (["continue"], "continue")
    # Redis is gone now. RCPT may still be answered from the milter's fresh replica (the recipient
    # is on no list, the levels were seen a moment ago); the debit at end of message cannot be.
    rcpt_replies, eom_reply = send(milter, "bob@shop.example", ["a@x"], AUTH)
    assert rcpt_replies == ["continue"] and eom_reply.startswith("451 4.3.0")
    from tests.helpers.servers import free_port  # noqa: F401  (port reuse below)
    import subprocess

    subprocess.run(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--daemonize", "yes",
                    "--pidfile", str(tmp_path / "again.pid")], check=True)
    try:
        from tests.helpers.servers import wait_for_port

        wait_for_port(port)
        assert send(milter, "bob@shop.example", ["a@x"], AUTH) == (["continue"], "continue")
    finally:
        subprocess.run(["redis-cli", "-p", str(port), "shutdown", "nosave"], capture_output=True, timeout=10)


def test_malformed_input_gets_a_defined_answer(milter: MilterProcess) -> None:
    weird = ["", "<>", "no-at-sign", "a@", "@b", "a" * 2000 + "@x.example", '"quoted local"@x.example']
    for sender in weird:
        rcpt, eom = send(milter, sender, ["a@x.example"], {"{auth_authen}": sender or "anon"})
        assert all(r == "continue" or r[:3] in ("451", "550") for r in rcpt)
    assert milter.proc is not None and milter.proc.poll() is None


def test_many_connections_at_once(milter: MilterProcess) -> None:
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            send(milter, f"u{n}@tenant{n}.example", ["a@x.example"], {"{auth_authen}": f"u{n}@tenant{n}.example"})
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors
    assert len([d for d in milter.decisions() if d["stage"] == "eom" and d["reason"] == "ok"]) == 30


def test_sigterm_stops_the_milter_cleanly(milter: MilterProcess) -> None:
    send(milter, "bob@shop.example", ["a@x.example"], AUTH)
    assert milter.stop(graceful=True) == 0
    assert "mailflow stopped" in milter.log()


def authenticated_message(milter: MilterProcess, headers: list[tuple[str, str]]) -> Any:
    """bob@shop.example (SASL) sends one recipient a message with these headers; the EOM answer."""
    with MilterClient(milter.socket) as c:
        c.connect("mua", "198.51.100.20", 1)
        c.mail("bob@shop.example", macros=AUTH)
        c.rcpt("a@x.example")
        for name, value in headers:
            c.header(name, value)
        return c.eom()


def _tagged_message(milter: MilterProcess) -> Any:
    return authenticated_message(milter, [("From", "bob@shop.example"), ("Reply-To", "bob.private@mailbox.example"),
                                          ("Date", "Thu, 01 Jan 2015 00:00:00 +0000")])


def test_soft_signals_are_tagged_not_refused(milter: MilterProcess) -> None:
    result = _tagged_message(milter)
    assert result.action == "continue"
    assert result.headers_added == [("X-Mailflow-Policy", "reply_to_domain=tag date_skew=tag")]
    assert milter.decisions()[-1]["forgery"] == "reply_to_domain:tag,date_skew:tag"


def test_monitor_mode_neither_refuses_nor_tags(start_milter: Callable[..., MilterProcess], store_url: str) -> None:
    milter = start_milter(config(store_url, milter={"mode": "monitor"}))
    result = _tagged_message(milter)
    assert result.action == "continue" and result.headers_added == []
    assert authenticated_message(milter, [("From", "ceo@bank.example")]).action == "continue"
    line = milter.decisions()[-1]
    assert (line["action"], line["reason"], line["mode"]) == ("reject", "from_domain", "monitor")


def test_rules_can_be_turned_off_per_account(start_milter: Callable[..., MilterProcess], store_url: str) -> None:
    milter = start_milter(config(store_url, forgery={"accounts": {"shop.example": {"rules": {"from_domain": "off"}}}}))
    assert authenticated_message(milter, [("From", "newsletter@partner.example")]).action == "continue"


def test_domains_added_to_the_store_reach_a_running_milter(start_milter: Callable[..., MilterProcess], store_url: str) -> None:
    from mailflow.store import open_store

    milter = start_milter(config(store_url, forgery={"domains_refresh_seconds": 1}))

    def send_as_brand() -> str:
        return str(authenticated_message(milter, [("From", "hello@shop-brand.example")]).smtp)

    def mail_from_brand() -> str:  # the MAIL verdict is cached per sender: the refresh must reach it too
        with MilterClient(milter.socket) as c:
            c.connect("mua", "198.51.100.20", 1)
            return str(c.mail("hello@shop-brand.example", macros=AUTH).smtp)

    assert send_as_brand().startswith("550 5.7.1 From: header domain shop-brand.example is not one of your domains")
    assert mail_from_brand().startswith("550 5.7.1 Envelope sender domain shop-brand.example is not one of your")
    store = open_store(store_url)
    store.add_domain("shop.example", "shop-brand.example")
    store.close()
    time.sleep(1.2)  # the milter re-reads owned domains every domains_refresh_seconds
    assert send_as_brand() == "continue"
    assert mail_from_brand() == "continue"


def test_local_mail_to_a_suppressed_recipient_drops_that_recipient(
    start_milter: Callable[..., MilterProcess], store_url: str
) -> None:
    import subprocess
    import sys

    milter = start_milter(config(store_url, suppression={"hash_key_env": "MAILFLOW_SUPPRESSION_KEY"}))
    added = subprocess.run([sys.executable, "-m", "mailflow", "suppress", "add", "-c", str(milter.config_path),
                            "--account", "blog.example", "optout@dest.example"], capture_output=True, text=True)
    assert added.returncode == 0, added.stderr
    pickup = ("localhost", "127.0.0.1", 0)
    with MilterClient(milter.socket) as c:
        c.connect(*pickup)
        c.mail("wp@blog.example")
        assert [c.rcpt(r).action for r in ("a@dest.example", "optout@dest.example")] == ["continue", "continue"]
        c.header("From", "wp@blog.example")
        result = c.eom()
    assert result.action == "continue" and result.recipients_removed == ["<optout@dest.example>"]
    line = milter.decisions()[-1]
    assert line["removed"] == "<optout@dest.example>" and line["cost"] == "1"
    with MilterClient(milter.socket) as c:  # every recipient suppressed: refused, so Postfix bounces it
        c.connect(*pickup)
        c.mail("wp@blog.example")
        c.rcpt("optout@dest.example")
        c.header("From", "wp@blog.example")
        assert c.eom().smtp.startswith("550 5.7.1 Every recipient is on a suppression list")


def test_local_mail_during_a_store_outage_is_deferred_whole_not_trimmed(start_milter: Callable[..., MilterProcess]) -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    try:
        milter = start_milter(config(f"redis://127.0.0.1:{silent.getsockname()[1]}/0",
                                     suppression={"hash_key_env": "MAILFLOW_SUPPRESSION_KEY"}))
        with MilterClient(milter.socket) as c:
            c.connect("localhost", "127.0.0.1", 0)
            c.mail("wp@blog.example")
            c.rcpt("a@dest.example")
            c.header("From", "wp@blog.example")
            result = c.eom()
        assert result.smtp.startswith("451 4.3.0") and result.recipients_removed == []
    finally:
        silent.close()


def run_cli(milter: MilterProcess, *args: str) -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "mailflow", *args[:2], "-c", str(milter.config_path), *args[2:]],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_a_suppression_reaches_a_running_milter_within_refresh_ms(start_milter: Callable[..., MilterProcess],
                                                                   store_url: str) -> None:
    milter = start_milter(config(store_url, store={"refresh_ms": 100}, ratelimit={"limits": ["100/hour"]},
                                 suppression={"hash_key_env": "MAILFLOW_SUPPRESSION_KEY"}))
    assert send(milter, "bob@shop.example", ["late@dest.example"], AUTH) == (["continue"], "continue")
    time.sleep(0.3)  # the replica (Redis) is built and trusted by now
    run_cli(milter, "suppress", "add", "late@dest.example")
    time.sleep(0.3)  # three refresh intervals
    rcpt_replies, _ = send(milter, "bob@shop.example", ["late@dest.example", "other@dest.example"], AUTH)
    assert rcpt_replies[0].startswith("550 5.7.1") and rcpt_replies[1] == "continue"


def test_a_rate_limit_refusal_at_rcpt_is_confirmed_by_the_store(start_milter: Callable[..., MilterProcess],
                                                                store_url: str) -> None:
    """RCPT may estimate levels from what this milter saw lately; it refuses only on the store's word."""
    milter = start_milter(config(store_url))
    for _ in range(3):
        assert send(milter, "bob@shop.example", ["a@x"], AUTH) == (["continue"], "continue")
    assert send(milter, "bob@shop.example", ["a@x"], AUTH)[0][0].startswith("451 4.7.1")
    run_cli(milter, "ratelimit", "reset", "shop.example")  # another process empties the bucket
    assert send(milter, "bob@shop.example", ["a@x"], AUTH) == (["continue"], "continue")
