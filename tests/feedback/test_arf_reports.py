"""ARF complaints read, attributed, counted once and suppressed (mailflow/feedback/arf.py), on a
real store (SQLite and Redis)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailflow.config import Config, parse_config
from mailflow.feedback.arf import MAX_REPORT_BYTES, Attribution, Outcome, parse, process
from mailflow.feedback.mailid import make_id
from mailflow.store import open_store
from mailflow.store.base import Store, StoreError
from mailflow.suppression.admin import matcher_for
from mailflow.suppression.entries import scope_for
from mailflow.suppression.keys import read_key_file
from tests.helpers.arf import BOUNDARY, SHAPES, Original, report, write_id_key

NOW = float(int(time.time()))  # the stores keep recent hours only (FEEDBACK_HOURS, by the wall clock)
HOUR = int(NOW) // 3600
ACCOUNT = "cust-7"  # owns shop.example (store); its name is no domain: only the header or the domain names it


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    return write_id_key(tmp_path / "id.key")


@pytest.fixture
def config(tmp_path: Path, key_file: Path, store_url: str) -> Config:
    return parse_config({"store": {"url": store_url},
                         "suppression": {"hash_key_env": "MAILFLOW_SUPPRESSION_KEY"},
                         "ratelimit": {"limits": ["100/hour"]},
                         "feedback": {"id_key_file": str(key_file)}}, str(tmp_path))


@pytest.fixture
def store(config: Config) -> Iterator[Store]:
    opened = open_store(config.store.url, 2000)
    opened.add_domain(ACCOUNT, "shop.example")
    yield opened
    opened.close()


def run(config: Config, store: Store, raw: bytes, now: float = NOW) -> Outcome:
    return process(config, store, Attribution(config, store), raw, now)


def complaints(store: Store, account: str = ACCOUNT) -> int:
    return sum(fields.get("complaint", 0) for fields in store.feedback_counts(account, [HOUR]).values())


def suppressed(config: Config, store: Store, address: str, account: str = ACCOUNT) -> bool:
    keys = matcher_for(config).recipient_keys(address)
    return bool(store.find_suppressions(account, [scope_for(account)], keys).matches)


def stamped(config: Config, account: str = ACCOUNT) -> str:
    return make_id(config.feedback.id_key, account, NOW - 3600)


NAMED = {"yahoo", "mailru", "headers_only", "no_original", "eight_bit"}  # the rest redact the recipient


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_each_loops_report_counts_once_and_suppresses_the_complainer(config: Config, store: Store,
                                                                      shape: str) -> None:
    original = Original(mailflow_id=stamped(config), sender="news@elsewhere.example")  # From: owned by nobody
    if shape == "no_original":  # nothing but the report's fields: the Original-Mail-From domain attributes it
        original = Original(sender="news@shop.example")
    if shape == "eight_bit":
        original.subject, original.body = "Soldes d'été", "Café crème €\r\n".encode()
    outcome = run(config, store, report(original, SHAPES[shape]))
    assert outcome.counted, outcome.line
    assert f"account={ACCOUNT}" in outcome.line and "\n" not in outcome.line
    assert complaints(store) == 1
    assert suppressed(config, store, "reader@mail.example") == (shape in NAMED)
    assert not run(config, store, report(original, SHAPES[shape])).counted  # the same report again
    assert complaints(store) == 1


def test_attributed_by_the_from_domain_when_the_receiver_dropped_the_header(config: Config, store: Store) -> None:
    outcome = run(config, store, report(Original(sender="news@mail.shop.example")))
    assert outcome.counted and "by=From: mail.shop.example" in outcome.line, outcome.line
    assert complaints(store) == 1 and suppressed(config, store, "reader@mail.example")


def test_the_header_wins_over_the_from_domain(config: Config, store: Store) -> None:
    run(config, store, report(Original(mailflow_id=stamped(config, "other-acct"), sender="news@shop.example")))
    assert complaints(store, "other-acct") == 1 and complaints(store) == 0
    assert suppressed(config, store, "reader@mail.example", "other-acct")
    assert not suppressed(config, store, "reader@mail.example")


def test_the_old_key_still_attributes(tmp_path: Path, config: Config, store: Store, key_file: Path) -> None:
    new_key = write_id_key(tmp_path / "new.key")
    rotated = parse_config({"store": {"url": config.store.url},
                            "suppression": {"hash_key_env": "MAILFLOW_SUPPRESSION_KEY"},
                            "feedback": {"id_key_file": str(new_key), "id_old_key_file": str(key_file)}})
    assert rotated.feedback.id_old_key == read_key_file(str(key_file))
    outcome = run(rotated, store, report(Original(mailflow_id=stamped(config), sender="x@elsewhere.example")))
    assert outcome.counted and "by=X-Mailflow-ID" in outcome.line


def test_duplicates_count_once_but_another_complainer_counts(config: Config, store: Store) -> None:
    assert run(config, store, report(Original(), report_id="<r1@loop.example>")).counted
    # The loop resends it under a new report id: same original, same complainer.
    again = run(config, store, report(Original(), report_id="<r2@loop.example>"))
    assert not again.counted and "seen before" in again.line
    # The same report id for another original: still the report seen before.
    assert not run(config, store, report(Original(message_id="<x@y>"), report_id="<r1@loop.example>")).counted
    # The same newsletter, another recipient complaining: a second complaint.
    assert run(config, store, report(Original(to="other@mail.example"), report_id="<r3@loop.example>")).counted
    # No ids at all: the same bytes count once.
    bare = report(Original(message_id=""), report_id=None)
    assert run(config, store, bare).counted and not run(config, store, bare).counted
    assert complaints(store) == 3


class _FailsOnce:
    """The real store, whose first add_feedback meets a fault: after the claims, before the count."""

    def __init__(self, store: Store) -> None:
        self.store, self.failed = store, False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def add_feedback(self, *args: Any) -> None:
        if not self.failed:
            self.failed = True
            raise StoreError("connection lost")
        self.store.add_feedback(*args)


def test_a_fault_between_the_claim_and_the_count_is_retried_not_lost(config: Config, store: Store) -> None:
    flaky = cast(Store, _FailsOnce(store))
    with pytest.raises(StoreError):  # the command exits 75; the MTA hands the report over again
        run(config, flaky, report(Original()))
    assert complaints(store) == 0
    assert run(config, flaky, report(Original())).counted
    assert not run(config, flaky, report(Original())).counted
    assert complaints(store) == 1


def test_several_recipients_count_and_suppress_nobody(config: Config, store: Store) -> None:
    raw = report(Original(to="a@mail.example, b@mail.example"), SHAPES["aol"])  # no Original-Rcpt-To
    outcome = run(config, store, raw.replace(b"To: redacted", b"To: a@mail.example, b@mail.example"))
    assert outcome.counted and "nobody suppressed" in outcome.line
    several = report(Original(message_id="<o2@x>"), fields=[("Original-Rcpt-To", "<b@mail.example>")],
                     report_id="<r9@x>")
    assert "nobody suppressed" in run(config, store, several).line
    assert not suppressed(config, store, "a@mail.example") and not suppressed(config, store, "b@mail.example")
    assert complaints(store) == 2


GOOD = report(Original())
MALFORMED = {
    "empty": b"",
    "garbage": os.urandom(5000),
    "not multipart": b"From: a@b.example\r\nSubject: spam!\r\n\r\nplease stop\r\n",
    "other report type": GOOD.replace(b"report-type=feedback-report", b"report-type=delivery-status"),
    "no feedback part": GOOD.replace(b"message/feedback-report", b"text/plain"),
    "no feedback type": GOOD.replace(b"Feedback-Type: abuse\r\n", b""),
    "not-spam": report(Original(), feedback_type="not-spam"),
    "auth-failure": report(Original(), feedback_type="auth-failure"),
    "from without domain": report(Original(sender="news")),
    "from unowned domain": report(Original(sender="news@bank.example")),
    "two froms": GOOD.replace(b"From: Shop", b"From: x@shop.example\r\nFrom: Shop"),
    "forged id": report(Original(mailflow_id="1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")),
    "id of another key": report(Original(mailflow_id=make_id(b"k" * 32, ACCOUNT, NOW))),
    "no original, no envelope": report(Original(sender=""), SHAPES["no_original"]),
    "undecodable original, no envelope": report(Original(sender=""), SHAPES["mailru"]).replace(
        b"Content-Transfer-Encoding: base64\r\n\r\n", b"Content-Transfer-Encoding: base64\r\n\r\n=A"),
    "deeply nested": (b"Content-Type: multipart/report; report-type=feedback-report; boundary=b0\r\n\r\n"
                      + b"".join(f"--b{i}\r\nContent-Type: multipart/mixed; boundary=b{i + 1}\r\n\r\n".encode()
                                 for i in range(3000))),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_a_malformed_report_is_one_line_and_counts_nothing(config: Config, store: Store, name: str) -> None:
    outcome = run(config, store, MALFORMED[name])
    assert not outcome.counted and outcome.line.startswith("not counted: "), outcome.line
    assert "\n" not in outcome.line and len(outcome.line) < 400 and outcome.line.isprintable()
    assert complaints(store) == 0 and not store.feedback_accounts([HOUR])


def test_a_report_mentioning_the_owned_domain_elsewhere_is_not_attributed_by_it(config: Config, store: Store) -> None:
    raw = report(Original(sender="x@bank.example", extra=[("Reply-To", "a@shop.example")]),
                 fields=[("Reported-Domain", "shop.example")])
    assert not run(config, store, raw).counted


def test_a_report_over_the_cap_is_read_from_its_start(config: Config, store: Store) -> None:
    """A complaint about a newsletter with a large attachment still counts: its first 10 MiB."""
    raw = report(Original(body=b"x" * 76 + b"\r\n")).replace(b"x" * 76 + b"\r\n", (b"x" * 76 + b"\r\n") * 150_000)
    assert len(raw) > MAX_REPORT_BYTES
    outcome = run(config, store, raw)
    assert outcome.counted and f"read its first {MAX_REPORT_BYTES} bytes" in outcome.line, outcome.line
    assert suppressed(config, store, "reader@mail.example")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=3000))
def test_arbitrary_bytes_never_raise(raw: bytes) -> None:
    for candidate in (raw, GOOD[:200] + raw, GOOD.replace(b"Feedback-Type: abuse", raw[:50])):
        try:
            parse(candidate)
        except Exception as exc:
            assert type(exc).__name__ == "NotCounted", exc


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(min_value=0, max_value=len(GOOD)), st.binary(max_size=300), st.integers(min_value=0, max_value=400))
def test_a_report_with_bytes_spliced_in_anywhere_is_handled_in_one_line(config: Config, store: Store, at: int,
                                                                      noise: bytes, cut: int) -> None:
    """Whatever a mangled report does, the whole path (parse, attribution, complainer, claim,
    count) gives one line or counts; it never raises."""
    outcome = run(config, store, GOOD[:at] + noise + GOOD[at + cut:])
    assert "\n" not in outcome.line and outcome.line.isprintable() and len(outcome.line) < 600


@pytest.mark.timing
def test_ten_mib_of_hostile_input_is_read_in_bounded_time() -> None:
    # A third of the cap each (linear: the whole cap takes about three times as long; measured
    # 2.9 s, 5.7 s and 2.0 s at 10 MiB on an idle machine, README "Complaints (ARF)").
    shapes = {"headers": b"X-A: b\r\n" * (MAX_REPORT_BYTES // 24),
              "boundaries": GOOD[:GOOD.index(b"\r\n\r\n") + 4] + f"--{BOUNDARY}\r\n\r\n".encode() * 100_000,
              "folded": GOOD.replace(b"Feedback-Type: abuse", b"Feedback-Type: abuse" + b"\r\n x" * 700_000)}
    for name, raw in shapes.items():
        assert len(raw) <= MAX_REPORT_BYTES, name
        started = time.perf_counter()
        try:
            parse(raw)
        except Exception as exc:
            assert type(exc).__name__ == "NotCounted", exc
        assert time.perf_counter() - started < 15, name
