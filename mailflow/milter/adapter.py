"""pymilter callbacks: gather facts into plain data, ask the Engine, apply its Decision.

libmilter runs one thread per SMTP connection and creates one instance of this class per
connection, so instance state needs no locks; the Engine and store are shared and thread-safe.
Callbacks not defined here (helo, data, eoh, body, unknown) are negotiated away, and so is
connect when the MTA can send the client's address as macros at MAIL (Postfix, Sendmail 8.14+).
"""

from __future__ import annotations

import functools
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import Milter

from mailflow import metrics
from mailflow.decisions import UNREADABLE_MACRO
from mailflow.engine import Engine
from mailflow.model import GENERIC_TEXT, PASS, Client, Decision, Message, Reply, Verdict, shown

log = logging.getLogger("mailflow.milter")

# Asked for at MAIL (replacing the MTA's own list for that stage; at most 5 names): the login,
# the connection facts that make the CONNECT callback unnecessary ({daemon_name}: which Sendmail
# listener, the MSP's or not), and the queue id, which Sendmail sends only in its own MAIL list
# (Postfix sends it at end of message). Only these: every name asked for is a lookup per message,
# and the policy never reads the client's host name.
MAIL_MACROS = "{auth_authen} {client_addr} {client_port} {daemon_name} i"

# A header the milter cannot see whole. With milters configured, Postfix's cleanup cuts every
# header at 60,000 bytes (KLUDGE_HEADER_LIMIT, to stay under libmilter's 65,535-byte packets) and
# offers no larger packet size (its milter8 client knows no SMFIP_MDS_* flag); Debian's libmilter
# (1.0.1) is built without MDS negotiation, and pymilter registers as a 1.0.1 filter and exposes
# no smfi_setmaxdatasize. So a larger size cannot be negotiated: such a header is logged. Postfix
# cuts at a line boundary past 90 % of the limit (cleanup_out.c), so a cut header arrives with
# at least MTA_HEADER_CUT bytes.
MTA_HEADER_LIMIT = 60_000
MTA_HEADER_CUT = MTA_HEADER_LIMIT * 9 // 10

_connection_ids = itertools.count(1)  # next() is atomic under the GIL: no lock per connection

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
        started = time.perf_counter()
        try:
            return callback(self, *args)
        except Exception:
            log.exception("internal error in %s (conn=%s); applying on_error", callback.__name__, self.conn_id)
            return self.apply(self.engine.error_decision("internal_error"))
        finally:
            self.policy_seconds += time.perf_counter() - started

    return wrapper


def _ends_message(callback: Callable[..., int]) -> Callable[..., int]:
    """Outside _guarded on eom: the message's policy time, its own end of message included."""

    @functools.wraps(callback)
    def wrapper(self: MailflowMilter, *args: Any) -> int:
        try:
            return callback(self, *args)
        finally:
            metrics.RECORDER.policy_time(self.policy_seconds)
            self.policy_seconds = 0.0

    return wrapper


class MailflowMilter(Milter.Base):
    engine: Engine  # set on the class by server.serve_worker()
    live = 0  # connections open now (from negotiation to close): a stopping worker waits for none
    _live_lock = threading.Lock()

    def __init__(self) -> None:
        self.conn_id = f"{next(_connection_ids):x}"
        self._counted = True
        with MailflowMilter._live_lock:
            MailflowMilter.live += 1
        self.client: Client | None = None  # from CONNECT, or from the macros at the first MAIL
        self.message: Message | None = None
        self.policy_seconds = 0.0  # spent in MAIL, RCPT and EOM of the message now (metrics)

    def negotiate(self, opts: list[int]) -> int:
        # Milter.Base.negotiate also looks up @symlist macro lists on every callback, for every
        # connection; we do our own, smaller negotiation.
        self._actions, offered = opts[0], opts[1]
        needed = self.protocol_mask()
        if self._actions & Milter.SETSYMLIST and self._ask_for_mail_macros():
            # The client's address comes with MAIL: the CONNECT step (a callback into Python per
            # connection) is not needed. An MTA that cannot send macro lists still gets connect().
            needed &= ~Milter.P_NOCONNECT
        opts[1] = self._protocol = offered & ~needed
        opts[2] = opts[3] = 0
        return Milter.CONTINUE

    def _ask_for_mail_macros(self) -> bool:
        try:  # the C call itself: Milter.Base.setsymlist hands it bytes, which it refuses
            return self._ctx.setsymlist(Milter.M_ENVFROM, MAIL_MACROS) is None
        except Milter.milter.error:
            return False

    def _client_from_macros(self) -> Client:
        getsymval = self._ctx.getsymval  # the C call itself, as for every macro read per message
        address = getsymval("{client_addr}") or None
        if address and address[:5].lower() == "ipv6:":  # Sendmail's spelling of an IPv6 address
            address = address[5:]
        port = getsymval("{client_port}") or ""
        return Client(address=address, port=int(port) if port.isdigit() else None,
                      daemon_name=getsymval("{daemon_name}") or "")

    def _macro(self, name: str) -> str | None:
        """A macro's value (the C call itself). pymilter decodes it as strict UTF-8 and cannot
        hand over its bytes: one that is not UTF-8 reads as UNREADABLE_MACRO."""
        try:
            return self._ctx.getsymval(name)
        except UnicodeDecodeError:
            return UNREADABLE_MACRO

    def _queue_id(self) -> str:
        """The MTA's queue id (`i`), once it has one: logged as qid=, never judged."""
        queue_id = self._macro("i")
        return "" if queue_id is None or queue_id == UNREADABLE_MACRO else queue_id

    def apply(self, decision: Decision) -> int:
        if decision is PASS:  # nearly every answer: nothing to set or change
            return Milter.CONTINUE
        if decision.reply is not None and decision.verdict in (Verdict.TEMPFAIL, Verdict.REJECT):
            self._set_reply(decision.reply)
        if decision.verdict is Verdict.HOLD:
            self.quarantine(decision.reply.text if decision.reply else decision.reason)
        for name, count in decision.remove_headers:
            for index in range(count, 0, -1):  # 1-based per name; from the last, so none renumbers
                self.chgheader(name, index, None)
        for name, value in decision.add_headers:
            self.addheader(name, value)
        for recipient in decision.remove_recipients:
            self.delrcpt(recipient)
        return _RETURN_CODES[decision.verdict]

    def _set_reply(self, reply: Reply) -> None:
        # Every Reply is bounded, one line and printable ASCII, which libmilter accepts; `%` is
        # doubled here, once (libmilter's MTAs read the text as a format: Sendmail requires `%%`,
        # Postfix turns `%%` back into `%`). Should the library refuse it all the same, the
        # refusal stands with a generic text: never on_error.
        try:
            self.setreply(reply.code, reply.status, reply.text.replace("%", "%%"))
        except (Milter.milter.error, ValueError) as exc:
            log.warning("conn=%s: the milter library refused the reply %r (%s); sending a generic one",
                        self.conn_id, str(reply)[:200], exc)
            self.setreply(reply.code, reply.status, GENERIC_TEXT[reply.code[:1]])

    @Milter.noreply
    def connect(self, hostname: str, family: int, hostaddr: Any) -> int:
        address, port = None, None
        if isinstance(hostaddr, tuple) and len(hostaddr) >= 2:
            address, port = hostaddr[0], hostaddr[1]
        if address is None and self._ctx.getsymval("{client_addr}") == "0":
            address = "0"  # Sendmail's `sendmail -bs`: no network peer
        self.client = Client(hostname=hostname or "", address=address, port=port,
                             daemon_name=self._ctx.getsymval("{daemon_name}") or "")
        return Milter.CONTINUE

    # pymilter hands the envelope and header values over as bytes to these, whose defaults look
    # up a per-method decoding strategy on every call; ours is fixed (the defaults' own).
    def envfrom_bytes(self, sender: bytes, *esmtp: bytes) -> int:
        return self.envfrom(sender.decode("utf-8", "surrogateescape"))

    def envrcpt_bytes(self, recipient: bytes, *esmtp: bytes) -> int:
        return self.envrcpt(recipient.decode("utf-8", "surrogateescape"))

    def header_bytes(self, name: str, value: bytes) -> int:
        if len(name) + len(value) + 2 >= MTA_HEADER_CUT:
            log.warning("conn=%s: a %s: header of %d bytes is near the %d bytes Postfix passes to milters (it cuts "
                        "longer ones; a larger milter packet cannot be negotiated): judged as received, possibly cut",
                        self.conn_id, shown(name, 40), len(name) + len(value) + 2, MTA_HEADER_LIMIT)
        return self.header(name, value.decode("utf-8", "surrogateescape"))

    @_guarded
    def envfrom(self, sender: str, *esmtp: str) -> int:
        self.policy_seconds = 0.0  # a message aborted before its end is not timed
        if self.client is None:
            self.client = self._client_from_macros()
        self.message, decision = self.engine.mail(self.client, sender, self._macro("{auth_authen}"),
                                                  conn_id=self.conn_id, queue_id=self._queue_id())
        return self.apply(decision)

    @_guarded
    def envrcpt(self, recipient: str, *esmtp: str) -> int:
        if self.message is None or self.client is None:
            return Milter.CONTINUE
        if not self.message.queue_id:  # Postfix names the queue file at the first RCPT, not at MAIL
            self.message.queue_id = self._queue_id()
        return self.apply(self.engine.rcpt(self.client, self.message, recipient, conn_id=self.conn_id))

    @Milter.noreply
    def header(self, name: str, value: str) -> int:
        try:
            if self.message is not None:
                self.engine.header(self.message, name, value)
        except Exception:
            log.exception("internal error in header (conn=%s); header ignored", self.conn_id)
        return Milter.CONTINUE

    @_ends_message
    @_guarded
    def eom(self) -> int:
        message, self.message = self.message, None
        if message is None or self.client is None:
            return Milter.CONTINUE
        # libmilter looks a macro up from this stage back to CONNECT: Postfix's `i` of end of
        # message, else Sendmail's of MAIL (the same queue file).
        queue_id = self._ctx.getsymval("i") or ""
        return self.apply(self.engine.eom(self.client, message, queue_id=queue_id, conn_id=self.conn_id))

    def abort(self) -> int:
        self.message = None
        return Milter.CONTINUE

    def close(self) -> int:
        with MailflowMilter._live_lock:
            MailflowMilter.live -= self._counted  # once, whatever calls close
            self._counted = False
        return Milter.CONTINUE
