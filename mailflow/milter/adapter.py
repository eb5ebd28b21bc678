"""pymilter callbacks: gather facts into plain data, ask the Engine, apply its Decision.

libmilter runs one thread per SMTP connection and creates one instance of this class per
connection, so instance state needs no locks; the Engine and store are shared and thread-safe.
Callbacks not defined here (helo, data, eoh, body, unknown) are negotiated away.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import Milter

from mailflow.engine import Engine
from mailflow.model import Client, Decision, Message, Verdict

log = logging.getLogger("mailflow.milter")

_RETURN_CODES = {
    Verdict.CONTINUE: Milter.CONTINUE,
    Verdict.ACCEPT: Milter.ACCEPT,
    Verdict.TEMPFAIL: Milter.TEMPFAIL,
    Verdict.REJECT: Milter.REJECT,
    Verdict.HOLD: Milter.CONTINUE,  # quarantine() is called, then the message goes on
}


def _guarded(callback: Callable[..., int]) -> Callable[..., int]:
    """A fault in our code must never crash or hang the MTA: answer `on_error` and log it."""

    @functools.wraps(callback)
    def wrapper(self: MailflowMilter, *args: Any) -> int:
        try:
            return callback(self, *args)
        except Exception:
            log.exception("internal error in %s (conn=%s); applying on_error", callback.__name__, self.conn_id)
            return self.apply(self.engine.error_decision("internal_error"))

    return wrapper


class MailflowMilter(Milter.Base):
    engine: Engine  # set on the class by server.serve()

    def __init__(self) -> None:
        self.conn_id = f"{Milter.uniqueID():x}"
        self.client = Client()
        self.message: Message | None = None

    def negotiate(self, opts: list[int]) -> int:
        # Milter.Base.negotiate also looks up @symlist macro lists on every callback, for every
        # connection; we ask for none, so only the protocol steps are negotiated (same result).
        self._actions, offered = opts[0], opts[1]
        opts[1] = self._protocol = offered & ~self.protocol_mask()
        opts[2] = opts[3] = 0
        return Milter.CONTINUE

    def apply(self, decision: Decision) -> int:
        if decision.reply is not None and decision.verdict in (Verdict.TEMPFAIL, Verdict.REJECT):
            reply = decision.reply
            self.setreply(reply.code, reply.status, reply.text.replace("%", "%%"))
        if decision.verdict is Verdict.HOLD:
            self.quarantine(decision.reply.text if decision.reply else decision.reason)
        for name, value in decision.add_headers:
            self.addheader(name, value)
        for recipient in decision.remove_recipients:
            self.delrcpt(recipient)
        return _RETURN_CODES[decision.verdict]

    @Milter.noreply
    def connect(self, hostname: str, family: int, hostaddr: Any) -> int:
        address, port = None, None
        if isinstance(hostaddr, tuple) and len(hostaddr) >= 2:
            address, port = hostaddr[0], hostaddr[1]
        self.client = Client(hostname=hostname or "", address=address, port=port)
        return Milter.CONTINUE

    @_guarded
    def envfrom(self, sender: str, *esmtp: str) -> int:
        self.message, decision = self.engine.mail(self.client, sender, self.getsymval("{auth_authen}"),
                                                  conn_id=self.conn_id)
        return self.apply(decision)

    @_guarded
    def envrcpt(self, recipient: str, *esmtp: str) -> int:
        if self.message is None:
            return Milter.CONTINUE
        return self.apply(self.engine.rcpt(self.client, self.message, recipient, conn_id=self.conn_id))

    @Milter.noreply
    def header(self, name: str, value: str) -> int:
        try:
            if self.message is not None:
                self.engine.header(self.message, name, value)
        except Exception:
            log.exception("internal error in header (conn=%s); header ignored", self.conn_id)
        return Milter.CONTINUE

    @_guarded
    def eom(self) -> int:
        message, self.message = self.message, None
        if message is None:
            return Milter.CONTINUE
        queue_id = self.getsymval("i") or ""
        return self.apply(self.engine.eom(self.client, message, queue_id=queue_id, conn_id=self.conn_id))

    def abort(self) -> int:
        self.message = None
        return Milter.CONTINUE

    def close(self) -> int:
        return Milter.CONTINUE
