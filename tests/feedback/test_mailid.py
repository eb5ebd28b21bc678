"""The X-Mailflow-ID header: sealed, authenticated, bounded (mailflow/feedback/mailid.py)."""

from __future__ import annotations

import base64
import os
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailflow.feedback.mailid import MAX_ID_CHARS, IdKeyError, check_key, make_id, read_id, read_with, stamped
from mailflow.model import PASS, Decision, Verdict

KEY = b"0123456789abcdef0123456789abcdef"
OTHER = b"fedcba9876543210fedcba9876543210"
NOW = 1_790_000_000.0


def test_round_trip_and_opaque() -> None:
    value = make_id(KEY, "shop.example", NOW)
    assert value.startswith("1.") and read_id(KEY, value) == "shop.example"
    assert "shop" not in value and b"shop" not in base64.urlsafe_b64decode(value[2:] + "==")
    assert make_id(KEY, "shop.example", NOW) != value  # a fresh nonce each time: messages not linkable


def test_the_longest_name_fits_the_bound_and_one_byte_more_is_refused() -> None:
    longest = make_id(KEY, "a" * 255, NOW)
    assert len(longest) <= MAX_ID_CHARS and read_id(KEY, longest) == "a" * 255
    with pytest.raises(ValueError):
        make_id(KEY, "a" * 256, NOW)
    assert read_id(KEY, "1." + "A" * MAX_ID_CHARS) is None  # refused before decoding


def test_a_folded_value_still_reads() -> None:
    value = make_id(KEY, "a" * 200, NOW)
    folded = "\r\n ".join(value[i:i + 70] for i in range(0, len(value), 70))
    assert read_id(KEY, folded) == "a" * 200 and read_id(KEY, " " * 2000 + value) is None


def test_every_changed_character_reads_as_none() -> None:
    value = make_id(KEY, "bob", NOW)
    for i in range(2, len(value)):
        changed = value[:i] + ("B" if value[i] != "B" else "C") + value[i + 1:]
        assert read_id(KEY, changed) is None, i
    assert read_id(KEY, value[:-2]) is None and read_id(KEY, value + "AA") is None


def test_another_key_reads_nothing_and_the_old_key_still_reads() -> None:
    value = make_id(OTHER, "bob", NOW)
    assert read_id(KEY, value) is None
    assert read_with([KEY, OTHER], value) == "bob" and read_with([KEY, b""], value) is None


@pytest.mark.parametrize("value", ["", "1.", "2." + "A" * 60, "1.!!!!", "1.é", "x" * 10_000, "1." + "A" * 40,
                                   "1.\udcff\udcfe"])
def test_garbage_is_none(value: str) -> None:
    assert read_id(KEY, value) is None


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=600))
def test_any_text_reads_as_none_without_raising(value: str) -> None:
    assert read_id(KEY, value) is None


def test_a_short_key_is_refused() -> None:
    with pytest.raises(IdKeyError):
        check_key(b"short")
    assert read_id(b"short", make_id(KEY, "bob", NOW)) is None


def test_stamped_adds_after_the_policy_tag_and_removes_the_clients() -> None:
    tagged = Decision(Verdict.CONTINUE, "ok", add_headers=(("X-Mailflow-Policy", "a=tag"),))
    headers = [("From", "a@b.example"), ("x-mailflow-id", "1.copied"), ("X-MAILFLOW-ID", "1.again")]
    out = stamped(tagged, KEY, "shop.example", headers, NOW)
    assert out.add_headers[0] == ("X-Mailflow-Policy", "a=tag")
    assert out.add_headers[1][0] == "X-Mailflow-ID" and read_id(KEY, out.add_headers[1][1]) == "shop.example"
    assert out.remove_headers == (("X-Mailflow-ID", 2),)
    assert stamped(PASS, KEY, "shop.example", [], NOW).remove_headers == ()


@pytest.mark.timing
def test_making_an_id_is_cheap() -> None:
    started = time.perf_counter()
    for i in range(2000):
        make_id(KEY, f"account{i}", NOW)
    per = (time.perf_counter() - started) / 2000
    assert per < 200e-6, per  # generous: a few µs measured; the hot path adds this once per message
    print(f"make_id: {per * 1e6:.1f} µs")


def test_random_keys_round_trip() -> None:
    for _ in range(20):
        key = os.urandom(32)
        assert read_id(key, make_id(key, "ü-account.example", NOW)) == "ü-account.example"
