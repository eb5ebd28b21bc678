"""Grants and the audit log keep one contract on SQLite and a real redis-server."""

from __future__ import annotations

import pytest

from mailflow import audit
from mailflow.store import Store
from tests.helpers.races import exactly_one_wins


def test_swap_grant_sets_changes_and_removes_only_from_what_was_read(store: Store) -> None:
    assert store.grants() == {}
    assert store.swap_grant("shop.example", None, "g1")
    assert not store.swap_grant("shop.example", None, "g2")  # someone set it first
    assert not store.swap_grant("shop.example", "other", None)
    assert store.swap_grant("shop.example", "g1", "g2")
    assert store.swap_grant("web.example", None, "w1")
    assert store.grants() == {"shop.example": "g2", "web.example": "w1"}
    assert not store.swap_grant("shop.example", "g1", None)  # an expired value, since replaced: kept
    assert store.swap_grant("shop.example", "g2", None)
    assert store.grants() == {"web.example": "w1"}
    assert not store.swap_grant("shop.example", "g2", None)


def test_concurrent_swaps_from_one_value_let_exactly_one_win(store: Store) -> None:
    store.swap_grant("shop.example", None, "start")
    exactly_one_wins(lambda new: store.swap_grant("shop.example", "start", new))


def test_audit_keeps_the_newest_entries_newest_first(store: Store) -> None:
    for i in range(12):
        store.add_audit(f"e{i}", keep=5)
    assert store.audit_entries(100) == ["e11", "e10", "e9", "e8", "e7"]
    assert store.audit_entries(2) == ["e11", "e10"]


def test_audit_entries_filter_by_account_over_the_whole_log(store: Store) -> None:
    audit.record(store, "ratelimit grant", "shop.example", "5/hour for 1h", "launch")
    for i in range(30):
        audit.record(store, "domains add", "web.example", f"d{i}.example")
    audit.record(store, "ratelimit revoke", "shop.example", "5/hour", None)
    shop = list(audit.entries(store, "shop.example", 10))
    assert [(e.action, e.why) for e in shop] == [("ratelimit revoke", ""), ("ratelimit grant", "launch")]
    assert len(list(audit.entries(store, None, 10))) == 10
    store.add_audit("not json", keep=audit.KEEP)  # written by something else: skipped
    assert [e.action for e in audit.entries(store, None, 2)] == ["ratelimit revoke", "domains add"]
