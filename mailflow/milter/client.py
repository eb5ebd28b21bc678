"""The MTA side of the milter protocol: drive a running milter as Postfix would.

miltertest supplies the wire codec; this module adds what a test or replay needs on top:
honouring the steps and replies the milter negotiated away and the macro lists it asked for
(sending the client's address at MAIL when it skipped CONNECT), and turning answers into
SMTP-like replies ("451 4.7.1 …", "accept") that can be compared with expectations.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field

from miltertest import codec
from miltertest import constants as C
from miltertest.client import MilterConnection

# Which protocol flag skips a step, and which one tells the MTA not to wait for its reply.
_SKIP = {C.SMFIC_CONNECT: C.SMFIP_NOCONNECT, C.SMFIC_HELO: C.SMFIP_NOHELO, C.SMFIC_MAIL: C.SMFIP_NOMAIL,
         C.SMFIC_RCPT: C.SMFIP_NORCPT, C.SMFIC_HEADER: C.SMFIP_NOHDRS, C.SMFIC_EOH: C.SMFIP_NOEOH,
         C.SMFIC_BODY: C.SMFIP_NOBODY, C.SMFIC_DATA: C.SMFIP_NODATA}
_NOREPLY = {C.SMFIC_CONNECT: C.SMFIP_NR_CONN, C.SMFIC_HELO: C.SMFIP_NR_HELO, C.SMFIC_MAIL: C.SMFIP_NR_MAIL,
            C.SMFIC_RCPT: C.SMFIP_NR_RCPT, C.SMFIC_HEADER: C.SMFIP_NR_HDR, C.SMFIC_EOH: C.SMFIP_NR_EOH,
            C.SMFIC_BODY: C.SMFIP_NR_BODY, C.SMFIC_DATA: C.SMFIP_NR_DATA}
_WORDS = {C.SMFIR_CONTINUE: "continue", C.SMFIR_ACCEPT: "accept", C.SMFIR_REJECT: "reject",
          C.SMFIR_TEMPFAIL: "tempfail", C.SMFIR_DISCARD: "discard", C.SMFIR_SKIP: "continue"}
_MACRO_STAGES = {C.SMFIM_CONNECT: C.SMFIC_CONNECT, C.SMFIM_HELO: C.SMFIC_HELO, C.SMFIM_ENVFROM: C.SMFIC_MAIL,
                 C.SMFIM_ENVRCPT: C.SMFIC_RCPT, C.SMFIM_DATA: C.SMFIC_DATA, C.SMFIM_EOM: C.SMFIC_BODYEOB,
                 C.SMFIM_EOH: C.SMFIC_EOH}
_FAMILIES = {"4": C.SMFIA_INET, "6": C.SMFIA_INET6, "unix": C.SMFIA_UNIX, "unknown": C.SMFIA_UNKNOWN}


class MilterClientError(Exception):
    """The milter could not be reached or broke the protocol."""


@dataclass
class Response:
    """A milter's answer to one step, in SMTP terms."""

    action: str  # continue | accept | reject | tempfail | discard
    reply: str = ""  # "451 4.7.1 text" when the milter set one
    quarantine: str | None = None
    headers_added: list[tuple[str, str]] = field(default_factory=list)
    recipients_removed: list[str] = field(default_factory=list)
    headers_changed: list[tuple[str, int, str]] = field(default_factory=list)  # (name, index, value); "": removed

    @property
    def smtp(self) -> str:
        """What the MTA would answer: the milter's reply, or the MTA default for the action."""
        if self.reply:
            return self.reply
        return {"reject": "550 5.7.1 Command rejected", "tempfail": "451 4.7.1 Service unavailable"}.get(
            self.action, self.action
        )


def parse_socket(spec: str) -> tuple[int, object]:
    """libmilter socket syntax (`inet:8890@127.0.0.1`, `inet6:8890@::1`, `unix:/path`)."""
    kind, _, rest = spec.partition(":")
    if kind in ("unix", "local"):
        return socket.AF_UNIX, rest
    if kind in ("inet", "inet6"):
        port, _, host = rest.partition("@")
        host = host.strip("[]") or ("127.0.0.1" if kind == "inet" else "::1")
        return (socket.AF_INET6 if kind == "inet6" else socket.AF_INET), (host, int(port))
    raise MilterClientError(f"not a milter socket: {spec!r}")


CONTINUE = Response("continue")


class MilterClient:
    """One SMTP connection's worth of milter conversation (as many messages as you like)."""

    def __init__(self, spec: str, timeout: float = 10.0, actions: int = C.SMFI_V6_ACTS) -> None:
        """`actions`: what this MTA offers; without SMFIF_SETSYMLIST it acts as an MTA that cannot
        send the macro lists a milter asks for."""
        family, address = parse_socket(spec)
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        if family != socket.AF_UNIX:  # a macro and its command go out as two writes: no Nagle stall
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self.sock.connect(address)  # type: ignore[arg-type]
            self.conn = MilterConnection(self.sock)
            self.macro_lists = self._negotiate(actions)
        except Exception as exc:  # OSError or a codec error
            self.sock.close()
            raise MilterClientError(f"cannot talk to milter at {spec}: {exc}") from exc
        self.protocol: int = self.conn.protocol_flags or 0
        self.message_done = False  # the milter gave a final answer for the current message
        self.connection_macros: dict[str, str] = {}  # what an MTA knows of the connection

    def _negotiate(self, offered_actions: int) -> dict[str, tuple[str, ...]]:
        """Option negotiation as an MTA; returns the macro lists the milter asked for, by step.
        (miltertest's own negotiation refuses a reply that carries macro lists.)"""
        actions, protocol = codec.optneg_mta_capable(offered_actions, C.SMFI_V6_PROT)
        self.sock.sendall(codec.encode_optneg(actions, protocol))
        header = _read_exactly(self.sock, 5)
        length, cmd = struct.unpack("!Lc", header)
        payload = _read_exactly(self.sock, length - 1)
        if cmd.decode() != C.SMFIC_OPTNEG or len(payload) < 12:
            raise MilterClientError(f"bad reply to option negotiation: {cmd!r}")
        _, self.conn.action_flags, self.conn.protocol_flags = struct.unpack("!LLL", payload[:12])
        lists, rest = {}, payload[12:]
        while len(rest) >= 4:
            (stage,), rest = struct.unpack("!L", rest[:4]), rest[4:]
            names, _, rest = rest.partition(b"\0")
            if stage in _MACRO_STAGES:
                lists[_MACRO_STAGES[stage]] = tuple(names.decode().split())
        return lists

    def close(self) -> None:
        try:
            self.conn._send(C.SMFIC_QUIT)
        except OSError:
            pass
        self.sock.close()

    def __enter__(self) -> MilterClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- steps ----------------------------------------------------------------------------

    def connect(self, hostname: str, address: str, port: int = 0, family: str = "4",
                macros: dict[str, str] | None = None) -> Response:
        # Like Postfix, offer these at any later step whose macro list asks for them.
        self.connection_macros = {"{client_addr}": address, "{client_port}": str(port), "{client_name}": hostname}
        return self._step(C.SMFIC_CONNECT, macros, hostname=hostname, family=_FAMILIES[family],
                          port=port, address=address)

    def helo(self, name: str, macros: dict[str, str] | None = None) -> Response:
        return self._step(C.SMFIC_HELO, macros, helo=name)

    def mail(self, sender: str, macros: dict[str, str] | None = None, esmtp: list[str] | None = None) -> Response:
        self.message_done = False
        return self._step(C.SMFIC_MAIL, macros, args=[_bracket(sender), *(esmtp or [])])

    def rcpt(self, recipient: str, macros: dict[str, str] | None = None, esmtp: list[str] | None = None) -> Response:
        return self._step(C.SMFIC_RCPT, macros, args=[_bracket(recipient), *(esmtp or [])])

    def data(self, macros: dict[str, str] | None = None) -> Response:
        return self._step(C.SMFIC_DATA, macros)

    def header(self, name: str, value: str) -> Response:
        return self._step(C.SMFIC_HEADER, None, name=name, value=value)

    def eoh(self) -> Response:
        return self._step(C.SMFIC_EOH, None)

    def body(self, chunk: bytes) -> Response:
        return self._step(C.SMFIC_BODY, None, buf=chunk)

    def eom(self, macros: dict[str, str] | None = None) -> Response:
        if self.message_done:
            return Response("accept")
        self._send_macros(C.SMFIC_BODYEOB, macros)
        self.conn._send(C.SMFIC_BODYEOB)
        response = Response("continue")
        while True:
            cmd, data = self._recv()
            if cmd == C.SMFIR_ADDHEADER or cmd == C.SMFIR_INSHEADER:
                response.headers_added.append((str(data["name"]), str(data["value"])))
            elif cmd == C.SMFIR_CHGHEADER:
                response.headers_changed.append((str(data["name"]), int(str(data["index"])), str(data["value"])))
            elif cmd == C.SMFIR_DELRCPT:
                response.recipients_removed.append(str(data["rcpt"]))
            elif cmd == C.SMFIR_QUARANTINE:
                response.quarantine = str(data["reason"])
            elif cmd in _WORDS or cmd == C.SMFIR_REPLYCODE:
                self._fill(response, cmd, data)
                self.message_done = True
                return response

    def abort(self) -> None:
        self.conn._send(C.SMFIC_ABORT)
        self.message_done = True

    # -- plumbing -------------------------------------------------------------------------

    def _step(self, cmd: str, macros: dict[str, str] | None, **fields: object) -> Response:
        if self.message_done and cmd not in (C.SMFIC_CONNECT, C.SMFIC_HELO, C.SMFIC_MAIL):
            return Response("accept")
        if self.protocol & _SKIP.get(cmd, 0):
            return CONTINUE
        self._send_macros(cmd, macros)
        try:
            self.conn._send(cmd, **fields)
        except OSError as exc:
            raise MilterClientError(f"milter connection lost: {exc}") from exc
        if self.protocol & _NOREPLY.get(cmd, 0):
            return CONTINUE
        cmd_reply, data = self._recv()
        response = Response("continue")
        self._fill(response, cmd_reply, data)
        if response.action in ("accept", "discard") or (cmd == C.SMFIC_MAIL and response.action != "continue"):
            self.message_done = True
        return response

    def _send_macros(self, cmd: str, macros: dict[str, str] | None) -> None:
        """The step's macros; where the milter asked for a list, exactly the names on it that
        this connection knows (the connection's facts included), as Postfix and Sendmail do."""
        wanted = self.macro_lists.get(cmd)
        if wanted is not None:
            known = {**self.connection_macros, **(macros or {})}
            macros = {name: known[name] for name in wanted if name in known}
        if macros:
            self.conn.send_macro(cmd, **macros)

    def _recv(self) -> tuple[str, dict[str, object]]:
        try:
            reply = self.conn.recv()
        except Exception as exc:  # OSError or a codec error
            raise MilterClientError(f"no answer from milter: {exc}") from exc
        if reply is None:
            raise MilterClientError("milter closed the connection")
        cmd, data = reply
        return str(cmd), dict(data)

    @staticmethod
    def _fill(response: Response, cmd: str, data: dict[str, object]) -> None:
        if cmd == C.SMFIR_REPLYCODE:
            code = str(data["smtpcode"])
            response.action = "tempfail" if code.startswith("4") else "reject"
            response.reply = f"{code} {data['text']}"
        elif cmd in _WORDS:
            response.action = _WORDS[cmd]
        else:
            raise MilterClientError(f"unexpected milter reply {cmd!r}")


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise MilterClientError("milter closed the connection during negotiation")
        data += chunk
    return data


def _bracket(address: str) -> str:
    address = address.strip()
    return address if address.startswith("<") else f"<{address}>"
