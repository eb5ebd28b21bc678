"""Play a Session against a milter (milter protocol) or an MTA (SMTP) and compare replies.

Replies are compared in SMTP terms: `accept` for any stage that lets the mail go on (milter
continue/accept, SMTP 2xx/3xx), `hold` for a quarantined message, otherwise the reply text,
matched by prefix (`451 4.7.1` matches `451 4.7.1 Rate limit 600/hour …`).
"""

from __future__ import annotations

import smtplib
import socket
from dataclasses import dataclass, field

from mailflow.milter.client import MilterClient, Response
from mailflow.replay.sessions import Session

NOT_REACHED = "not reached"


@dataclass
class Outcome:
    mail: str = NOT_REACHED
    rcpt: list[str] = field(default_factory=list)
    eom: str = NOT_REACHED
    skipped: str | None = None  # why this session could not be replayed in this mode
    via_smtp: bool = False  # SMTP cannot tell a held message from an accepted one


def _matches(expected: str, got: str) -> bool:
    if expected == "accept":
        return got in ("accept", "hold")
    return got.startswith(expected)


def mismatches(session: Session, outcome: Outcome) -> list[str]:
    """Human-readable differences between what the session expects and what happened."""
    found = []

    def matches(expected: str, got: str) -> bool:
        return _matches(expected, got) or (outcome.via_smtp and expected == "hold" and got == "accept")

    expect = session.expect
    if expect.mail is not None and not matches(expect.mail, outcome.mail):
        found.append(f"mail expected {expect.mail!r} got {outcome.mail!r}")
    if expect.rcpt is not None:
        for i, wanted in enumerate(expect.rcpt):
            got = outcome.rcpt[i] if i < len(outcome.rcpt) else NOT_REACHED
            if not matches(wanted, got):
                found.append(f"rcpt[{i + 1}] <{session.rcpt_to[i]}> expected {wanted!r} got {got!r}")
    if expect.eom is not None and not matches(expect.eom, outcome.eom):
        found.append(f"eom expected {expect.eom!r} got {outcome.eom!r}")
    return found


def message_text(session: Session) -> bytes:
    headers = session.headers or (("From", session.mail_from or "MAILER-DAEMON"), ("Subject", session.name))
    lines = [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n" + (session.body or "replayed by mailflow\r\n")).encode("utf-8")


# -- milter protocol --------------------------------------------------------------------------


def _milter_reply(response: Response) -> str:
    if response.action in ("continue", "accept"):
        return "hold" if response.quarantine else "accept"
    return response.smtp


def replay_milter(session: Session, spec: str, timeout: float = 10.0) -> Outcome:
    outcome = Outcome()
    family = "6" if ":" in session.client.address else "4"
    with MilterClient(spec, timeout=timeout) as milter:
        macros = session.macros
        milter.connect(session.client.name, session.client.address, session.client.port, family,
                       macros=dict(macros.get("connect", {})))
        milter.helo(session.helo, macros=dict(macros.get("helo", {})))
        mail_macros = dict(macros.get("mail", {}))
        if session.login:
            mail_macros["{auth_authen}"] = session.login
        esmtp = ["SMTPUTF8"] if session.needs_smtputf8 else []
        mail = milter.mail(session.mail_from or "<>", macros=mail_macros, esmtp=esmtp)
        outcome.mail = _milter_reply(mail)
        if mail.action not in ("continue", "accept") or session.abort_after == "mail":
            milter.abort()
            return outcome
        accepted = 0
        for recipient in session.rcpt_to:
            reply = _milter_reply(milter.rcpt(recipient, macros=dict(macros.get("rcpt", {}))))
            outcome.rcpt.append(reply)
            accepted += reply == "accept"
        if session.abort_after == "rcpt" or not accepted:
            milter.abort()
            return outcome
        for name, value in session.headers or (("From", session.mail_from or "MAILER-DAEMON"),):
            milter.header(name, value)
        milter.eoh()
        milter.body(message_text(session).split(b"\r\n\r\n", 1)[1])
        eom_macros = {"i": session.queue_id or "REPLAY", **macros.get("eom", {})}
        outcome.eom = _milter_reply(milter.eom(macros=eom_macros))
    return outcome


# -- SMTP -------------------------------------------------------------------------------------


_MTA_MACROS = ("{daemon_name}", "{client_addr}", "{client_port}")  # Sendmail's MSP listener, sendmail -bs


def smtp_source_address(session: Session) -> tuple[str | None, str | None]:
    """Where to connect from, or why the session cannot be reproduced over SMTP from here."""
    if session.client.is_pickup:
        return None, "local submission (sendmail/pickup) is not SMTP"
    if session.login:
        return None, None  # authenticated: the client address does not decide the account
    if any(name in _MTA_MACROS for macros in session.macros.values() for name in macros):
        return None, "the MTA's own macros ({daemon_name}, {client_addr}) are not SMTP"
    client = session.client.address
    if client.startswith("127."):
        return client, None
    return None, f"client {client} cannot be reproduced over SMTP from this host"


def _smtp_reply(code: int, text: bytes | str) -> str:
    if code < 400:
        return "accept"
    message = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    return f"{code} {' '.join(message.split())}"


def replay_smtp(session: Session, host: str, port: int, timeout: float = 30.0) -> Outcome:
    source, why_not = smtp_source_address(session)
    if why_not:
        return Outcome(skipped=why_not)
    outcome = Outcome(via_smtp=True)
    with smtplib.SMTP(host, port, timeout=timeout, source_address=(source, 0) if source else None) as smtp:
        smtp.ehlo(session.helo)
        if session.login:
            smtp.login(session.login, session.password or "")
        options = ["SMTPUTF8", "BODY=8BITMIME"] if session.needs_smtputf8 else []
        code, text = smtp.mail(session.mail_from or "", options)
        outcome.mail = _smtp_reply(code, text)
        if code >= 400 or session.abort_after == "mail":
            smtp.rset()
            return outcome
        accepted = 0
        for recipient in session.rcpt_to:
            code, text = smtp.rcpt(recipient)
            outcome.rcpt.append(_smtp_reply(code, text))
            accepted += code < 400
        if session.abort_after == "rcpt" or not accepted:
            smtp.rset()
            return outcome
        code, text = smtp.data(message_text(session))
        outcome.eom = _smtp_reply(code, text)
    return outcome


def parse_hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"{text!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


ReplayError = (OSError, socket.timeout, smtplib.SMTPException)
