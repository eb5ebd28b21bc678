"""Store.claim on both backends (SQLite and a real redis-server): the first caller wins, per
account and key, until the claim expires; under concurrency exactly one of many wins."""

from __future__ import annotations

import threading
import time

from mailflow.store import open_store
from mailflow.store.base import Store


def test_claims_first_wins_per_account_and_key_until_expiry(store_url: str) -> None:
    store: Store = open_store(store_url)
    try:
        assert store.claim("shop.example", "limit_refused:hour:1", 60)
        assert not store.claim("shop.example", "limit_refused:hour:1", 60)
        assert store.claim("other.example", "limit_refused:hour:1", 60)  # per account
        assert store.claim("shop.example", "limit_refused:hour:2", 60)  # per window
        assert store.claim("shop.example", "short", 1)
        time.sleep(1.1)
        assert store.claim("shop.example", "short", 1)  # expired: claimable again
    finally:
        store.close()


def test_one_of_many_concurrent_claimers_wins(store_url: str) -> None:
    """Eight 'milters' (each its own store connection) claim the same event at once."""
    stores: list[Store] = [open_store(store_url, timeout_ms=5000) for _ in range(8)]
    won: list[bool] = []
    lock = threading.Lock()
    start = threading.Barrier(len(stores))

    def claimer(store: Store) -> None:
        start.wait(timeout=10)
        result = store.claim("shop.example", "limit_near:hour:1795719600", 60)
        with lock:
            won.append(result)

    threads = [threading.Thread(target=claimer, args=(store,)) for store in stores]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    finally:
        for store in stores:
            store.close()
    assert sorted(won) == [False] * 7 + [True]
