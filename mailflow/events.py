"""Policy events an admin may want to hear about, published by whoever sees them (the engine, the
CLI, a refresh thread) and delivered by whoever subscribed (the notifier, the metrics).

Publishing never blocks and never raises into the caller: the milter publishes on its hot path,
so a subscriber must only queue the event and do its slow work (HTTP, SMTP, the store) elsewhere.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

log = logging.getLogger("mailflow")

# The kinds, as they appear in logs and in webhook payloads ("event" field).
LIMIT_REFUSED = "limit_refused"  # an account's first refusal for a limit in the limit's window
LIMIT_NEAR = "limit_near"  # an account reached the configured share of a limit
ACCOUNT_HELD = "account_held"  # trap hits, lookalike or an admin
ACCOUNT_RELEASED = "account_released"
GRANT_GIVEN = "grant_given"  # also extended
GRANT_ENDED = "grant_ended"  # expired or revoked
REPUTATION_RAISED = "reputation_raised"  # the ladder moved an account up (reputation/evaluate.py)
REPUTATION_LOWERED = "reputation_lowered"  # a clean period, or an admin's reset
KINDS = (LIMIT_REFUSED, LIMIT_NEAR, ACCOUNT_HELD, ACCOUNT_RELEASED, GRANT_GIVEN, GRANT_ENDED, REPUTATION_RAISED,
         REPUTATION_LOWERED)


@dataclass(frozen=True)
class Event:
    kind: str  # one of KINDS
    account: str
    detail: Mapping[str, str | int | float] = field(default_factory=dict)  # plain values only
    at: float = field(default_factory=time.time)


Subscriber = Callable[[Event], None]
_subscribers: list[Subscriber] = []
_lock = threading.Lock()


def subscribe(subscriber: Subscriber) -> Callable[[], None]:
    """Deliver every later event to `subscriber`; returns the call that stops it."""
    with _lock:
        _subscribers.append(subscriber)

    def unsubscribe() -> None:
        with _lock:
            if subscriber in _subscribers:
                _subscribers.remove(subscriber)

    return unsubscribe


def publish(event: Event) -> None:
    """Hand `event` to every subscriber. A subscriber's fault is logged with its traceback and
    never reaches the publisher: a notice that failed must not fail a message."""
    for subscriber in tuple(_subscribers):
        try:
            subscriber(event)
        except Exception:  # noqa: BLE001 - logged whole; the publisher's work goes on
            log.exception("event subscriber failed on %s for %s", event.kind, event.account)
