"""What the log follower and the complaint reader learn, as plain data.

Counts are kept per (hour, account, field), hour = unix time // 3600, by the store
(Store.add_feedback); the reputation ladder reads them back (Store.feedback_counts).
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Count fields. A hard bounce counts in exactly one class; an unknown-recipient refusal counts
# in its bounce class and in UNKNOWN_RECIPIENT as well.
DELIVERED = "delivered"
DEFERRED = "deferred"
BOUNCE_ADDRESS = "bounce_5.1"  # 5.1.x: bad address (a bought or scraped list)
BOUNCE_MAILBOX = "bounce_5.2"  # 5.2.x: mailbox full, disabled
BOUNCE_POLICY = "bounce_5.7"  # 5.7.x: the receiver's policy or our reputation
BOUNCE_OTHER = "bounce_other"  # any other 5.x.x, and expired mail
UNKNOWN_RECIPIENT = "unknown_recipient"  # "no such user": 5.1.1, 5.1.0 and 5.1.x texts saying so
COMPLAINT = "complaint"  # an ARF report (feedback/arf.py)
HARD_BOUNCES = (BOUNCE_ADDRESS, BOUNCE_MAILBOX, BOUNCE_POLICY, BOUNCE_OTHER)
FIELDS = (DELIVERED, DEFERRED, *HARD_BOUNCES, UNKNOWN_RECIPIENT, COMPLAINT)

STATUSES = ("sent", "deferred", "bounced", "expired")
TEXT_MAX = 300  # a reply or an evidence line, as kept
EVIDENCE_MAX = 5  # evidence lines kept per account and batch


@dataclass(frozen=True)
class Outcome:
    """One recipient's delivery attempt: one `to=<…>, …, status=…` line of the MTA's log."""

    at: float  # unix time of the line
    queue_id: str
    recipient: str  # lower-case, at most 320 characters
    status: str  # one of STATUSES
    dsn: str  # "5.1.1"; "" when the line has none
    reply: str  # the receiver's words (Postfix's parenthesis, Sendmail's stat=), at most TEXT_MAX
    service: str  # the delivery agent's syslog name: "postfix/smtp", "postfix-out2/smtp", "sendmail"
    relay: str  # "mx.example.net[192.0.2.7]:25" as logged; "" when none


@dataclass(frozen=True)
class Submission:
    """What the MTA logged of a message's origin, by queue id: Postfix's smtpd `client=…,
    sasl_username=…` or pickup `uid=…`, Sendmail's `from=…, relay=…` / `authid=`."""

    queue_id: str
    client_address: str | None = None
    login: str | None = None  # SMTP AUTH login
    unix_user: str | None = None  # a local submission's user
    sender: str | None = None  # the envelope sender, once logged
    hostname: str | None = None  # the client's name as logged
    port: int | None = None  # 0: Postfix's pickup, as the milter sees a local submission
    daemon_name: str = ""  # Sendmail's daemon=: which listener took it (the MSP's, or the MTA's)


@dataclass
class FeedbackBatch:
    """What one stretch of log (or one complaint) adds, ready for the store and the ladder."""

    counts: dict[tuple[int, str, str], int] = field(default_factory=dict)  # (hour, account, field) -> n
    recipients: dict[tuple[int, str], set[str]] = field(default_factory=dict)  # (hour, account) -> digests
    evidence: dict[str, list[str]] = field(default_factory=dict)  # account -> ≤ EVIDENCE_MAX lines
    # account -> address -> reason: "bounce" (a 5.1.x hard bounce) or "complaint" (an ARF report)
    suppress: dict[str, dict[str, str]] = field(default_factory=dict)

    def accounts(self) -> set[str]:
        return {account for _, account, _ in self.counts} | set(self.suppress)
