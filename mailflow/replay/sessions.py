"""The session file format (YAML or JSON) and its strict loader.

A bad file is reported as `FILE: session NAME: FIELD: problem`, so an admin can fix it at once.
The format is documented in README.md ("Replaying traffic").
"""

from __future__ import annotations

import email.parser
import email.policy
import ipaddress
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

STAGES = ("mail", "rcpt", "eom")
MACRO_STAGES = ("connect", "helo", "mail", "rcpt", "eom")
_SESSION_KEYS = {"name", "client", "helo", "login", "password", "macros", "mail_from", "rcpt_to", "headers",
                 "message", "body", "abort_after", "repeat", "pause", "expect", "queue_id"}


class SessionFileError(ValueError):
    """A session file that cannot be used; the message names file, session and field."""


@dataclass(frozen=True)
class ClientInfo:
    name: str = "client.example"
    address: str = "198.51.100.1"
    port: int = 40000

    @property
    def is_pickup(self) -> bool:
        return self.port == 0 and _is_loopback(self.address)


@dataclass(frozen=True)
class Expect:
    mail: str | None = None
    rcpt: tuple[str, ...] | None = None  # one per recipient
    eom: str | None = None

    @property
    def empty(self) -> bool:
        return self.mail is None and self.rcpt is None and self.eom is None


@dataclass(frozen=True)
class Session:
    name: str
    mail_from: str
    rcpt_to: tuple[str, ...]
    client: ClientInfo = ClientInfo()
    helo: str = ""
    login: str | None = None
    password: str | None = None
    macros: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    headers: tuple[tuple[str, str], ...] = ()
    body: str = ""
    abort_after: str | None = None  # "mail" or "rcpt"
    repeat: int = 1
    pause: float = 0.0
    expect: Expect = Expect()
    queue_id: str = ""
    source: str = ""  # file it came from
    timestamp: float | None = None  # log replay: when the message was seen

    @property
    def needs_smtputf8(self) -> bool:
        texts = [self.mail_from, *self.rcpt_to, *(v for _, v in self.headers)]
        return not all(t.isascii() for t in texts)


def load_sessions(path: str) -> list[Session]:
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise SessionFileError(f"{path}: {exc.strerror}") from None
    try:
        data = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise SessionFileError(f"{path}: not valid {'JSON' if path.endswith('.json') else 'YAML'}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("sessions"), list):
        raise SessionFileError(f"{path}: expected a top-level 'sessions' list (and optional 'defaults')")
    unknown = set(data) - {"sessions", "defaults"}
    if unknown:
        raise SessionFileError(f"{path}: unknown top-level key {sorted(unknown)[0]!r}")
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise SessionFileError(f"{path}: defaults: expected a mapping")
    sessions, names = [], set()
    for index, raw in enumerate(data["sessions"]):
        label = raw.get("name") if isinstance(raw, dict) and isinstance(raw.get("name"), str) else f"#{index + 1}"
        try:
            if not isinstance(raw, dict):
                raise _FieldError("-", "expected a mapping")
            session = parse_session({**defaults, **raw}, os.path.dirname(os.path.abspath(path)), path)
        except _FieldError as exc:
            raise SessionFileError(f"{path}: session {label}: {exc.field}: {exc.problem}") from None
        if session.name in names:
            raise SessionFileError(f"{path}: session {label}: name: used twice in this file")
        names.add(session.name)
        sessions.append(session)
    return sessions


class _FieldError(Exception):
    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field, self.problem = field, problem


def _text(raw: Mapping[str, Any], key: str, default: str | None = None, required: bool = False) -> str | None:
    if key not in raw or raw[key] is None:
        if required:
            raise _FieldError(key, "missing")
        return default
    value = raw[key]
    if not isinstance(value, str):
        raise _FieldError(key, f"expected a string, got {value!r}")
    return value


def parse_session(raw: Mapping[str, Any], base_dir: str = ".", source: str = "") -> Session:
    unknown = set(raw) - _SESSION_KEYS
    if unknown:
        raise _FieldError(sorted(unknown)[0], "unknown field")
    name = _text(raw, "name", required=True) or ""
    mail_from = _text(raw, "mail_from", required=True) or ""
    rcpt_to = _recipients(raw.get("rcpt_to"))
    client = _client(raw.get("client") or {})
    headers, body = _headers(raw, base_dir)
    abort_after = _text(raw, "abort_after")
    if abort_after not in (None, "mail", "rcpt"):
        raise _FieldError("abort_after", f"{abort_after!r}: expected mail or rcpt")
    repeat = raw.get("repeat", 1)
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
        raise _FieldError("repeat", f"expected a whole number of at least 1, got {repeat!r}")
    pause = raw.get("pause", 0)
    if isinstance(pause, bool) or not isinstance(pause, (int, float)) or not 0 <= pause <= 3600:
        raise _FieldError("pause", f"expected seconds between 0 and 3600, got {pause!r}")
    return Session(
        name=name, mail_from=mail_from, rcpt_to=rcpt_to, client=client,
        helo=_text(raw, "helo", client.name) or client.name,
        login=_text(raw, "login"), password=_text(raw, "password"),
        macros=_macros(raw.get("macros") or {}), headers=headers, body=body,
        abort_after=abort_after, repeat=repeat, pause=float(pause),
        expect=_expect(raw.get("expect") or {}, len(rcpt_to)),
        queue_id=_text(raw, "queue_id", "") or "", source=source,
    )


def _recipients(value: Any) -> tuple[str, ...]:
    if isinstance(value, dict):  # {count: 100, pattern: "user{n}@dest.example"}
        count, pattern = value.get("count"), value.get("pattern")
        if not isinstance(count, int) or count < 1 or not isinstance(pattern, str) or "{n}" not in pattern:
            raise _FieldError("rcpt_to", "expected a list, or {count: N, pattern: 'user{n}@domain'}")
        return tuple(pattern.replace("{n}", str(n)) for n in range(1, count + 1))
    if not isinstance(value, list) or not value or not all(isinstance(r, str) for r in value):
        raise _FieldError("rcpt_to", "expected a non-empty list of addresses")
    return tuple(value)


def _client(raw: Any) -> ClientInfo:
    if not isinstance(raw, dict) or set(raw) - {"name", "address", "port"}:
        raise _FieldError("client", "expected {name, address, port}")
    address = raw.get("address", ClientInfo.address)
    try:
        ipaddress.ip_address(address)
    except (ValueError, TypeError):
        raise _FieldError("client.address", f"{address!r} is not an IP address") from None
    port = raw.get("port", ClientInfo.port)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise _FieldError("client.port", f"{port!r} is not a port number")
    return ClientInfo(name=str(raw.get("name", ClientInfo.name)), address=address, port=port)


def _macros(raw: Any) -> dict[str, dict[str, str]]:
    if not isinstance(raw, dict):
        raise _FieldError("macros", "expected a mapping of stage to {macro: value}")
    out: dict[str, dict[str, str]] = {}
    for stage, values in raw.items():
        if stage not in MACRO_STAGES:
            raise _FieldError(f"macros.{stage}", f"not a stage ({', '.join(MACRO_STAGES)})")
        if not isinstance(values, dict):
            raise _FieldError(f"macros.{stage}", "expected {macro: value}")
        out[stage] = {str(k): str(v) for k, v in values.items()}
    return out


def _headers(raw: Mapping[str, Any], base_dir: str) -> tuple[tuple[tuple[str, str], ...], str]:
    if "message" in raw:
        if "headers" in raw:
            raise _FieldError("message", "give headers or message, not both")
        path = _text(raw, "message") or ""
        path = path if os.path.isabs(path) else os.path.join(base_dir, path)
        try:
            with open(path, "rb") as fh:
                parsed = email.parser.BytesParser(policy=email.policy.compat32).parse(fh)
        except OSError as exc:
            raise _FieldError("message", f"{path}: {exc.strerror}") from None
        payload = parsed.get_payload()
        return tuple((k, str(v)) for k, v in parsed.items()), payload if isinstance(payload, str) else ""
    value = raw.get("headers", [])
    if isinstance(value, dict):
        value = list(value.items())
    if not isinstance(value, list):
        raise _FieldError("headers", "expected a list of [name, value] pairs or a mapping")
    headers = []
    for i, pair in enumerate(value):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
            raise _FieldError(f"headers[{i}]", "expected [name, value]")
        headers.append((pair[0], pair[1]))
    body = _text(raw, "body", "") or ""
    return tuple(headers), body


def _expect(raw: Any, recipients: int) -> Expect:
    if not isinstance(raw, dict) or set(raw) - set(STAGES):
        raise _FieldError("expect", f"expected a mapping with {', '.join(STAGES)}")
    rcpt = raw.get("rcpt")
    rcpts: tuple[str, ...] | None = None
    if isinstance(rcpt, str):
        rcpts = (rcpt,) * recipients
    elif isinstance(rcpt, list) and all(isinstance(r, str) for r in rcpt):
        if len(rcpt) != recipients:
            raise _FieldError("expect.rcpt", f"{len(rcpt)} replies for {recipients} recipients")
        rcpts = tuple(rcpt)
    elif rcpt is not None:
        raise _FieldError("expect.rcpt", "expected a reply or a list of replies, one per recipient")
    for stage in ("mail", "eom"):
        if stage in raw and not isinstance(raw[stage], str):
            raise _FieldError(f"expect.{stage}", f"expected a reply like accept or '451 4.7.1', got {raw[stage]!r}")
    return Expect(mail=raw.get("mail"), rcpt=rcpts, eom=raw.get("eom"))


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False
