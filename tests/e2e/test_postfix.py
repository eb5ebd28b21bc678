"""End to end through a real, private Postfix: SMTP AUTH, trusted-IP and local sendmail
submissions reach the milter, are tied to the right account and are limited as documented."""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import postfix
from tests.helpers.postfix import PrivatePostfix, empty_store_url, running_rig, wait_for
from tests.helpers.servers import MilterProcess

pytestmark = [
    pytest.mark.postfix,
    pytest.mark.skipif(not postfix.available(), reason="needs root and Debian's postfix (make test installs it)"),
]

N = 3  # the limit under test: 3 recipients per hour


def rig_config(store: str, **ratelimit: object) -> dict[str, Any]:
    return {
        "store": {"url": store},
        "accounts": {
            "identify": ["sasl", "trusted_ip", "local"],
            # 127.0.0.2 is listed to show that loopback never becomes trusted_ip.
            "trusted_networks": ["127.0.0.2/32", "192.0.2.0/28"],
            "ip_map": {"127.0.0.2": "web.example", "192.0.2.0/28": "web.example"},
        },
        "ratelimit": {"limits": [f"{N}/hour"], **ratelimit},
        # The web server relays for a customer's domain: web.example must own it.
        "forgery": {"accounts": {"web.example": {"domains": ["customer.example"]}}},
    }


SASL_USERS = {"bob@shop.example": "secret"}


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def rig(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PrivatePostfix, MilterProcess]]:
    workdir = tmp_path_factory.mktemp(f"e2e-{request.param}")
    store = empty_store_url(request.param, workdir, request)
    with running_rig(workdir, rig_config(store), SASL_USERS) as started:
        yield started


MESSAGE = "From: {sender}\nTo: undisclosed-recipients:;\nSubject: mailflow e2e\n\nhello\n"


def eom_decisions(milter: MilterProcess, account: str) -> list[dict[str, str]]:
    return [d for d in milter.decisions() if d["stage"] == "eom" and d.get("account") == account]


def test_smtp_auth_submission_and_the_n_plus_first_recipient(rig: tuple[PrivatePostfix, MilterProcess]) -> None:
    mta, milter = rig
    recipients = [f"r{i}@dest.example" for i in range(N + 1)]
    with mta.smtp() as smtp:
        smtp.login("bob@shop.example", "secret")
        refused = smtp.sendmail("bob@shop.example", recipients, MESSAGE.format(sender="bob@shop.example"))
    code, text = refused[recipients[N]]
    assert code == 451 and text.decode().startswith(f"4.7.1 Rate limit {N}/hour for shop.example reached; try again in")
    assert set(refused) == {recipients[N]}
    delivered = [m for m in mta.wait_delivered(1) if m["sender"] == "<bob@shop.example>"]
    assert delivered and delivered[0]["recipients"] == [f"<{r}>" for r in recipients[:N]]
    [line] = eom_decisions(milter, "shop.example")
    assert (line["source"], line["identity"], line["cost"], line["action"]) == ("sasl", "bob@shop.example", str(N), "continue")
    assert line["qid"]  # Postfix's queue id is logged
    # ... at RCPT too, once Postfix has one (it opens the queue file at the first valid RCPT),
    # with the sender in angle brackets and why= for the admin.
    [deferred] = [d for d in milter.decisions() if d["stage"] == "rcpt" and d.get("rcpt") == f"<{recipients[N]}>"]
    assert (deferred["qid"], deferred["sender"], deferred["reason"]) == (line["qid"], "<bob@shop.example>", "ratelimit")
    assert deferred["why"].startswith("the account used up a rate-limit bucket")
    # Postfix's own Received: header is not among the client's headers: no soft signal fires.
    assert "forgery" not in line

    with mta.smtp() as smtp:  # the bucket is empty now: the next recipient waits too
        smtp.login("bob@shop.example", "secret")
        with pytest.raises(smtplib.SMTPRecipientsRefused) as err:
            smtp.sendmail("bob@shop.example", ["late@dest.example"], MESSAGE.format(sender="bob@shop.example"))
    assert err.value.recipients["late@dest.example"][0] == 451


def test_trusted_ip_submission(rig: tuple[PrivatePostfix, MilterProcess]) -> None:
    mta, milter = rig
    recipients = [f"t{i}@dest.example" for i in range(N + 1)]
    with mta.smtp_as("192.0.2.5", "web1.example") as smtp:
        refused = smtp.sendmail("app@customer.example", recipients, MESSAGE.format(sender="app@customer.example"))
    assert list(refused) == [recipients[N]] and refused[recipients[N]][0] == 451
    wait_for(lambda: any(m["sender"] == "<app@customer.example>" for m in mta.delivered()))
    [line] = eom_decisions(milter, "web.example")
    assert (line["source"], line["identity"], line["client"]) == ("trusted_ip", "192.0.2.5", "192.0.2.5")


def test_loopback_listed_in_trusted_networks_is_still_refused(rig: tuple[PrivatePostfix, MilterProcess]) -> None:
    """Review P1.2: 127.0.0.2 in trusted_networks (and ip_map) must not let any local process send."""
    mta, milter = rig
    with mta.smtp(source_address="127.0.0.2") as smtp:
        with pytest.raises(smtplib.SMTPSenderRefused) as err:
            smtp.sendmail("ceo@customer.example", ["t@dest.example"], MESSAGE.format(sender="ceo@customer.example"))
    assert err.value.smtp_code == 550 and b"authenticate (SMTP AUTH) or submit with sendmail" in err.value.smtp_error
    wait_for(lambda: any(d.get("sender") == "<ceo@customer.example>" for d in milter.decisions()))
    assert [d["reason"] for d in milter.decisions() if d.get("sender") == "<ceo@customer.example>"] == ["local_smtp"]


def test_local_sendmail_submission_is_charged_then_deferred_in_maildrop(rig: tuple[PrivatePostfix, MilterProcess]) -> None:
    mta, milter = rig
    assert mta.sendmail("wp@blog.example", [f"l{i}@dest.example" for i in range(N)],
                        "X-PHP-Originating-Script: 33:wp-includes/pluggable.php\n" + MESSAGE.format(sender="wp@blog.example")).returncode == 0
    wait_for(lambda: any(m["sender"] == "<wp@blog.example>" for m in mta.delivered()))
    [line] = eom_decisions(milter, "blog.example")
    assert (line["source"], line["identity"], line["cost"], line["action"]) == ("local", "wp@blog.example", str(N), "continue")
    assert line["php_script"] == "33:wp-includes/pluggable.php"

    # Over the limit: sendmail still exits 0 (it always does); the file waits in maildrop for pickup.
    assert mta.sendmail("wp@blog.example", ["over@dest.example"], MESSAGE.format(sender="wp@blog.example")).returncode == 0
    wait_for(lambda: len(eom_decisions(milter, "blog.example")) >= 2)
    assert eom_decisions(milter, "blog.example")[1]["action"] == "tempfail"
    wait_for(lambda: len(mta.maildrop()) == 1)
    assert len([m for m in mta.delivered() if m["sender"] == "<wp@blog.example>"]) == 1


def test_local_message_too_big_for_the_bucket_bounces_to_the_sender(rig: tuple[PrivatePostfix, MilterProcess]) -> None:
    mta, milter = rig
    assert mta.sendmail("cron@big.example", [f"b{i}@dest.example" for i in range(N + 1)],
                        MESSAGE.format(sender="cron@big.example")).returncode == 0
    wait_for(lambda: bool(eom_decisions(milter, "big.example")))
    assert eom_decisions(milter, "big.example")[0]["reason"] == "over_capacity"
    bounces = lambda: [m for m in mta.delivered() if m["sender"] == "<>" and m["recipients"] == ["<cron@big.example>"]]  # noqa: E731
    wait_for(lambda: bool(bounces()))
    text = str(bounces()[0]["text"])
    assert f"exceeds the {N}/hour limit of big.example" in " ".join(text.split()), text


def test_local_over_limit_hold_puts_the_message_in_the_hold_queue(tmp_path: Path) -> None:
    with running_rig(tmp_path, rig_config(f"sqlite://{tmp_path}/state.db", local_over_limit="hold"), SASL_USERS) as (mta, milter):
        assert mta.sendmail("wp@blog.example", [f"h{i}@dest.example" for i in range(N)],
                            MESSAGE.format(sender="wp@blog.example")).returncode == 0
        wait_for(lambda: len(mta.delivered()) == 1)
        assert mta.sendmail("wp@blog.example", ["held@dest.example"], MESSAGE.format(sender="wp@blog.example")).returncode == 0
        wait_for(lambda: len(mta.hold()) == 1)
        assert eom_decisions(milter, "blog.example")[-1]["action"] == "hold"
        assert mta.maildrop() == [] and len(mta.delivered()) == 1


FORGED_MSP = ("Received: (from www-data@localhost)\n\tby mx1.provider.example (8.17.1.9/8.17.1.9/Submit) id 6AQFw43Y010977;"
              " Thu, 26 Nov 2026 15:58:04 GMT\n")


def test_plain_smtp_from_this_host_without_auth_is_refused(rig: tuple[PrivatePostfix, MilterProcess]) -> None:
    """Finding 4: any local process chose its account by its envelope sender (and a forged MSP
    header) over plain SMTP to 127.0.0.1. Now it must authenticate or use sendmail."""
    mta, milter = rig
    with mta.smtp() as smtp:
        with pytest.raises(smtplib.SMTPSenderRefused) as err:
            smtp.sendmail("x@attacker.example", ["victim@dest.example"],
                          FORGED_MSP + MESSAGE.format(sender="ceo@webhosting.example"))
    assert err.value.smtp_code == 550
    assert err.value.smtp_error.decode().startswith(
        "5.7.1 Unauthenticated SMTP from this host is refused by the mail policy; "
        "authenticate (SMTP AUTH) or submit with sendmail")
    refusals = lambda: [d for d in milter.decisions()  # noqa: E731
                        if d.get("reason") == "local_smtp" and d.get("sender") == "<x@attacker.example>"]
    wait_for(lambda: bool(refusals()))
    [line] = refusals()
    assert line["sender"] == "<x@attacker.example>", line
    assert (line["stage"], line["source"], line["reason"], line["action"]) == ("mail", "local", "local_smtp", "reject")
    assert not any(d.get("account") == "webhosting.example" for d in milter.decisions())
