"""One batch of feedback into the store, then the ladder: the follower and the complaint reader
both end here."""

from __future__ import annotations

import dataclasses
import time

from mailflow.config import Config
from mailflow.feedback.model import FeedbackBatch
from mailflow.reputation.evaluate import Move, evaluate
from mailflow.store.base import Store
from mailflow.suppression.admin import matcher_for
from mailflow.suppression.entries import EntryError, scope_for


# The feedback commands' store timeout, at least: not the milter's hot-path bound ([store]
# timeout_ms, 250 ms), which a batch of thousands of accounts, or a SQLite file a busy milter
# writes to, may pass; a healthy `follow --once` would then exit 1.
STORE_TIMEOUT_MS = 5000


def off_the_hot_path(config: Config) -> Config:
    """The config the feedback commands open the store with: a timeout of STORE_TIMEOUT_MS at least."""
    store = dataclasses.replace(config.store, timeout_ms=max(config.store.timeout_ms, STORE_TIMEOUT_MS))
    return dataclasses.replace(config, store=store)


def apply_batch(config: Config, store: Store, batch: FeedbackBatch, source: str | None, seq: int,
                now: float | None = None, judge: bool = True) -> list[Move]:
    """Counts (once per `source` and `seq`, see Store.add_feedback), the addresses to suppress in
    their account's list (when the config has [suppression]), then (with `judge`) the ladder for
    every account the batch touched. StoreError passes. The follower judges on its own timer
    instead: a few store reads per account, per batch, would not keep up with a busy log."""
    now = time.time() if now is None else now
    if batch.counts or batch.recipients:
        store.add_feedback(source, seq, batch.counts, batch.recipients)
    if batch.suppress and config.suppression.enabled:  # no [suppression] table: no lists to add to
        matcher = matcher_for(config)
        for account, addresses in batch.suppress.items():
            entries = []
            for address, reason in addresses.items():
                try:
                    entries.append(matcher.make_entry(address, reason, "feedback", int(now)))
                except EntryError:
                    continue  # not an address a list can hold (the log's words): nothing to suppress
            if entries:
                store.add_suppressions(scope_for(account), entries)
    return evaluate(config, store, batch.accounts(), now, batch.evidence) if judge else []
