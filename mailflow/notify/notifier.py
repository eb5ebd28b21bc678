"""The notifier: subscribed to policy events, it queues them (never blocking the publisher, the
milter's hot path) and sends them from one background thread: the once-per-fleet claim in the
store, a log line, the signed webhook (retried with backoff, other notices go on meanwhile),
e-mail to the admins and to the account's contact.

A full queue drops the event, counted, with at most one log line a minute. A store that cannot
be asked for the claim does not stop a notice: duplicates are better than silence, and the log
line says `dedup=store_down` (the webhook's `id` is the same on every milter, for the receiver).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from mailflow import events
from mailflow.events import ACCOUNT_HELD, LIMIT_REFUSED, Event
from mailflow.log import log_decision
from mailflow.model import shown  # an account is named by a customer: no control character in a log line
from mailflow.notify import customers, payload
from mailflow.notify.mail import MailChannel
from mailflow.notify.webhook import Webhook, backoff
from mailflow.settings import Config
from mailflow.store.base import Store, StoreError

log = logging.getLogger("mailflow")

DROP_REPORT_SECONDS = 60.0
STOP_SECONDS = 2.0  # a milter worker that stops waits this long for notices in flight
CLI_SECONDS = 15.0
IDLE_SECONDS = 5.0  # the thread's longest sleep: close() and new events wake it at once
_OWN_FIELDS = ("event", "kind", "account", "id", "dedup", "channels")  # a detail field never replaces these  # an admin command waits this long for its notices (a webhook down: one line)


@dataclass
class _Delivery:
    event: Event
    event_id: str
    body: bytes
    attempt: int  # attempts made
    give_up_at: float  # monotonic: no attempt starts later


class Notifier:
    def __init__(self, config: Config, store: Store | None, host: str | None = None, quiet: bool = False) -> None:
        self.settings = config.notify
        self.quiet = quiet  # notice lines at INFO: an admin command's stderr shows only failures
        self.store = store
        self._host = host
        # Built only when e-mail is on: its default sender looks the host's name up (DNS).
        self.mail = MailChannel(config.rbl) if self.settings.email_to or self.settings.contacts else None
        self.webhook = (Webhook(self.settings.webhook, self.settings.webhook_secret,
                                self.settings.webhook_timeout_ms / 1000) if self.settings.webhook else None)
        self._queue: queue.Queue[Event | None] = queue.Queue(maxsize=self.settings.queue_size)  # None: wake up
        self._retries: list[tuple[float, int, _Delivery]] = []  # (due, tie-break, delivery)
        self._order = itertools.count()
        self._lock = threading.Lock()
        self.dropped = 0
        self._dropped_reported = 0
        self._next_drop_report = 0.0
        self.sent = 0  # notices sent: their claim won, or they needed none
        self._store_down = False
        self._closing = threading.Event()
        self._deadline = float("inf")
        self._thread = threading.Thread(target=self._run, name="mailflow-notify", daemon=True)
        self._unsubscribe: Callable[[], None] = _nothing

    @property
    def host(self) -> str:
        """This host's name, as payloads give it; looked up once, by the thread that sends."""
        if self._host is None:
            self._host = socket.getfqdn()
        return self._host

    def start(self) -> Notifier:
        self._thread.start()
        self._unsubscribe = events.subscribe(self.submit)
        return self

    # -- the publisher's side: never blocks --------------------------------------------------

    def submit(self, event: Event) -> None:
        try:
            self._queue.put_nowait(event)
            return
        except queue.Full:
            pass
        now = time.monotonic()
        with self._lock:
            self.dropped += 1
            if now < self._next_drop_report:
                return
            self._next_drop_report = now + DROP_REPORT_SECONDS
            count, self._dropped_reported = self.dropped - self._dropped_reported, self.dropped
        log.warning("notify: queue full (%d notices waiting): %d dropped since the last report, this one %s for %s;"
                    " the webhook or mail relay is slow or down", self.settings.queue_size, count, event.kind,
                    shown(event.account))

    def close(self, timeout: float = STOP_SECONDS) -> None:
        """Stop taking events; send what is queued for up to `timeout` seconds; say what was lost."""
        self._unsubscribe()
        self._deadline = time.monotonic() + timeout
        self._closing.set()
        try:
            self._queue.put_nowait(None)  # wake the thread now (when full, it is busy and looks next)
        except queue.Full:
            pass
        if self._thread.is_alive():
            self._thread.join(timeout + 1)
        lost = sum(1 for event in list(self._queue.queue) if event is not None) + len(self._retries)
        if lost:
            log.warning("notify: %d notices not sent (queued or waiting for a webhook retry) when mailflow stopped",
                        lost)

    # -- the background thread ------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            now = time.monotonic()
            if self._closing.is_set() and (now >= self._deadline or (self._queue.empty() and not self._retries)):
                return
            wait = max(0.0, self._retries[0][0] - now) if self._retries else IDLE_SECONDS
            if self._closing.is_set():
                wait = min(wait, max(0.0, self._deadline - now))
            try:
                event = self._queue.get(timeout=wait)
            except queue.Empty:
                event = None
            if event is not None:
                self._guarded(self._handle, event)
            while self._retries and self._retries[0][0] <= time.monotonic():
                _, _, delivery = heapq.heappop(self._retries)
                self._guarded(self._attempt, delivery)

    def _guarded(self, step: Callable[[Any], None], item: object) -> None:
        try:
            step(item)
        except Exception:  # noqa: BLE001 - logged whole; one broken notice must not end the thread
            log.exception("notify: sending a notice failed")

    def _handle(self, event: Event) -> None:
        key = payload.claim_key(event)
        dedup = None
        if key is not None and self.store is not None:
            try:
                claimed = self.store.claim(event.account, key, payload.CLAIM_TTL)
            except StoreError as exc:  # each notice's line says dedup=store_down; this, once an outage
                dedup = "store_down"
                if not self._store_down:
                    log.warning("notify: store unavailable for claims (%s); notices are sent anyway, other milters "
                                "may send them too", exc)
                self._store_down = True
            else:
                if self._store_down:
                    log.warning("notify: store answers claims again")
                self._store_down = False
                if not claimed:
                    log.info("notify: %s for %s (%s) sent by another milter", event.kind, shown(event.account), key)
                    return
        event_id = payload.event_id(event)
        contact = self.settings.contacts.get(event.account, "")
        to_customer = bool(contact) and event.kind in self.settings.customer_events
        to_admins = bool(self.settings.email_to) and event.kind in self.settings.email_events
        channels = [name for name, on in (("webhook", self.webhook is not None), ("email", to_admins),
                                          ("customer", to_customer)) if on]
        loud = event.kind in (LIMIT_REFUSED, ACCOUNT_HELD) and not self.quiet
        log_decision(logging.WARNING if loud else logging.INFO,
                     **{"event": "notice", "kind": event.kind, "account": event.account, "id": event_id,
                        **{k: v for k, v in event.detail.items() if k not in _OWN_FIELDS},
                        "dedup": dedup, "channels": ",".join(channels) or "log"})
        self.sent += 1
        if self.webhook is not None:
            self._attempt(_Delivery(event, event_id, payload.body(event, event_id, self.host), 0,
                                    time.monotonic() + self.settings.webhook_max_seconds))
        subject = f"[mailflow] {payload.summary(event)}"
        if to_admins and self.mail is not None:
            self.mail.send(self.settings.email_to, subject, payload.details(event) + f"id: {event_id}\n",
                           what="notice e-mail")
        if to_customer and self.mail is not None:
            subject, text = customers.render(self.settings.customer_template, event, event_id, self.host)
            self.mail.send([contact], subject, text, what="customer notice")

    def _attempt(self, delivery: _Delivery) -> None:
        assert self.webhook is not None
        outcome = self.webhook.post(delivery.body, delivery.event_id, delivery.event.kind)
        delivery.attempt += 1
        if outcome.delivered:
            if delivery.attempt > 1:
                log.info("notify: webhook took %s %s for %s at attempt %d", delivery.event_id, delivery.event.kind,
                         shown(delivery.event.account), delivery.attempt)
            return
        delay = max(backoff(delivery.attempt, self.settings.webhook_backoff_ms / 1000), outcome.retry_after)
        due = time.monotonic() + delay
        if outcome.retry and delivery.attempt < self.settings.webhook_attempts and due <= delivery.give_up_at:
            log.info("notify: webhook attempt %d for %s failed (%s); next in %.1fs", delivery.attempt,
                     delivery.event_id, outcome.why, delay)
            heapq.heappush(self._retries, (due, next(self._order), delivery))
            return
        log.error("notify: webhook gave up on %s %s for %s after %d attempts: %s", delivery.event_id, delivery.event.kind, shown(delivery.event.account), delivery.attempt, outcome.why)


def _nothing() -> None:
    pass


def start_notifier(config: Config, store: Store | None, quiet: bool = False) -> Notifier:
    return Notifier(config, store, quiet=quiet).start()


@contextmanager
def notifying(config: Config, store: Store | None, timeout: float = CLI_SECONDS) -> Iterator[Notifier]:
    """For an admin command: the events it publishes are sent before it exits (bounded)."""
    notifier = start_notifier(config, store, quiet=True)
    try:
        yield notifier
    finally:
        notifier.close(timeout)
