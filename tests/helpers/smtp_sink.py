"""A tiny SMTP server on 127.0.0.1 that, like mailflow in front of an MTA, refuses unauthenticated
mail: AUTH PLAIN with one user and password, optional STARTTLS (a self-signed certificate made
with openssl), and a list of what it received. Bounded everywhere: line length, message size,
commands per session, a socket timeout; one session at a time is all the alert tests need."""

from __future__ import annotations

import base64
import socket
import ssl
import subprocess
import threading
from dataclasses import dataclass, field
from typing import Any
from pathlib import Path
from io import BufferedRWPair

MAX_LINE = 4096
MAX_DATA = 1 << 20
MAX_COMMANDS = 100


@dataclass
class Received:
    login: str
    tls: bool
    sender: str
    recipients: list[str]
    data: bytes


@dataclass
class AuthSink:
    user: str
    password: str
    tls_dir: Path | None = None  # STARTTLS offered when set (a certificate is made there)
    received: list[Received] = field(default_factory=list)
    port: int = 0

    def __post_init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = int(self._listener.getsockname()[1])
        self._context: ssl.SSLContext | None = None
        if self.tls_dir is not None:
            cert, key = self.tls_dir / "sink.crt", self.tls_dir / "sink.key"
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                            "/CN=mx.provider.example", "-keyout", str(key), "-out", str(cert)],
                           check=True, capture_output=True, timeout=60)
            self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self._context.load_cert_chain(cert, key)
        self._open: list[BufferedRWPair[Any, Any] | socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._listener.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                try:
                    self._session(conn)
                except (OSError, ValueError):
                    pass  # the client went away or broke the protocol: next session

    def _session(self, raw: socket.socket) -> None:
        conn, stream = raw, raw.makefile("rwb")
        try:
            self._commands(conn, stream)
        finally:
            for each in self._open:
                each.close()
            self._open.clear()

    def _commands(self, conn: socket.socket, stream: BufferedRWPair[Any, Any]) -> None:
        self._open.append(stream)
        tls, login, sender = False, "", ""
        recipients: list[str] = []

        def say(line: str) -> None:
            stream.write(line.encode() + b"\r\n")
            stream.flush()

        say("220 sink.test ESMTP")
        for _ in range(MAX_COMMANDS):
            line = stream.readline(MAX_LINE).decode("utf-8", "replace").rstrip("\r\n")
            verb, _, arg = line.partition(" ")
            verb = verb.upper()
            if verb in ("EHLO", "HELO"):
                lines = ["sink.test", *(["STARTTLS"] if self._context is not None and not tls else []), "AUTH PLAIN"]
                for extension in lines[:-1]:
                    say(f"250-{extension}")
                say(f"250 {lines[-1]}")
            elif verb == "STARTTLS" and self._context is not None and not tls:
                say("220 go ahead")
                conn = self._context.wrap_socket(conn, server_side=True)
                stream, tls = conn.makefile("rwb"), True
                self._open += [conn, stream]
            elif verb == "AUTH" and arg.upper().startswith("PLAIN"):
                token = arg[5:].strip()
                if not token:
                    say("334 ")
                    token = stream.readline(MAX_LINE).decode().strip()
                _, user, password = base64.b64decode(token).decode("utf-8", "replace").split("\0", 2)
                if (user, password) == (self.user, self.password):
                    login = user
                    say("235 2.7.0 Authentication successful")
                else:
                    say("535 5.7.8 Authentication failed")
            elif verb == "MAIL":
                if not login:  # what mailflow answers unauthenticated SMTP from this host
                    say("550 5.7.1 Unauthenticated SMTP from this host is refused by the mail policy")
                    continue
                sender, recipients = arg[5:].strip(), []
                say("250 2.1.0 Ok")
            elif verb == "RCPT":
                recipients.append(arg[3:].strip())
                say("250 2.1.5 Ok")
            elif verb == "DATA":
                say("354 End data with <CR><LF>.<CR><LF>")
                data = b""
                while (chunk := stream.readline(MAX_LINE)) not in (b".\r\n", b""):
                    data += chunk
                    if len(data) > MAX_DATA:
                        raise ValueError("message too large")
                self.received.append(Received(login, tls, sender, recipients, data))
                say("250 2.0.0 Ok: queued")
            elif verb in ("RSET", "NOOP"):
                say("250 2.0.0 Ok")
            elif verb == "QUIT" or not line:
                say("221 2.0.0 Bye")
                return
            else:
                say("502 5.5.2 Error: command not recognized")


def refusing_sink(port: int, reply: str, backlog: int = 64) -> subprocess.Popen[bytes]:
    """Postfix's smtp-sink on 127.0.0.1:`port` refusing every RCPT with `reply` ("550 5.1.1 …":
    -f RCPT with -B; "451 4.7.28 …": -r RCPT with -b), as a receiver that refuses an address, or
    refuses the sending IP, answers. Runs as postfix (needs root to start); stop it by its pid."""
    if not (reply[:3].isdigit() and reply[0] in "45"):
        raise ValueError(f"a refusal starts with a 4xx or 5xx code: {reply!r}")
    refuse = ["-f", "RCPT", "-B", reply] if reply[0] == "5" else ["-r", "RCPT", "-b", reply]
    return subprocess.Popen(["smtp-sink", "-u", "postfix", *refuse, f"127.0.0.1:{port}", str(backlog)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
