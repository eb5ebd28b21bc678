import tomllib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailflow.accounts import (
    LOCAL_SMTP_TEXT,
    Refusal,
    canonical_domain,
    identify,
    is_msp_dsn,
    is_own_bounce,
    msp_user,
    refine_local_identity,
    resolve_account,
)
from mailflow.config import host_names, parse_config
from mailflow.model import Client, Identity

SETTINGS = parse_config(tomllib.loads("""
[accounts]
identify = ["sasl", "local", "trusted_ip"]
trusted_networks = ["10.0.0.0/8", "2001:db8::/32", "192.0.2.0/24"]
msp_daemons = ["MSP-v4"]
local_names = ["mx1.provider.example"]
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


def test_trusted_ip_longest_prefix_then_a_hosted_sender_domain() -> None:
    web = Client("web1", "10.1.2.3", 5000)
    farm = Client("web9", "10.9.9.9", 5000)
    v6 = Client("web6", "2001:db8::25", 5000)
    assert identify(SETTINGS, web, None, "<a@x.example>") == Identity("trusted_ip", "10.1.2.3", "web.example")
    assert identify(SETTINGS, farm, None, "<a@x.example>") == Identity("trusted_ip", "10.9.9.9", "farm.example")
    owner = {"x.example": "x.example"}.get
    assert identify(SETTINGS, v6, None, "<a@x.example>", owner) == Identity("trusted_ip", "2001:db8::25", "x.example")
    # The identity map hosts its entries: the account comes from it.
    assert identify(SETTINGS, v6, None, "<a@news.example>") == Identity("trusted_ip", "2001:db8::25", "bigshop.example")


def test_a_trusted_client_without_ip_map_entry_cannot_send_as_a_domain_not_hosted_here() -> None:
    """Finding 5: a 10.x host sending as service@paypal.com was account "paypal.com"."""
    refused = identify(SETTINGS, Client("web", "192.0.2.9", 5000), None, "<service@paypal.com>", {"x.example": "x"}.get)
    assert isinstance(refused, Refusal) and refused.reason == "trusted_unmapped"
    assert "ip_map" in refused.text and "paypal" not in refused.text  # the reply never echoes the client's input


def test_trusted_networks_and_local_smtp_defaults() -> None:
    defaults = parse_config({}).accounts
    assert defaults.trusted_networks == () and defaults.local_smtp == "refuse" and defaults.msp_daemons == frozenset()
    assert defaults.local_names == host_names() and host_names()
    assert identify(defaults, Client("web", "10.1.2.3", 5000), None, "<service@paypal.com>") is None  # inbound


LOOPBACK = Client("localhost", "127.0.0.1", 41000)


def test_unauthenticated_loopback_smtp_is_refused_by_default() -> None:
    """Finding 4: any local process chose its account by its envelope sender."""
    for client in (LOOPBACK, Client("localhost", "::1", 41000), Client("x", "127.0.0.1", 41000, "MTA-v4")):
        refused = identify(SETTINGS, client, None, "<ceo@webhosting.example>")
        assert isinstance(refused, Refusal) and (refused.reason, refused.text) == ("local_smtp", LOCAL_SMTP_TEXT)
    # Authenticated, it is the login's.
    assert identify(SETTINGS, LOOPBACK, "bob@shop.example", "<bob@shop.example>") == Identity(
        "sasl", "bob@shop.example", "shop.example")


def test_local_smtp_sender_domain_is_the_spoofable_opt_in() -> None:
    opted = parse_config({"accounts": {"local_smtp": "sender_domain"}}).accounts
    assert identify(opted, LOOPBACK, None, "<a@b.example>") == Identity("local", "a@b.example", "b.example")


def test_a_loopback_address_in_trusted_networks_is_never_trusted_ip() -> None:
    """Review P1.2: any local process may connect from 127.0.0.2; the local_smtp rule wins."""
    settings = parse_config({"accounts": {"trusted_networks": ["127.0.0.2/32"], "ip_map": {"127.0.0.2": "web.example"}}}).accounts
    refused = identify(settings, Client("web", "127.0.0.2", 5000), None, "<a@customer.example>")
    assert isinstance(refused, Refusal) and refused.reason == "local_smtp"


def test_msp_listener_pickup_and_sendmail_bs_are_local() -> None:
    msp = Client("localhost", "127.0.0.1", 41000, "MSP-v4")
    assert identify(SETTINGS, msp, None, "<x@blog.example>") == Identity("local", "x@blog.example", "blog.example")
    # The MSP listener's name counts only for a loopback client.
    assert isinstance(identify(SETTINGS, Client("x", "127.0.0.1", 1, "MTA-v4"), None, "<x@b.example>"), Refusal)
    assert identify(SETTINGS, Client("x", "198.51.100.7", 1, "MSP-v4"), None, "<x@b.example>") is None
    bs = Client("localhost", "0", 0)
    assert bs.is_sendmail_bs and not bs.is_postfix_pickup
    assert identify(SETTINGS, bs, None, "<cron@big.example>") == Identity("local", "cron@big.example", "big.example")


def test_inbound_mail_is_not_ours() -> None:
    assert identify(SETTINGS, INTERNET, None, "<someone@remote.example>") is None
    assert identify(SETTINGS, INTERNET, "", "<>") is None
    assert identify(SETTINGS, Client("unix", None, None), None, "<a@b.example>") is None


def test_order_of_sources_is_honoured() -> None:
    only_ip = parse_config(tomllib.loads('[accounts]\nidentify = ["trusted_ip"]\ntrusted_networks = ["10.0.0.0/8"]')).accounts
    assert identify(only_ip, Client("web", "10.1.2.3", 5000), "bob@shop.example", "<a@b.example>",
                    {"b.example": "b.example"}.get) == Identity("trusted_ip", "10.1.2.3", "b.example")


MSP_DSN = "from localhost (localhost)\n\tby mx1.provider.example (8.17.1.9/8.17.1.9/Submit) id 6AQFwG9a011093;\n\tThu"
MSP_RECEIVED = ("(from www-data@localhost)\n\tby mx1.provider.example (8.17.1.9/8.17.1.9/Submit) id 6AQFw43Y010977"
                "\n\tfor rcpt@dest.example; Thu, 26 Nov 2026 15:58:04 GMT")  # as Sendmail 8.17 hands it over


@pytest.mark.parametrize(
    "value, user",
    [
        (MSP_RECEIVED, "www-data"),
        ("(from alice@localhost)\n\tby host.example (8.17.1/8.17.1/Submit) id 3ABC; Sun, 22 Nov 2026 10:00:00 GMT", "alice"),
        ("  (from www-data@localhost) by h (8.15.2/8.15.2/Submit)", None),  # not the MSP's exact form
        ("(from www-data@localhost)\n\tby h (8.17.1/8.17.1) with ESMTP id 3AB; date", None),  # the MTA's, not Submit
        ("from mx.example (mx.example [192.0.2.1]) by h", None),
        ("(from alice@example.com) by h", None),
        # The MSP's own bounce: no user.
        (MSP_DSN, None),
        # `sendmail -bs` (HELO web1), `-p smtp:evil.example`, `-oMrESMTP`: the user is still named.
        ("from web1 (www-data@localhost)\n\tby mx1.provider.example (8.17.1.9/8.17.1.9/Submit) with ESMTP id 6AQ1;"
         "\n\tThu", "www-data"),
        ("from evil.example (www-data@localhost)\n\tby mx1.provider.example (8.17.1.9/8.17.1.9/Submit) with smtp"
         " id 6AQ1\n\tfor a@dest.example; Thu", "www-data"),
        ("(from www-data@localhost)\n\tby mx1.provider.example (8.17.1.9/8.17.1.9/Submit) with ESMTP id 6AQ1; Thu",
         "www-data"),
        ("from a b (www-data@localhost)\n\tby h (8.17.1/8.17.1/Submit) id 3A; d", None),
        ("(from w\udcff@localhost)\n\tby h (8.17.1/8.17.1/Submit) id 3A; d", None),  # not a Unix login
        ("from localhost (localhost@localhost)\n\tby h (8.17.1/8.17.1/Submit) id 3A; d", "localhost"),
    ],
)
def test_sendmail_msp_received_header(value: str, user: str | None) -> None:
    assert msp_user(value) == user


def test_the_msp_header_parser_is_linear() -> None:
    import time
    start = time.perf_counter()
    for value in ("(from " + "a" * 100_000, "(from a@localhost)\n\tby " + "h" * 100_000,
                  MSP_RECEIVED.replace("for rcpt", "for " + "r " * 50_000), "from " + "h" * 100_000,
                  "from " + "h " * 50_000, "from localhost (localhost)\n\tby " + "h" * 100_000):
        assert msp_user(value) is None and not is_msp_dsn(value)
    assert time.perf_counter() - start < 0.1


def test_the_msps_own_delivery_reports_name_no_user() -> None:
    assert is_msp_dsn(MSP_DSN) and not is_msp_dsn(MSP_RECEIVED)
    assert not is_msp_dsn(MSP_DSN.replace("(localhost)", "(www-data@localhost)"))
    assert not is_msp_dsn(MSP_DSN.replace("/Submit", ""))


def test_own_bounces_are_signed_with_this_hosts_names() -> None:
    assert is_own_bounce(SETTINGS, "<>", "MAILER-DAEMON", "mx1.provider.example")
    assert is_own_bounce(SETTINGS, "", "postmaster", "MX1.Provider.Example")
    assert not is_own_bounce(SETTINGS, "<>", "mailer-daemon", "shop.example")
    assert not is_own_bounce(SETTINGS, "<x@y.example>", "mailer-daemon", "mx1.provider.example")
    assert not is_own_bounce(SETTINGS, "<>", "ceo", "mx1.provider.example")


def test_msp_user_maps_through_the_identity_map_or_is_its_own_account() -> None:
    assert refine_local_identity(SETTINGS, "www-data") == Identity("local", "www-data", "hosting.example")
    # Unmapped: its own account (owning no domain), never the sender domain it chose with -f.
    assert refine_local_identity(SETTINGS, "Carol") == Identity("local", "Carol", "carol")


@given(st.text(max_size=80))
def test_canonical_domain_never_raises_and_is_idempotent(text: str) -> None:
    once = canonical_domain(text)
    assert canonical_domain(once) == once


def test_idn_spellings_meet() -> None:
    assert canonical_domain("BÜCHER.example.") == canonical_domain("xn--bcher-kva.example") == "xn--bcher-kva.example"


def test_the_shipped_config_trusts_no_network_and_refuses_local_smtp() -> None:
    from pathlib import Path

    from mailflow.config import load_config

    conf = Path(__file__).resolve().parents[2] / "conf" / "mailflow.toml"
    settings = load_config(str(conf)).accounts
    assert settings.trusted_networks == () and settings.local_smtp == "refuse" and settings.msp_daemons == frozenset()


def test_a_bad_local_smtp_names_the_key() -> None:
    from mailflow.config import ConfigError

    with pytest.raises(ConfigError, match=r"accounts.local_smtp: 'allow' is not one of refuse, sender_domain"):
        parse_config({"accounts": {"local_smtp": "allow"}})
