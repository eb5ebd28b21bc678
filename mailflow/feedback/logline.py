"""One line of the MTA's log, read: a delivery attempt (Outcome), what a message's origin was
(Submission), a queue id's end (Removed), or nothing. Pure and linear in the line's length.

What is read (Postfix 3.x, Sendmail 8.17; lines from real runs in tests/feedback/):
- Postfix delivery agents, `postfix[-INSTANCE][/ANY]*/AGENT[PID]: QID: to=<R>, [orig_to=<O>,]
  relay=…, [conn_use=N,] delay=…, delays=…, dsn=X.Y.Z, status=sent|deferred|bounced|expired (…)`;
  smtpd `client=NAME[IP][:PORT][, sasl_method=M, sasl_username=LOGIN]`; pickup `uid=N from=<S>`;
  qmgr `from=<S>, size=…, nrcpt=…` and `removed`; bounce `sender non-delivery notification: QID2`.
- Sendmail (`sendmail`, `sm-mta`, `sm-msp-queue`): `from=S, size=…, …, relay=…` (with
  `relay=USER@localhost`: a submission by a local user through the MSP), `AUTH=server, relay=…,
  authid=LOGIN, …`, `to=R[,R…], [ctladdr=…,] delay=…, xdelay=…, mailer=…, pri=…, relay=…,
  [dsn=X.Y.Z,] stat=…` (one line may name several recipients), `QID2: DSN: …` (its own bounce).

Everything after the queue id is hostile (recipients, senders, receivers' replies): fields are
matched in Postfix's and Sendmail's own order, anchored, with bounded pieces, so a recipient that
holds `>, status=sent` is a quoted local part, never a second field; a reply is cut to TEXT_MAX;
a recipient over 320 characters makes the line unread.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mailflow.feedback.model import TEXT_MAX, Outcome, Submission
from mailflow.logstamp import Stamps

RECIPIENT_MAX = 320
DELIVERY_AGENTS = frozenset(("smtp", "lmtp", "local", "virtual", "pipe", "error", "discard", "relay"))
SENDMAIL_SERVICES = frozenset(("sendmail", "sm-mta", "sm-msp-queue"))

# `[STAMP HOST ]SERVICE[PID]: [QID: ]`, anchored at the line's start: the service is syslog's tag,
# never words further on (another program's message quoting a Postfix line). One regex, no
# Python-level scanning: the cheapest way past the many lines that are not ours.
_HEAD = re.compile(
    r"(?:(?:[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d|\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?(?:Z|[+-]\d\d:?\d\d)?)"
    r" [^\s]{1,255} )?(?P<service>postfix[A-Za-z0-9_.-]{0,64}(?:/[A-Za-z0-9_.-]{1,64}){0,8}|sendmail|sm-mta|sm-msp-queue)"
    r"(?P<pid>\[\d{1,10}\]): (?:(?P<qid>[0-9A-Za-z]{5,20}): )?")
# An address as Postfix and Sendmail log it: a quoted local part (any characters, `\"` escaped)
# then the unquoted rest, or no quotes at all. Two bounded pieces, no nesting.
_ADDR = r'(?:"(?:[^"\\\r\n]|\\.){0,330}")?[^"<>\s,]{0,330}'
_POSTFIX_TO = re.compile(
    rf"to=<(?P<rcpt>{_ADDR})>(?:, orig_to=<{_ADDR}>)?, relay=(?P<relay>[^,\s]{{0,300}}), "
    r"(?:conn_use=\d{1,9}, )?(?:delay=[\d.]{1,20}, )?(?:delays=[\d./]{1,60}, )?(?:dsn=(?P<dsn>\d\.\d{1,3}\.\d{1,3}), )?"
    r"status=(?P<status>sent|deferred|bounced|expired|SOFTBOUNCE)(?: \((?P<reply>.*)\))?")
_SMTPD = re.compile(
    r"client=(?P<name>[^\[\s,]{0,255})\[(?P<ip>[^\]\s,]{1,64})\](?::(?P<port>\d{1,5}))?"
    r"(?:, sasl_method=[^,\s]{1,40}, sasl_username=(?P<login>[^,\s]{1,320}))?")
_PICKUP = re.compile(rf"uid=\d{{1,10}} from=<(?P<sender>{_ADDR})>")
_QMGR = re.compile(rf"from=<(?P<sender>{_ADDR})>, size=\d{{1,20}}, nrcpt=\d{{1,9}}")
_BOUNCE = re.compile(r"sender (?:non-delivery|delay|delivery status) notification: (?P<qid>[0-9A-Za-z]{5,20})")
_SM_ADDR = re.compile(rf"<(?P<q>{_ADDR})>|(?P<b>[^\"<>\s,]{{1,330}})")
_SM_FROM = re.compile(r", size=\d{1,20}, class=-?\d{1,9}, nrcpts=\d{1,9}")
_SM_AUTH = re.compile(r"AUTH=server, relay=[^,]{0,300}, authid=(?P<login>[^,\s]{1,320}), mech=")
# 8.17 writes `reply=` (the receiver's words) between dsn= and stat= when there was a reply.
_SM_TO_FIELDS = re.compile(
    r"(?:, ctladdr=[^,]{0,400})?, delay=[\d+:]{1,20}, xdelay=[\d+:]{1,20}, mailer=[\w.-]{1,40}"
    r"(?:, tls_verify=\w{1,20})?, pri=\d{1,20}(?:, relay=(?P<relay>[^,]{0,300}))?"
    r"(?:, dsn=(?P<dsn>\d\.\d{1,3}\.\d{1,3}))?, (?P<tail>reply=|stat=)")
# Sendmail's own reports: `QID: QID2: DSN: …`, `QID: QID2: return to sender: …`, `… postmaster notify: …`.
_SM_OWN = re.compile(r"(?P<qid>[0-9A-Za-z]{5,20}): (?:DSN|return to sender|postmaster notify): ")
_SM_RELAY = re.compile(r"(?P<name>[^\s\[]{0,255}) ?\[(?:IPv6:)?(?P<ip>[0-9A-Fa-f:.]{1,64})\]")


@dataclass(frozen=True)
class Removed:
    """Postfix's qmgr is done with a queue id: its origin can be forgotten."""

    queue_id: str


@dataclass(frozen=True)
class Authenticated:
    """Sendmail's `AUTH=server, …, authid=LOGIN, …`, logged before the session's first queue id:
    the login of the SMTP session served by `process` (`sendmail[PID]`)."""

    process: str
    login: str


@dataclass(frozen=True)
class AuthenticatedSubmission:
    """Sendmail's `from=…, proto=ESMTPA, …` (an authenticated session): its login is the one
    `process` logged in its Authenticated line."""

    submission: Submission
    process: str


Parsed = tuple[Outcome, ...] | Submission | AuthenticatedSubmission | Authenticated | Removed | None


@dataclass(frozen=True)
class Head:
    """Where a line's syslog prefix ends: the service as syslog wrote it, `service[pid]`, the
    queue id ("" when the line has none) and the rest."""

    service: str
    process: str
    queue_id: str
    rest: str


def head(line: str) -> Head | None:
    """`… SERVICE[PID]: [QID: ]REST` of a Postfix or Sendmail process, else None."""
    found = _HEAD.match(line)
    if found is None:
        return None
    service, qid = found.group("service"), found.group("qid") or ""
    if qid == "NOQUEUE":
        return Head(service, service + found.group("pid"), "", line[found.end() - 9:])
    return Head(service, service + found.group("pid"), qid, line[found.end():])


def parse_line(line: str, stamps: Stamps | None = None) -> Parsed:
    """What one log line says; None for anything else (other programs, garbage, unread shapes).
    `stamps` reads the line's time (one per log: it remembers the year); only deliveries need it."""
    if line.endswith("\n"):
        line = line.rstrip("\r\n")
    found = _HEAD.match(line)
    if found is None:
        return None
    service, qid = found.group("service", "qid")
    if service[0] == "p":  # Postfix: the hot path, read in place (no copy of the line's rest)
        if qid is None or qid == "NOQUEUE":
            return None
        return _postfix(line, service, qid, found.end(), stamps)
    if qid is None:
        auth = _SM_AUTH.match(line, found.end())
        return Authenticated(service + found.group("pid"), auth.group("login")) if auth else None
    return _sendmail(line, Head(service, service + found.group("pid"), qid, line[found.end():]), stamps)


def _at(line: str, stamps: Stamps | None) -> float:
    return (stamps or Stamps()).at(line)


def _recipient(raw: str) -> str | None:
    return raw.lower() if 0 < len(raw) <= RECIPIENT_MAX else None


def _postfix(line: str, service: str, qid: str, pos: int, stamps: Stamps | None) -> Parsed:
    agent = service[service.rfind("/") + 1:]
    if agent in DELIVERY_AGENTS:
        if not line.startswith("to=<", pos):
            return None
        to = _POSTFIX_TO.match(line, pos)
        if to is None:
            return None
        rcpt, status, dsn, reply, relay = to.group("rcpt", "status", "dsn", "reply", "relay")
        if (recipient := _recipient(rcpt)) is None:
            return None
        return (Outcome(at=_at(line, stamps), queue_id=qid, recipient=recipient,
                        status="deferred" if status == "SOFTBOUNCE" else status, dsn=dsn or "",
                        reply=reply[:TEXT_MAX] if reply else "", service=service, relay=relay),)
    if agent == "qmgr":
        if line.startswith("removed", pos):
            return Removed(qid)
        queued = _QMGR.match(line, pos)
        return Submission(qid, sender=queued.group("sender")) if queued else None
    if agent == "cleanup":
        return None
    if agent == "smtpd":
        client = _SMTPD.match(line, pos)
        if client is None:
            return None
        port = client.group("port")
        return Submission(qid, client_address=client.group("ip"), login=client.group("login"),
                          hostname=client.group("name"), port=int(port) if port else None)
    if agent == "pickup":
        picked = _PICKUP.match(line, pos)
        if picked is None:
            return None
        # What the milter sees of it: the loopback address with port 0 (Client.is_postfix_pickup).
        return Submission(qid, client_address="127.0.0.1", port=0, sender=picked.group("sender"))
    if agent == "bounce" and (notice := _BOUNCE.match(line, pos)):
        return Submission(notice.group("qid"), sender="")  # Postfix's own report: a null sender
    return None


def _sendmail(line: str, found: Head, stamps: Stamps | None) -> Parsed:
    rest = found.rest
    if rest.startswith("to="):
        return _sendmail_to(line, found, stamps)
    if rest.startswith("from="):
        return _sendmail_from(found)
    if own := _SM_OWN.match(rest):
        return Submission(own.group("qid"), sender="")  # a report Sendmail itself sends
    return None


def _sendmail_from(found: Head) -> Submission | AuthenticatedSubmission | None:
    rest, qid = found.rest, found.queue_id
    sender = _SM_ADDR.match(rest, 5)
    if sender is None or not _SM_FROM.match(rest, sender.end()):
        return None
    address = sender.group("q") if sender.group("q") is not None else sender.group("b")
    # Sendmail writes proto=, daemon= and relay= last; what comes before them (msgid=) is the
    # client's: read from the right.
    before, mark, relay = rest.rpartition(", relay=")
    if not mark or len(relay) > 300:
        return Submission(qid, sender=address)
    if relay.endswith("@localhost") and "[" not in relay:  # the MSP: `relay=www-data@localhost`
        return Submission(qid, sender=address, unix_user=relay[:-len("@localhost")][:64])
    client = _SM_RELAY.match(relay)
    if client is None:
        return Submission(qid, sender=address)
    before, mark, daemon = before.rpartition(", daemon=")
    daemon = daemon if mark and len(daemon) <= 64 else ""
    _, mark, proto = before.rpartition(", proto=")
    submission = Submission(qid, sender=address, client_address=client.group("ip"), hostname=client.group("name"),
                            daemon_name=daemon)
    if mark and proto.endswith("A") and len(proto) <= 16:  # ESMTPA, ESMTPSA: the session logged in
        return AuthenticatedSubmission(submission, found.process)
    return submission


def _sendmail_to(line: str, found: Head, stamps: Stamps | None) -> Parsed:
    rest = found.rest
    recipients: list[str] = []
    position = 3
    while len(recipients) < 100:
        address = _SM_ADDR.match(rest, position)
        if address is None:
            return None
        raw = address.group("q") if address.group("q") is not None else address.group("b")
        if (recipient := _recipient(raw)) is not None:
            recipients.append(recipient)
        position = address.end()
        if not rest.startswith(",", position) or rest.startswith(", ", position):
            break
        position += 1
    fields = _SM_TO_FIELDS.match(rest, position)
    if fields is None or not recipients:
        return None
    # `reply=TEXT, stat=TEXT`: the receiver's text may hold `, stat=` itself, so the status comes
    # from dsn= (Sendmail's own field) when there is one, the words from reply= when there are.
    tail = rest[fields.start("tail"):]
    if tail.startswith("reply="):
        reply, _, stat = tail[6:].rpartition(", stat=")
    else:
        reply, stat = "", tail[5:]
    dsn = fields.group("dsn") or ""
    if dsn[:1] in ("2", "4", "5"):
        status = {"2": "sent", "4": "deferred", "5": "bounced"}[dsn[0]]
    elif stat.startswith("Sent"):
        status = "sent"
    elif stat.startswith("Deferred"):
        status = "deferred"
    else:
        status = "bounced"
    at = _at(line, stamps)
    text = (reply or stat)[:TEXT_MAX]
    return tuple(Outcome(at=at, queue_id=found.queue_id, recipient=recipient, status=status, dsn=dsn,
                         reply=text, service=found.service, relay=fields.group("relay") or "")
                 for recipient in recipients)
