"""trusted_ip: a client on this host never matches it (the local_smtp rule wins), and a trusted
client without an ip_map entry is charged to the account that owns the sender's domain (review
P1.2, P3.12)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailflow.accounts import Refusal, identify, trusted_network_warnings
from mailflow.config import parse_config
from mailflow.model import Client, Identity
from tests.unit.test_identity_engine import make_engine, transaction

LOOPBACK_LISTED = ["10.0.0.0/8", "127.0.0.0/8", "::1/128", "::ffff:0:0/96"]


@pytest.mark.parametrize("identify_order", [["sasl", "local", "trusted_ip"], ["trusted_ip", "local"]])
@pytest.mark.parametrize("address", ["127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1"])
def test_loopback_in_trusted_networks_is_still_refused(address: str, identify_order: list[str]) -> None:
    settings = parse_config({"accounts": {"identify": identify_order, "trusted_networks": LOOPBACK_LISTED,
                                          "ip_map": {"127.0.0.0/8": "farm.example"}}}).accounts
    result = identify(settings, Client("localhost", address, 41000), None, "<ceo@shop.example>",
                      {"shop.example": "shop.example"}.get)
    assert isinstance(result, Refusal) and result.reason == "local_smtp", result
    assert "authenticate (SMTP AUTH) or submit with sendmail" in result.text


def test_loopback_in_trusted_networks_is_never_trusted_ip() -> None:
    """Without `local` in identify, loopback SMTP is simply not attributed (as without the entry)."""
    settings = parse_config({"accounts": {"identify": ["sasl", "trusted_ip"], "trusted_networks": LOOPBACK_LISTED,
                                          "ip_map": {"127.0.0.0/8": "farm.example"}}}).accounts
    assert identify(settings, Client("localhost", "127.0.0.1", 41000), None, "<a@shop.example>") is None
    opted = parse_config({"accounts": {"trusted_networks": LOOPBACK_LISTED, "local_smtp": "sender_domain"}}).accounts
    assert identify(opted, Client("localhost", "127.0.0.1", 41000), None, "<a@shop.example>") == Identity(
        "local", "a@shop.example", "shop.example")


def test_a_remote_trusted_client_is_still_trusted_ip() -> None:
    settings = parse_config({"accounts": {"trusted_networks": LOOPBACK_LISTED,
                                          "ip_map": {"10.1.0.0/16": "farm.example"}}}).accounts
    assert identify(settings, Client("web", "10.1.2.3", 5000), None, "<a@x.example>") == Identity(
        "trusted_ip", "10.1.2.3", "farm.example")


def test_the_engine_refuses_loopback_listed_as_trusted(tmp_path: Path) -> None:
    engine = make_engine(tmp_path, trusted_networks=["10.0.0.0/8", "127.0.0.0/8", "::1/128"])
    for client in (Client("localhost", "127.0.0.1", 41000), Client("localhost", "::1", 41000)):
        mail, eom, _ = transaction(engine, client, "ceo@webhosting.example", [("From", "ceo@webhosting.example")])
        assert mail.refuses and mail.reason == "local_smtp" and eom is None


def test_a_trusted_client_without_ip_map_is_charged_to_the_owning_account(tmp_path: Path) -> None:
    """news@customer.example from a trusted host: account webhosting.example (it owns customer.example
    in [forgery.accounts]), not customer.example with a bucket of its own; a store domain likewise."""
    engine = make_engine(tmp_path, trusted_networks=["10.0.0.0/8"])
    engine.store.add_domain("cust42", "store-hosted.example")
    engine.ownership.refresh()
    web = Client("web", "10.1.2.3", 5000)
    for sender, account in [("news@customer.example", "webhosting.example"),
                            ("app@mail.customer.example", "webhosting.example"),
                            ("app@store-hosted.example", "cust42"), ("app@webhosting.example", "webhosting.example")]:
        mail, eom, message = transaction(engine, web, sender, [("From", sender)])
        assert not mail.refuses and eom is not None and not eom.refuses, sender
        assert message.identity == Identity("trusted_ip", "10.1.2.3", account), sender


def test_check_config_warns_of_loopback_and_ip_map_entries_that_never_match() -> None:
    settings = parse_config({"accounts": {"trusted_networks": ["10.0.0.0/8", "127.0.0.0/8", "::/0"],
                                          "ip_map": {"10.1.0.0/16": "a.example", "192.168.1.0/24": "b.example"}}}).accounts
    warnings = trusted_network_warnings(settings)
    assert len(warnings) == 3, warnings
    assert "127.0.0.0/8 holds loopback" in warnings[0] and "::/0 holds loopback" in warnings[1]
    assert 'ip_map."192.168.1.0/24" (b.example): not inside trusted_networks' in warnings[2]
    clean = parse_config({"accounts": {"trusted_networks": ["10.0.0.0/8"], "ip_map": {"10.1.0.0/16": "a.example"}}})
    assert trusted_network_warnings(clean.accounts) == []
