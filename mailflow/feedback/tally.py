"""Counts per (hour, account) from the MTA's log lines, for Store.add_feedback and the ladder.

Each queue id's origin (Postfix's smtpd `client=…, sasl_username=…` or pickup line, then qmgr's
`from=`; Sendmail's `AUTH=`/`from=` lines) goes through the milter's own identity rules
(accounts.identify, refine_local_identity), so a delivery counts against the account the milter
charged. What is NOT counted:
- a delivery whose origin the log never showed (it starts mid-way, or the origin was evicted):
  `stats.unattributed`;
- the MTA's own reports (null sender, no client: Postfix's bounce daemon, Sendmail's DSNs, the
  `local` account's <> mail), mail the milter does not police (inbound: identify() says None),
  and the MSP's hand-over to Sendmail's MTA (the MTA's own delivery of it is counted):
  `stats.skipped`. A bounce of a bounce is not a customer's list going bad.

Memory is bounded: an origin is forgotten at Postfix's `removed`, and at most `max_queue_ids` are
kept (oldest first out: Sendmail logs no `removed`); the batch (counts, recipient digests,
≤ EVIDENCE_MAX evidence lines per account) lives until take().
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from mailflow.accounts import NULL_SENDER_ACCOUNT, Refusal, identify, on_msp_listener, refine_local_identity
from mailflow.config import Config
from mailflow.feedback.logline import Authenticated, AuthenticatedSubmission, Removed, parse_line
from mailflow.feedback.model import (BOUNCE_ADDRESS, BOUNCE_MAILBOX, BOUNCE_OTHER, BOUNCE_POLICY, DEFERRED,
                                     DELIVERED, EVIDENCE_MAX, TEXT_MAX, UNKNOWN_RECIPIENT, FeedbackBatch, Outcome,
                                     Submission)
from mailflow.logstamp import Stamps
from mailflow.model import Client, shown

MAX_QUEUE_IDS = 200_000  # origins remembered; ~300 bytes each: ~60 MB at worst
MAX_SESSIONS = 10_000  # Sendmail's authenticated sessions (process -> login) remembered
MAX_WAITING = 10_000  # deliveries waiting for the MSP's line that names their user (a race: see _WAIT)
_UNKNOWN_DSNS = frozenset(("5.1.1", "5.1.0", "5.1.10"))
_UNKNOWN_TEXT = re.compile(r"no such user|unknown recipient|recipient unknown|user unknown|unknown user"
                           r"|does not exist", re.IGNORECASE)
# Sendmail's MSP handing a message to the MTA: `stat=Sent (QID2 Message accepted for delivery)`.
_HANDOFF = re.compile(r"Sent \((?P<qid>[0-9A-Za-z]{5,20}) Message accepted for delivery\)")
# A hop to another MTA (or Postfix instance, or content filter) on this host: `… queued as QID2`.
_QUEUED_AS = re.compile(r"queued as (?P<qid>[0-9A-Za-z]{5,20})\)?$")
_LOOPBACK_RELAY = re.compile(r"(?:^|[\s\[])(?:127\.\d{1,3}\.\d{1,3}\.\d{1,3}|IPv6:::1|::1|localhost)\]?")
# What else learns from the log (receivers' blocks per outbound IP, feedback/follow.py): each
# delivery attempt read, and the account charged (None: unattributed, or nobody's).
Observer = Callable[[Outcome, "str | None"], None]
_SKIP = "\0skip"  # an origin whose deliveries are nobody's feedback (see the module's doc)
# Sendmail's MTA may deliver a message from the MSP before the MSP logs the `Sent (QID …)` line
# that names the user: its deliveries wait (bounded) for that line.
_WAIT = "\0wait"


def classify(outcome: Outcome) -> tuple[str, ...]:
    """The count fields one delivery attempt adds to: exactly one of delivered, deferred or a hard
    bounce class, plus unknown_recipient for a 5.1.x "no such user"."""
    if outcome.status == "sent":
        return (DELIVERED,)
    if outcome.status == "deferred":
        return (DEFERRED,)
    dsn = outcome.dsn
    if outcome.status != "bounced" or not dsn.startswith("5."):
        return (BOUNCE_OTHER,)  # expired, or a bounce without a permanent status code
    if dsn.startswith("5.1."):
        if dsn in _UNKNOWN_DSNS or _UNKNOWN_TEXT.search(outcome.reply):
            return (BOUNCE_ADDRESS, UNKNOWN_RECIPIENT)
        return (BOUNCE_ADDRESS,)
    if dsn == "5.0.0" and _UNKNOWN_TEXT.search(outcome.reply):
        # A receiver that gave no enhanced code (`550 User unknown`): Postfix logs 5.0.0. The
        # words are all there is, and they say the address is bad.
        return (BOUNCE_ADDRESS, UNKNOWN_RECIPIENT)
    if dsn.startswith("5.2."):
        return (BOUNCE_MAILBOX,)
    if dsn.startswith("5.7."):
        return (BOUNCE_POLICY,)
    return (BOUNCE_OTHER,)


def digest(recipient: str) -> str:
    """A recipient as the unique-recipients estimate keeps it: 8 bytes of blake2b, hex."""
    return hashlib.blake2b(recipient.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


@dataclass
class TallyStats:
    lines: int = 0  # lines read
    outcomes: int = 0  # delivery attempts (`to=` recipients) read
    attributed: int = 0  # counted against an account
    unattributed: int = 0  # origin never seen (or forgotten)
    skipped: int = 0  # nobody's feedback: the MTA's own mail, inbound mail, the MSP's hand-over
    evicted: int = 0  # origins dropped by the cap, not by `removed`
    waiting: int = 0  # now waiting for the MSP's line that names their user (see _WAIT)
    # outcomes == attributed + unattributed + skipped + waiting


class _Origin:
    __slots__ = ("client_address", "hostname", "port", "login", "unix_user", "sender", "daemon_name", "account",
                 "waiting", "pinned")

    def __init__(self) -> None:
        self.client_address: str | None = None
        self.hostname: str | None = None
        self.port: int | None = None
        self.login: str | None = None
        self.unix_user: str | None = None
        self.sender: str | None = None
        self.daemon_name = ""
        self.account: str | None = None  # resolved (an account, or _SKIP); None: not yet / not known
        self.waiting: list[Outcome] | None = None  # see _WAIT
        self.pinned = False  # the account came with a hand-over on this host: what later lines say is the hop's

    def merge(self, s: Submission) -> None:
        """A later line adds to what earlier ones said (smtpd, then qmgr; AUTH=, then from=)."""
        if self.pinned:
            return
        if s.client_address is not None:  # spelled out: once per origin line, on the hot path
            self.client_address, self.hostname, self.port = s.client_address, s.hostname, s.port
        if s.login is not None:
            self.login = s.login
        if s.unix_user is not None:
            self.unix_user = s.unix_user
        if s.sender is not None:
            self.sender = s.sender
        self.daemon_name = s.daemon_name or self.daemon_name
        self.account = None


class Tally:
    """Feed it lines in log order (add_line); take() what they add up to since the last take()."""

    def __init__(self, config: Config, owner: Callable[[str], str | None] | None = None,
                 now: Callable[[], float] = time.time, year: int | None = None,
                 max_queue_ids: int = MAX_QUEUE_IDS) -> None:
        """`owner(domain)`: the account owning a hosted domain, as the milter's ownership checker
        answers it (a trusted_ip client's unmapped sender); without it such mail counts against
        the sender's domain. `now`/`year`: the clock for classic stamps' year (tests).
        `observers` (settable at any time) see every delivery attempt read, whoever's it is, once
        it is decided (a delivery waiting for the MSP's line is seen when it comes), so the log is
        parsed once for everything learnt from it."""
        self.settings = config.accounts
        self._owner: Callable[[str], str | None] = owner or (lambda domain: None)
        self.stamps = Stamps(now, year)
        self.max_queue_ids = max(1, max_queue_ids)
        self._origins: OrderedDict[str, _Origin] = OrderedDict()
        self._logins: OrderedDict[str, str] = OrderedDict()  # Sendmail: `sendmail[PID]` -> its AUTH login
        self._batch = FeedbackBatch()
        self.stats = TallyStats()
        self.observers: list[Observer] = []

    def add_line(self, line: str) -> None:
        self.stats.lines += 1
        parsed = parse_line(line, self.stamps)
        if parsed is None:
            return
        if isinstance(parsed, tuple):
            for outcome in parsed:
                self._count(outcome)
        elif isinstance(parsed, Submission):
            self._remember(parsed.queue_id).merge(parsed)
        elif isinstance(parsed, Removed):
            self._forget(self._origins.pop(parsed.queue_id, None))
        elif isinstance(parsed, AuthenticatedSubmission):
            submission = parsed.submission
            origin = self._remember(submission.queue_id)
            origin.merge(submission)
            origin.login = self._logins.get(parsed.process, "")  # "": its AUTH= line was not seen
        else:
            self._logins.pop(parsed.process, None)
            self._logins[parsed.process] = parsed.login
            if len(self._logins) > MAX_SESSIONS:
                self._logins.popitem(last=False)

    def take(self) -> FeedbackBatch:
        batch, self._batch = self._batch, FeedbackBatch()
        return batch

    def __len__(self) -> int:
        """Origins remembered now."""
        return len(self._origins)

    def _remember(self, queue_id: str) -> _Origin:
        origin = self._origins.get(queue_id)
        if origin is None:
            if len(self._origins) >= self.max_queue_ids:
                self._forget(self._origins.popitem(last=False)[1])
                self.stats.evicted += 1
            origin = self._origins[queue_id] = _Origin()
        return origin

    def _forget(self, origin: _Origin | None) -> None:
        if origin is not None and origin.waiting:
            self.stats.unattributed += len(origin.waiting)
            self.stats.waiting -= len(origin.waiting)
            for outcome in origin.waiting:
                self._observe(outcome, None)
            origin.waiting = None

    def _observe(self, outcome: Outcome, account: str | None) -> None:
        for observer in self.observers:
            observer(outcome, account)

    def _count(self, outcome: Outcome) -> None:
        stats = self.stats
        stats.outcomes += 1
        origin = self._origins.get(outcome.queue_id)
        if origin is None:
            stats.unattributed += 1
            self._observe(outcome, None)
            return
        if origin.unix_user is not None and origin.client_address is None:
            handoff = _HANDOFF.match(outcome.reply)
            if handoff is not None and _LOOPBACK_RELAY.search(outcome.relay):
                # The MSP's hop to the local MTA: the user it names is the origin of the MTA's copy.
                stats.skipped += 1
                self._observe(outcome, None)
                self._handed_over(handoff.group("qid"), origin.unix_user)
                return
        if outcome.status == "sent" and _LOOPBACK_RELAY.search(outcome.relay):
            hop = _QUEUED_AS.search(outcome.reply) or _HANDOFF.match(outcome.reply)
            account = origin.account or self._resolve(origin)
            if hop is not None and account is not None and account != _WAIT:
                # Handed to another MTA on this host (a second Postfix instance, a content filter's
                # re-injection): the copy it queued is this message, whose client there is only
                # 127.0.0.1. Its deliveries are counted, against this origin's account; the hop is not.
                target = self._remember(hop.group("qid"))
                target.account, target.pinned = account, True
                stats.skipped += 1
                self._observe(outcome, None)
                self._release(target)
                return
        self._attribute(origin, outcome)

    def _handed_over(self, queue_id: str, unix_user: str) -> None:
        target = self._remember(queue_id)
        target.merge(Submission(queue_id, unix_user=unix_user))
        self._release(target)

    def _release(self, origin: _Origin) -> None:
        """Its origin is known now: count what waited for it."""
        waiting, origin.waiting = origin.waiting, None
        if waiting:
            self.stats.waiting -= len(waiting)
            for outcome in waiting:
                self._attribute(origin, outcome)

    def _attribute(self, origin: _Origin, outcome: Outcome) -> None:
        stats = self.stats
        account = origin.account or self._resolve(origin)
        if account == _WAIT and stats.waiting < MAX_WAITING:
            origin.waiting = origin.waiting or []
            origin.waiting.append(outcome)
            stats.waiting += 1
            return
        if account is None or account == _WAIT:
            stats.unattributed += 1
            self._observe(outcome, None)
            return
        origin.account = account
        if account == _SKIP:
            stats.skipped += 1
            self._observe(outcome, None)
            return
        stats.attributed += 1
        self._add(account, outcome)
        self._observe(outcome, account)

    def _resolve(self, origin: _Origin) -> str | None:
        """The account the milter charged for this origin, _SKIP, or None (not enough seen)."""
        settings = self.settings
        sender = origin.sender or ""
        if origin.login == "":
            return None  # an authenticated session whose login the log did not show: not a guess
        if origin.client_address is None and origin.login is None:
            if origin.unix_user is not None:  # Sendmail run by a local user, no SMTP client
                return refine_local_identity(settings, origin.unix_user).account
            return _SKIP if origin.sender == "" else None  # the MTA's own report; else the log started late
        client = Client(hostname=origin.hostname or "", address=origin.client_address, port=origin.port,
                        daemon_name=origin.daemon_name)
        identity = identify(settings, client, origin.login, sender, self._owner)
        if identity is None:
            return _SKIP  # not the milter's to police: inbound mail
        if isinstance(identity, Refusal):
            identity = identity.identity  # delivered anyway: the milter was monitoring
        if identity.source == "local" and on_msp_listener(settings, client):
            if not sender:
                return _SKIP  # the MSP's own delivery report
            if origin.unix_user is None:
                return _WAIT  # the MSP's line naming the user is not (yet) seen
            return refine_local_identity(settings, origin.unix_user).account
        if identity.account == NULL_SENDER_ACCOUNT and not sender:
            return _SKIP  # a locally generated bounce
        return identity.account

    def _add(self, account: str, outcome: Outcome) -> None:
        batch = self._batch
        hour = int(outcome.at) // 3600
        fields = classify(outcome)
        counts = batch.counts
        for name in fields:
            key = (hour, account, name)
            counts[key] = counts.get(key, 0) + 1
        recipients = batch.recipients.get((hour, account))
        if recipients is None:
            recipients = batch.recipients[(hour, account)] = set()
        recipients.add(digest(outcome.recipient))
        if fields[0] in (DELIVERED, DEFERRED):
            return
        evidence = batch.evidence.setdefault(account, [])
        if len(evidence) < EVIDENCE_MAX:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(outcome.at))
            evidence.append(shown(f"{stamp} {outcome.service} {outcome.queue_id}: to=<{outcome.recipient}>, "
                                  f"dsn={outcome.dsn}, status={outcome.status} ({outcome.reply})", TEXT_MAX))
        if fields[0] == BOUNCE_ADDRESS:
            batch.suppress.setdefault(account, {})[outcome.recipient] = "bounce"
