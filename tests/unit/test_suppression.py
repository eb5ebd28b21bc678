"""Address forms, keys and entries: table tests plus hypothesis properties."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailflow.forgery.rules import header_index
from mailflow.suppression.bulk import bulk_finding
from mailflow.suppression.entries import EntryError, Matcher
from mailflow.suppression.keys import Keyring
from mailflow.suppression.normalize import AddressForms

FORMS = AddressForms()
MATCHER = Matcher(FORMS, Keyring(b"k" * 32))


@pytest.mark.parametrize("address, canonical, family", [
    ("User@Example.COM", "user@example.com", "user@example.com"),
    ("<user+news@example.com>", "user+news@example.com", "user@example.com"),
    ("John.Doe+x@GoogleMail.com", "john.doe+x@googlemail.com", "johndoe@gmail.com"),
    ("j.o.h.n.doe@gmail.com", "j.o.h.n.doe@gmail.com", "johndoe@gmail.com"),
    ("first.last@dest.example", "first.last@dest.example", "first.last@dest.example"),
    ("käufer@BÜCHER.example", "käufer@xn--bcher-kva.example", "käufer@xn--bcher-kva.example"),
    ("Cafe\u0301@x.example", "caf\u00e9@x.example", "caf\u00e9@x.example"),  # NFC
    ("+tag@x.example", "+tag@x.example", "+tag@x.example"),
    ("not-an-address", "not-an-address", "not-an-address"),
])
def test_forms(address: str, canonical: str, family: str) -> None:
    assert FORMS.canonical(address) == canonical
    assert FORMS.family(address) == family


def test_case_sensitive_local_parts_and_no_subaddress_stripping() -> None:
    strict = AddressForms(case_sensitive_local_part=True, strip_subaddress=False)
    assert strict.canonical("Bob+x@Example.com") == "Bob+x@example.com"
    assert strict.family("Bob+x@Example.com") == "Bob+x@example.com"


addresses = st.one_of(st.text(max_size=40), st.emails(), st.from_regex(r"[A-Za-z.+]{1,12}@(gmail|googlemail|x)\.com", fullmatch=True))


@given(addresses)
def test_forms_never_raise_and_are_idempotent(address: str) -> None:
    canonical, family = FORMS.canonical(address), FORMS.family(address)
    assert FORMS.canonical(canonical) == canonical
    assert FORMS.family(family) == family
    assert FORMS.family(canonical) == family


@given(addresses, addresses)
def test_the_family_form_is_never_narrower(a: str, b: str) -> None:
    """Addresses that are one address canonically are always one family."""
    if FORMS.canonical(a) == FORMS.canonical(b):
        assert FORMS.family(a) == FORMS.family(b)


@given(st.emails())
def test_an_entry_always_suppresses_its_own_address(address: str) -> None:
    key, _ = MATCHER.entry_key(address)
    assert key in MATCHER.recipient_keys(address)
    assert key in MATCHER.recipient_keys(address.upper())


def test_broker_hashes_match() -> None:
    digest = hashlib.md5(b"hashed@dest.example").hexdigest()
    assert MATCHER.entry_key(f"md5:{digest}")[0] in MATCHER.recipient_keys("Hashed@Dest.Example")
    sha = hashlib.sha256(b"hashed@dest.example").hexdigest()
    assert MATCHER.entry_key(f"sha256:{sha.upper()}")[0] in MATCHER.recipient_keys("<hashed@dest.example>")


def test_domain_entries_cover_subdomains_but_not_lookalike_parents() -> None:
    key, shown = MATCHER.entry_key("@Blocked.example")
    assert shown == "@blocked.example"
    assert key in MATCHER.recipient_keys("a@mx.blocked.example")
    assert key not in MATCHER.recipient_keys("a@notblocked.example")


@pytest.mark.parametrize("text", ["", "nobody", "@co.uk", "md5:123", "sha256:zz", "a b@c.example", "@"])
def test_bad_entries(text: str) -> None:
    with pytest.raises(EntryError):
        MATCHER.entry_key(text)


def test_keys_depend_on_the_secret_and_seal_round_trips() -> None:
    other = Matcher(FORMS, Keyring(b"o" * 32))
    assert MATCHER.entry_key("a@b.example")[0] != other.entry_key("a@b.example")[0]
    sealed = MATCHER.keyring.seal("a@b.example")
    assert "a@b.example" not in sealed and MATCHER.keyring.unseal(sealed) == "a@b.example"
    assert other.keyring.unseal(sealed) == "(sealed with another key)"
    with pytest.raises(ValueError):
        Keyring(b"short")


@given(st.binary(min_size=16, max_size=100), st.text())
def test_lookup_keys_are_hmac_sha256_whatever_the_secret(secret: bytes, value: str) -> None:
    # The prepared HMAC must give exactly the keys a plain HMAC gives: stored entries depend on it.
    mac_key = hmac.digest(secret, b"mailflow lookup", "sha256")
    expected = hmac.digest(mac_key, f"addr:{value}".encode(), "sha256")[:16].hex()
    assert Keyring(secret).lookup_key("addr", value) == expected


@pytest.mark.parametrize("headers, recipients, problem", [
    ([], 24, None),
    ([], 25, "List-Unsubscribe: header"),
    ([("Precedence", " Bulk ")], 1, "List-Unsubscribe: header"),
    ([("Precedence", "first-class")], 1, None),
    ([("List-Id", "<x.example>")], 1, "List-Unsubscribe: header"),
    ([("List-Id", "<x>"), ("List-Unsubscribe", "<mailto:u@x.example>")], 1, None),
    ([("List-Id", "<x>"), ("List-Unsubscribe", "<http://x.example/u>")], 1, "List-Unsubscribe: header"),
    ([("List-Id", "<x>"), ("List-Unsubscribe", "<https://x.example/u>")], 1, "List-Unsubscribe-Post"),
    ([("List-Id", "<x>"), ("List-Unsubscribe", "<https://x.example/u>"),
      ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")], 1, None),
    ([("List-Id", "<x>"), ("List-Unsubscribe", "https://x.example/u"),
      ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")], 1, "List-Unsubscribe: header"),  # no <>
])
def test_bulk_gate(headers: list[tuple[str, str]], recipients: int, problem: str | None) -> None:
    finding = bulk_finding(header_index(headers), recipients, 25)
    assert (finding is None) == (problem is None)
    if problem:
        assert finding is not None and problem in finding.text
