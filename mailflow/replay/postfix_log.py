"""Turn Postfix mail.log lines into sessions: one per queue id, in the order they were seen.

Reads what Postfix logs for every message: `client=name[ip], sasl_username=…` (smtpd) or
`uid=N from=<…>` (pickup), `from=<…>, size=…, nrcpt=N` (qmgr) and `to=<…>` (delivery agents).
Both classic syslog stamps (`Nov 22 10:00:01`) and RFC 3339 stamps are understood.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from mailflow.logstamp import parse_timestamp
from mailflow.replay.sessions import ClientInfo, Session

_LINE = re.compile(r"postfix(?:/[\w-]+)*/(?P<daemon>[\w-]+)\[\d+\]: (?P<qid>[0-9A-Za-z]{5,}): (?P<rest>.*)$")
_CLIENT = re.compile(r"^client=(?P<name>[^\[\s]*)\[(?P<ip>[^\]]+)\](?::\d+)?")
_SASL = re.compile(r"sasl_username=(?P<login>[^,\s]+)")
# qmgr's line. The sender is the client's, as written: it may hold `>, size=1, nrcpt=500` itself
# (a quoted local part), so Postfix's own fields are the last ones (greedy match, linear).
_QMGR = re.compile(r"^from=<(?P<sender>.*)>, size=\d+, nrcpt=(?P<n>\d+)")
_TO = re.compile(r"^to=<(?P<rcpt>[^>]*)>")
_UID = re.compile(r"^uid=(?P<uid>\d+)")


@dataclass
class _Seen:
    qid: str
    first_seen: float
    client: ClientInfo | None = None
    login: str | None = None
    sender: str | None = None
    nrcpt: int = 0
    recipients: list[str] = field(default_factory=list)


def sessions_from_log(lines: Iterable[str], year: int | None = None) -> list[Session]:
    year = year or datetime.now(timezone.utc).year
    seen: dict[str, _Seen] = {}
    last_time = 0.0
    for line in lines:
        match = _LINE.search(line)
        if not match:
            continue
        last_time = parse_timestamp(line, year) or last_time
        qid, daemon, rest = match.group("qid"), match.group("daemon"), match.group("rest")
        entry = seen.setdefault(qid, _Seen(qid, last_time))
        if daemon == "smtpd" and (client := _CLIENT.match(rest)):
            entry.client = ClientInfo(name=client.group("name") or "unknown", address=client.group("ip"))
            if sasl := _SASL.search(rest):
                entry.login = sasl.group("login")
        elif daemon == "pickup" and _UID.match(rest):
            entry.client = ClientInfo(name="localhost", address="127.0.0.1", port=0)
        elif daemon == "qmgr" and (queued := _QMGR.match(rest)):
            entry.sender, entry.nrcpt = queued.group("sender"), int(queued.group("n"))
        elif (to := _TO.match(rest)) and to.group("rcpt") not in entry.recipients:
            entry.recipients.append(to.group("rcpt"))
    sessions = []
    for entry in seen.values():
        if entry.sender is None or entry.client is None:
            continue  # not a complete message (rejected, or the log starts mid-way)
        recipients = list(entry.recipients)
        # Recipients the log did not show (still queued, rejected later) still cost a token.
        recipients += [f"unlogged-{n}@recipient.invalid" for n in range(len(recipients) + 1, entry.nrcpt + 1)]
        if not recipients:
            continue
        sessions.append(Session(
            name=entry.qid, mail_from=entry.sender, rcpt_to=tuple(recipients), client=entry.client,
            helo=entry.client.name, login=entry.login, queue_id=entry.qid, timestamp=entry.first_seen,
            headers=(("From", entry.sender or "MAILER-DAEMON"),), source="log",
        ))
    sessions.sort(key=lambda s: s.timestamp or 0.0)
    return sessions
