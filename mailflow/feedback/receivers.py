"""The provider's IPs, seen by receivers: refusals that name reputation or blocking, counted per
outbound IP and receiving domain; a burst alerts like a DNSBL listing (mailflow/rbl/), because
the largest receivers (Microsoft, Gmail, Yahoo, Comcast) block without publishing a list.

`receiver_block` is pure (one Outcome in, a label or None out). `ReceiverWatch` is fed by the
follower: `observe` per Outcome, `flush` after each batch. Shared state is one small JSON string
swapped with Store.state_swap, so a fleet of followers on one store alerts once per transition.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from mailflow.config import Config
from mailflow.feedback.model import TEXT_MAX, FeedbackBatch, Outcome
from mailflow.log import log_decision
from mailflow.model import shown
from mailflow.rbl.alerts import Alerter
from mailflow.store.base import Store, StoreError

log = logging.getLogger("mailflow")

# (label, pattern): the first that matches names the refusal. Each pattern is a plain
# alternation of literals with bounded gaps: linear in the (already cut) reply text.
PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple((label, re.compile(rx, re.IGNORECASE)) for label, rx in (
    # "554 5.7.1 Service unavailable; Client host [192.0.2.7] blocked using zen.spamhaus.org"
    ("spamhaus", r"spamhaus"),
    # Microsoft: "550 5.7.1 Unfortunately, messages from [192.0.2.7] weren't sent. Please contact
    # your Internet service provider since part of their network is on our block list (S3140)."
    ("microsoft", r"\bS3[01]\d\d\b|part of their network is on our block ?list"),
    # Gmail: "421 4.7.28 … an unusual rate of unsolicited mail originating from your IP address";
    # "550 5.7.1 … this message is likely unsolicited mail".
    ("gmail-rate", r"unusual rate of unsolicited mail"),
    ("gmail-unsolicited", r"likely unsolicited mail"),
    # Yahoo: "421 4.7.0 [TSS04] Messages from 192.0.2.7 temporarily deferred due to unexpected
    # volume or user complaints"
    ("yahoo", r"\[TSS?\d\d\]|deferred due to (?:unexpected volume or )?user complaints"),
    # Comcast: "BL000000 … sent in patterns that are characteristic of spam"; BL000001 Spamhaus …
    ("comcast", r"\bBL\d{6}\b|characteristic of spam"),
    # Orange: "Service refuse. Veuillez essayer plus tard … OFR004_105" (reputation-based refusals)
    ("orange", r"\bOFR(?:\d{3})?_\d{3}\b"),
    # Any DNSBL named by the receiver: "blocked using bl.example", "listed at/on/in …"
    ("dnsbl", r"blocked using\b|(?<!not )\blisted (?:at|on|in|by)\b|\b(?:rbl|dnsbl)\b"),
    ("reputation", r"\b(?:low|poor|bad) (?:sender |ip |domain )?reputation|reputation of the sending"),
    ("blocklist", r"block ?list|black ?list|blocklisted|blacklisted"),
))

# DSNs whose text is worth reading: policy refusals and deferrals, and the x.0.0 Postfix fills in
# when a receiver gave no enhanced code (Comcast's and Orange's greetings). Never 5.1.x/5.2.x.
_STATUSES = ("bounced", "deferred")
_DSN = re.compile(r"[45]\.(?:7\.\d{1,3}|0\.0)")

MAX_PAIRS = 2_000  # (IP, domain) pairs followed within the window: receiving domains are client-chosen
RETRIES_KEPT = 2  # refusals kept per pair, in bursts: room for retries of the same recipients
MAX_ACCOUNTS = 50  # refused accounts remembered per pair
MAX_LISTED = 1_000  # pairs kept blocked in the store's one state string
MAX_ALERTS = 10  # alerts sent per batch (each may be a webhook POST and a mail)
MAX_ALERTS_HOUR = 60  # and per hour: batches come every second, and a customer's domains can block and lift on cue
FORGET_SECONDS = 7 * 86400  # a block with neither refusal nor delivery for a week is forgotten
STATE_KEY = "receivers:blocks"
UNKNOWN_IP = "unknown"


def receiver_block(outcome: Outcome) -> str | None:
    """The label of a refusal that names reputation or blocking, else None. A 5.7.1 for relay
    access, DMARC or SPF names none of these and is not counted."""
    if outcome.status not in _STATUSES or not _DSN.fullmatch(outcome.dsn):
        return None
    text = outcome.reply[:TEXT_MAX]
    for label, pattern in PATTERNS:
        if pattern.search(text):
            return label
    return None


def receiving_domain(recipient: str) -> str:
    return recipient.rpartition("@")[2].strip("<>").lower()[:253] or "?"


def outbound_ip(config: Config, service: str) -> str:
    """The outbound IP of a delivery agent ([feedback] outbound_ips), else the one [rbl] ip when
    there is exactly one, else "unknown" (several IPs and no map: which one sent is not logged)."""
    ip = config.feedback.outbound_ips.get(service)
    if ip:
        return ip
    return config.rbl.ips[0] if len(config.rbl.ips) == 1 else UNKNOWN_IP


Pair = tuple[str, str]  # (outbound IP, receiving domain)


@dataclass(frozen=True)
class Step:
    listed: dict[str, list[int]]  # "IP|domain" -> [since, last refusal, last delivery]
    # (receiver_blocked | receiver_unblocked, "IP|domain", its [since, last refusal, last delivery])
    events: list[tuple[str, str, list[int]]]
    full: list[str] = field(default_factory=list)  # bursts not listed: MAX_LISTED pairs already are


def receivers_step(listed: Mapping[str, list[int]], bursts: Mapping[str, int], refused: Mapping[str, int],
                   delivered: Mapping[str, int], now: int, clean_seconds: int) -> Step:
    """Pure transitions of the blocked pairs. `bursts`: pairs whose refusals reached the burst
    (-> time of the last); `refused`/`delivered`: the last refusal/delivery of each pair seen in
    this batch. Blocked on a burst; lifted once the pair delivered `clean_seconds` after its last
    refusal (silence is not clean: an IP that stopped sending there stays blocked, like an
    unanswered DNSBL query), or forgotten after a week with no news at all."""
    out = {key: list(value) for key, value in listed.items()}
    events: list[tuple[str, str, list[int]]] = []
    full: list[str] = []
    for key, last in refused.items():
        if key in out:
            out[key][1] = max(out[key][1], last)
    for key, last in delivered.items():
        if key in out:
            out[key][2] = max(out[key][2], last)
    for key, last in sorted(bursts.items()):
        if key not in out and len(out) < MAX_LISTED:
            out[key] = [now, last, 0]
            events.append(("receiver_blocked", key, out[key]))
        elif key not in out:
            full.append(key)
    for key in sorted(out):
        _, last_refusal, last_delivery = out[key]
        lifted = last_delivery - last_refusal >= clean_seconds and now - last_refusal >= clean_seconds
        if lifted or now - max(last_refusal, last_delivery) >= FORGET_SECONDS:
            events.append(("receiver_unblocked", key, out.pop(key)))
    return Step(out, events, full)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class ReceiverWatch:
    """Counts blocking refusals per (outbound IP, receiving domain) and the accounts refused;
    `flush(now)` after each batch turns bursts into alerts. Log times (Outcome.at) measure the
    burst window, so a replayed or late-read log counts as it happened; `clock` dates the rest."""

    def __init__(self, config: Config, store: Store, clock: Callable[[], float] = time.time,
                 alerter: Alerter | None = None) -> None:
        self.config = config
        self.settings = config.feedback.receivers
        self.store = store
        self.clock = clock
        self.alerter = alerter or Alerter(config.rbl)
        self.window = self.settings.window_minutes * 60
        # Per pair, its latest refusals (time, recipient): a deferral retried is the same recipient
        # again, so a burst counts distinct recipients among the last RETRIES_KEPT * burst.
        self._recent: dict[Pair, deque[tuple[float, int]]] = {}  # (time, hash of the recipient)
        self._accounts: dict[Pair, Counter[str]] = {}
        self._sample: dict[Pair, tuple[str, str]] = {}  # pair -> (label, reply) of its last refusal
        self._refused: dict[Pair, int] = {}  # this batch: last refusal time
        self._delivered: dict[Pair, int] = {}  # this batch: last delivery time, blocked pairs only
        self._blocked: set[str] = set()  # "IP|domain" blocked as of the last flush
        self.refusals: Counter[str] = Counter()  # per outbound IP, since start (metrics)
        self.blocked_by_ip: Counter[str] = Counter()  # per outbound IP, as of the last flush
        self._latest = 0.0  # the newest log time seen: the window's "now"
        self._pruned_at = 0.0
        # A swap whose reply was lost (StoreError after the write may have landed): the state it
        # wrote and its events. If the store holds that state at the next flush, the write was
        # ours and its alerts are sent then; otherwise the kept news recompute them.
        self._sent_at: deque[float] = deque()  # when the alerts of the last hour were sent
        self._unfollowed = 0  # refusals this batch of pairs beyond MAX_PAIRS: not followed
        self._unsure: tuple[str, list[tuple[str, str, list[int]]]] | None = None

    def observe(self, outcome: Outcome, account: str | None) -> None:
        if not math.isfinite(outcome.at):
            return  # no time, no window (the parser gives one; a hand-made Outcome may not)
        pair = (outbound_ip(self.config, outcome.service), receiving_domain(outcome.recipient))
        self._latest = max(self._latest, outcome.at)
        if outcome.status == "sent":
            if f"{pair[0]}|{pair[1]}" in self._blocked:
                self._delivered[pair] = max(self._delivered.get(pair, 0), int(outcome.at))
            return
        label = receiver_block(outcome)
        if label is None:
            return
        self.refusals[pair[0]] += 1
        if pair not in self._recent and len(self._recent) >= MAX_PAIRS:
            if self._latest > self._pruned_at:  # one sweep per newer log time, not one per line
                self._prune()
            if len(self._recent) >= MAX_PAIRS:
                self._unfollowed += 1  # said at the flush: a real receiver's burst may be among them
                return  # a flood of client-chosen domains within the window: counted, not followed
        self._recent.setdefault(pair, deque(maxlen=RETRIES_KEPT * self.settings.burst)).append(
            (outcome.at, hash(outcome.recipient)))
        self._refused[pair] = max(self._refused.get(pair, 0), int(outcome.at))
        self._sample[pair] = (label, outcome.reply)
        accounts = self._accounts.setdefault(pair, Counter())
        if account and (account in accounts or len(accounts) < MAX_ACCOUNTS):
            accounts[account] += 1

    def after_batch(self, batch: FeedbackBatch, source: str, seq: int) -> None:
        """The follower's after-batch callback (feedback/follow.py AfterBatch)."""
        self.flush()

    def flush(self, now: float | None = None) -> list[dict[str, Any]]:
        """Record this batch's news in the store; alert on the transitions this follower made.
        A StoreError is logged and the batch's news kept for the next flush."""
        now = self.clock() if now is None else now
        self._prune()  # a burst is recent (in log time): never an old one again after its lifting
        bursts = {f"{ip}|{domain}": int(refusals[-1][0]) for (ip, domain), refusals in self._recent.items()
                  if self._burst(refusals) >= self.settings.burst}
        refused = {f"{ip}|{domain}": last for (ip, domain), last in self._refused.items()}
        delivered = {f"{ip}|{domain}": last for (ip, domain), last in self._delivered.items()}
        try:
            events = self._landed()
            step = self._swap(bursts, refused, delivered, int(now))
        except StoreError as exc:
            log.error("receivers: the store failed, blocks not recorded this batch: %s", exc)
            return []
        step = Step(step.listed, events + step.events, step.full)
        self._refused.clear()
        self._delivered.clear()
        self._blocked = set(step.listed)
        self.blocked_by_ip = Counter(key.partition("|")[0] for key in step.listed)
        while self._sent_at and now - self._sent_at[0] >= 3600:
            self._sent_at.popleft()
        room = max(0, min(MAX_ALERTS, MAX_ALERTS_HOUR - len(self._sent_at)))
        alerts = [self._alert(event, key, values, now) for event, key, values in step.events[:room]]
        for alert in alerts:
            self.alerter.send(alert)
            self._sent_at.append(now)
        if len(step.events) > room:  # domains are client-chosen: never a storm of POSTs and mails
            log_decision(logging.WARNING, event="receiver_alerts_cut", sent=room,
                         not_sent=len(step.events) - room,
                         first=shown(f"{step.events[room][0]} {step.events[room][1]}", 300),
                         detail=f"more receivers blocked or lifted than are alerted ({MAX_ALERTS} a batch, "
                                f"{MAX_ALERTS_HOUR} an hour); all are recorded")
        if self._unfollowed:
            log_decision(logging.WARNING, event="receiver_pairs_full", not_followed=self._unfollowed,
                         detail=f"refusals naming a block from more than {MAX_PAIRS} receiving domains within the "
                                "window: those of new domains are counted, not followed (no burst, no alert)")
            self._unfollowed = 0
        if step.full:  # receiving domains are client-chosen: a flood of them must not hide a real block unsaid
            log_decision(logging.WARNING, event="receiver_blocks_full", not_listed=len(step.full),
                         first=shown(step.full[0], 300), listed=len(step.listed),
                         detail="receivers refusing an outbound IP, not recorded nor alerted: the state holds "
                                f"{MAX_LISTED} blocked pairs already")
        return alerts

    def _swap(self, bursts: dict[str, int], refused: dict[str, int], delivered: dict[str, int], now: int) -> Step:
        """Compare-and-swap the shared state; on a lost race re-read and recompute (bounded)."""
        clean = self.settings.clean_minutes * 60
        for _ in range(8):
            previous = self.store.state_get(STATE_KEY)
            step = receivers_step(_load(previous), bursts, refused, delivered, now, clean)
            new = json.dumps(step.listed, sort_keys=True, separators=(",", ":"))
            if new == (previous or "{}"):
                return step
            try:
                swapped = self.store.state_swap(STATE_KEY, previous, new)
            except StoreError:
                if step.events:
                    self._unsure = (new, step.events)
                raise
            if swapped:
                return step
        raise StoreError("receivers: the shared state kept changing under this follower")

    def _landed(self) -> list[tuple[str, str, list[int]]]:
        """The events of a swap whose reply was lost, if the store holds what it wrote."""
        if self._unsure is None:
            return []
        new, events = self._unsure
        landed = self.store.state_get(STATE_KEY) == new  # StoreError passes: still unsure
        self._unsure = None
        return events if landed else []

    def _burst(self, refusals: deque[tuple[float, int]]) -> int:
        """Distinct recipients refused within the window before the pair's latest refusal."""
        latest = refusals[-1][0]
        return len({recipient for at, recipient in refusals if latest - at <= self.window})

    def _prune(self) -> None:
        """Forget pairs with no refusal within the window (in log time): memory follows recent news."""
        self._pruned_at = self._latest
        for pair in [p for p, refusals in self._recent.items() if self._latest - refusals[-1][0] > self.window]:
            del self._recent[pair]
            self._accounts.pop(pair, None)
            self._sample.pop(pair, None)

    def _alert(self, event: str, key: str, values: list[int], now: float) -> dict[str, Any]:
        ip, _, domain = key.partition("|")
        pair = (ip, domain)
        since, last_refusal, last_delivery = values
        alert: dict[str, Any] = {"event": event, "ip": ip, "receiver": shown(domain), "at": _iso(now),
                                 "since": _iso(since)}
        if event == "receiver_blocked":
            label, reply = self._sample.get(pair, ("", ""))
            refusals = self._recent.get(pair) or deque([(float(last_refusal), 0)])
            first = min(at for at, _ in refusals if refusals[-1][0] - at <= self.window)
            alert.update(kind=label, reason=shown(reply, TEXT_MAX),
                         detail=f"{self._burst(refusals)} recipients refused naming {label} within "
                                f"{int(refusals[-1][0] - first) // 60 + 1} min",
                         suspects=self._suspects(now),
                         refused=[{"account": shown(a), "refused": n} for a, n in
                                  self._accounts.get(pair, Counter()).most_common(self.config.rbl.suspects)])
        elif last_delivery - last_refusal >= self.settings.clean_minutes * 60:
            alert["detail"] = f"delivered {(last_delivery - last_refusal) // 60} min after the last refusal ({_iso(last_refusal)})"
        else:
            alert["detail"] = f"forgotten: no refusal and no delivery since {_iso(max(last_refusal, last_delivery))}"
        return alert

    def _suspects(self, now: float) -> list[dict[str, Any]]:
        """The DNSBL watcher's suspects: the accounts that sent the most in the last two hours."""
        hour = int(now) // 3600
        try:
            top = self.store.top_senders([hour - 1, hour], self.config.rbl.suspects) if self.config.rbl.suspects else []
        except StoreError:
            top = []
        return [{"account": account, "sent": sent} for account, sent in top]


def _load(value: str | None) -> dict[str, list[int]]:
    """The stored state; anything unreadable (another version, a hand edit) reads as empty."""
    try:
        data = json.loads(value) if value else {}
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: [int(x) for x in v] for k, v in data.items()
            if isinstance(k, str) and isinstance(v, list) and len(v) == 3 and all(isinstance(x, int) for x in v)}
