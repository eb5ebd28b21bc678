import tomllib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailflow.accounts import canonical_domain, identify, msp_user, refine_local_identity, resolve_account
from mailflow.config import parse_config
from mailflow.model import Client, Identity

SETTINGS = parse_config(tomllib.loads("""
[accounts]
identify = ["sasl", "local", "trusted_ip"]
trusted_networks = ["10.0.0.0/8", "2001:db8::/32"]
[accounts.map]
"alice@shop.example" = "bigshop.example"
"@news.example" = "bigshop.example"
"www-data" = "hosting.example"
[accounts.ip_map]
"10.0.0.0/8" = "farm.example"
"10.1.2.0/24" = "web.example"
""")).accounts

INTERNET = Client("mx.remote.example", "198.51.100.7", 40000)
PICKUP = Client("localhost", "127.0.0.1", 0)


def test_sasl_login_wins_and_defaults_to_its_domain() -> None:
    assert identify(SETTINGS, INTERNET, "bob@Shop.Example", "<x@other.example>") == Identity(
        "sasl", "bob@Shop.Example", "shop.example"
    )


def test_map_exact_then_at_domain() -> None:
    assert resolve_account(SETTINGS, "Alice@shop.example") == "bigshop.example"
    assert resolve_account(SETTINGS, "anyone@news.example") == "bigshop.example"
    assert resolve_account(SETTINGS, "bare-login") == "bare-login"
    assert resolve_account(SETTINGS, "<x@Bücher.example>") == "xn--bcher-kva.example"


def test_postfix_pickup_is_local_and_uses_the_envelope_sender() -> None:
    identity = identify(SETTINGS, PICKUP, None, "<wp@blog.example>")
    assert identity == Identity("local", "wp@blog.example", "blog.example")
    assert PICKUP.is_postfix_pickup and not Client("h", "127.0.0.1", 2525).is_postfix_pickup


def test_local_null_sender_has_an_account() -> None:
    assert identify(SETTINGS, PICKUP, None, "<>") == Identity("local", "<>", "local")


def test_trusted_ip_longest_prefix_then_sender_domain() -> None:
    web = Client("web1", "10.1.2.3", 5000)
    farm = Client("web9", "10.9.9.9", 5000)
    v6 = Client("web6", "2001:db8::25", 5000)
    assert identify(SETTINGS, web, None, "<a@x.example>") == Identity("trusted_ip", "10.1.2.3", "web.example")
    assert identify(SETTINGS, farm, None, "<a@x.example>") == Identity("trusted_ip", "10.9.9.9", "farm.example")
    assert identify(SETTINGS, v6, None, "<a@x.example>") == Identity("trusted_ip", "2001:db8::25", "x.example")


def test_inbound_mail_is_not_ours() -> None:
    assert identify(SETTINGS, INTERNET, None, "<someone@remote.example>") is None
    assert identify(SETTINGS, INTERNET, "", "<>") is None
    assert identify(SETTINGS, Client("unix", None, None), None, "<a@b.example>") is None


def test_order_of_sources_is_honoured() -> None:
    only_ip = parse_config(tomllib.loads('[accounts]\nidentify = ["trusted_ip"]\ntrusted_networks = ["127.0.0.0/8"]')).accounts
    assert identify(only_ip, PICKUP, "bob@shop.example", "<a@b.example>") == Identity("trusted_ip", "127.0.0.1", "b.example")


@pytest.mark.parametrize(
    "value, user",
    [
        ("(from alice@localhost)\n\tby host.example (8.17.1/8.17.1/Submit) id 3ABC;", "alice"),
        ("  (from www-data@localhost) by h (8.15.2/8.15.2/Submit)", "www-data"),
        ("from mx.example (mx.example [192.0.2.1]) by h", None),
        ("(from alice@example.com) by h", None),
    ],
)
def test_sendmail_msp_received_header(value: str, user: str | None) -> None:
    assert msp_user(value) == user


def test_msp_user_maps_through_the_identity_map_or_keeps_the_sender_account() -> None:
    identity = Identity("local", "x@blog.example", "blog.example")
    assert refine_local_identity(SETTINGS, identity, "www-data") == Identity("local", "www-data", "hosting.example")
    assert refine_local_identity(SETTINGS, identity, "carol") == Identity("local", "carol", "blog.example")


@given(st.text(max_size=80))
def test_canonical_domain_never_raises_and_is_idempotent(text: str) -> None:
    once = canonical_domain(text)
    assert canonical_domain(once) == once


def test_idn_spellings_meet() -> None:
    assert canonical_domain("BÜCHER.example.") == canonical_domain("xn--bcher-kva.example") == "xn--bcher-kva.example"
