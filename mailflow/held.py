"""Held accounts and held messages: what the store keeps of them, read in one place.

A held account's store value is "SINCE|WHY" (unix seconds, then words). `parse_hold` is the one
reader of it: replies, logs and the CLI show the words and the time apart, never the raw value.

A message the engine holds (the MTA's hold queue; Sendmail's quarantine) is recorded as a
HeldMessage, so that `mailflow account release` can release it by its queue id. Recording costs
the milter no store round trip: HeldRecorder queues records in memory and writes them on a
background thread, at most once per `flush_every` seconds (as SentCounter does sent counts).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mailflow.model import shown

from mailflow.store.base import StoreError

if TYPE_CHECKING:
    from mailflow.store.base import Store

log = logging.getLogger("mailflow")

ADMIN_HOLD = "held by an admin"  # `mailflow account hold`'s default reason
HELD_TTL = 30 * 86400  # a held message's record is kept this long (Postfix's own default
# maximal_queue_lifetime is 5 days: a record older than that names a message long gone)
HELD_PER_ACCOUNT = 1000  # and at most this many per account, the newest
FLUSH_EVERY = 1.0  # seconds: how late a milter may write a record (`account release` waits this)
PENDING_MAX = 10_000  # records waiting for a flush while the store is down: the oldest go first
DROP_LINE_SECONDS = 60.0  # a line saying how many were dropped, at most this often
# Postfix queue ids: hex (short ids) or [0-9A-Za-z] (enable_long_queue_ids); Sendmail's are
# alphanumeric too. Anything else (`ALL`, `-`, an option, a path) never reaches postsuper.
_QUEUE_ID = re.compile(r"[0-9A-Za-z]{6,32}")


def parse_hold(value: str | None) -> tuple[int | None, str]:
    """(since, why) of a held account's stored value. A value of another shape (no `|`, no number
    before it) is all words, with no time: it is shown, never taken apart wrongly."""
    if not value:
        return None, ""
    since, sep, why = value.partition("|")
    if sep and since.isascii() and since.isdigit() and len(since) <= 12:
        return int(since), why.strip()
    return None, value.strip()


def hold_reply_text(account: str, value: str | None) -> str:
    """What the MTA logs (and Sendmail's quarantine shows) for mail of a held account: the reason
    in words, bounded; never the stored time or separator."""
    _, why = parse_hold(value)
    return f"account {shown(account)} is held: {shown(why, 200)}" if why else f"account {shown(account)} is held"


def valid_queue_id(queue_id: str) -> bool:
    """Is this a queue id postsuper (or sendmail -qI) may be given? See _QUEUE_ID."""
    return _QUEUE_ID.fullmatch(queue_id) is not None and queue_id.upper() != "ALL"


@dataclass(frozen=True)
class HeldMessage:
    account: str
    queue_id: str  # the MTA's, as its `i` macro gave it ("" when it gave none)
    at: int  # unix seconds
    reason: str  # the decision's machine word: account_held, lookalike, ratelimit...
    why: str  # in words, as an admin reads it
    recipients: int
    sender_domain: str = ""

    def value(self) -> str:
        """The stored form (JSON): the fields other than the account, which keys the record."""
        return json.dumps({"qid": self.queue_id, "at": self.at, "reason": self.reason, "why": self.why,
                           "rcpts": self.recipients, "from": self.sender_domain}, separators=(",", ":"))

    @classmethod
    def from_value(cls, account: str, value: str) -> HeldMessage:
        """A stored record; one that is not what value() wrote reads as an empty one (never raises)."""
        try:
            data = json.loads(value)
            return cls(account, str(data.get("qid", "")), int(data.get("at", 0)), str(data.get("reason", "")),
                       str(data.get("why", "")), int(data.get("rcpts", 0)), str(data.get("from", "")))
        except (ValueError, TypeError, AttributeError):
            return cls(account, "", 0, "", "unreadable record", 0)


class HeldRecorder:
    """Held messages, queued in memory and written to the store in the background."""

    def __init__(self, store: Store, flush_every: float = FLUSH_EVERY, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.flush_every = flush_every
        self.clock = clock
        self._pending: list[HeldMessage] = []
        self._lock = threading.Lock()
        self._flushing = threading.Lock()
        self._timer: threading.Timer | None = None
        self._last_flush = clock() - flush_every
        self._stopped = False
        self._dropped = 0  # records dropped since the last line that said so
        self._failing = False  # the last write failed: said once, and once when one succeeds again
        self._next_drop_line = float("-inf")

    def add(self, record: HeldMessage) -> None:
        with self._lock:
            self._pending.append(record)
            self._trim()
            self._schedule()

    def _trim(self) -> None:
        """At most PENDING_MAX waiting, the oldest dropped first and counted (under self._lock)."""
        over = len(self._pending) - PENDING_MAX
        if over > 0:
            del self._pending[:over]
            self._dropped += over

    def _schedule(self) -> None:
        """One timer at a time, due flush_every after the last flush (under self._lock)."""
        if self._timer is not None or self._stopped:
            return
        delay = max(0.0, self._last_flush + self.flush_every - self.clock())
        self._timer = threading.Timer(delay, self._flush_from_timer)
        self._timer.name, self._timer.daemon = "held-flush", True
        self._timer.start()

    def _flush_from_timer(self) -> None:
        with self._lock:
            self._timer = None
            self._last_flush = self.clock()
        self.flush()

    def flush(self) -> None:
        with self._flushing:  # one at a time: stop() returns only once a timer's flush is written
            with self._lock:
                records, self._pending = self._pending, []
            if not records:
                return
            try:
                self.store.add_held_messages(records)
            except StoreError as exc:
                with self._lock:
                    self._pending[:0] = records  # before the ones added meanwhile: the oldest go first
                    self._trim()
                    first, self._failing = not self._failing, True
                    stopped = self._stopped
                    self._schedule()
                if stopped:
                    log.error("%d held messages not recorded at stop (`mailflow held` will not list them): %s",
                              len(records), exc)
                elif first:  # once per outage: this runs every flush_every while the store is down
                    log.warning("could not record %d held messages, keeping up to %d for the next tries: %s",
                                len(records), PENDING_MAX, exc)
            else:
                if self._failing:
                    self._failing = False
                    log.warning("held messages recorded again (%d written)", len(records))
            self._report_drops()

    def _report_drops(self) -> None:
        """At most one line a minute, with the count since the last."""
        now = self.clock()
        with self._lock:
            if not self._dropped or now < self._next_drop_line:
                return
            dropped, self._dropped, self._next_drop_line = self._dropped, 0, now + DROP_LINE_SECONDS
        log.error("%d held-message records dropped, the oldest first: more than %d waited for a store that "
                  "failed; `mailflow held` will not list them (postqueue -p does)", dropped, PENDING_MAX)

    def stop(self) -> None:
        """Cancel the timer and write what is pending (engine close)."""
        with self._lock:
            timer, self._timer, self._stopped = self._timer, None, True
        if timer is not None:
            timer.cancel()
        self.flush()


def by_account(records: Sequence[HeldMessage]) -> dict[str, list[HeldMessage]]:
    grouped: dict[str, list[HeldMessage]] = {}
    for record in records:
        grouped.setdefault(record.account, []).append(record)
    return grouped
