"""The session file format (YAML or JSON) and its strict loader.

A bad file is reported as `FILE: session NAME: FIELD: problem`, so an admin can fix it at once.
The format is documented in README.md ("Replaying traffic"). A file is bounded before it is
believed: its size, YAML nesting, sessions, recipients and repeats (the limits below), so no
file can take unbounded memory or time, or a traceback.
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


MAX_FILE_BYTES = 64 << 20  # a session file, or a message file it names
MAX_DEPTH = 32  # YAML/JSON nesting; the format itself needs 4
MAX_SESSIONS = 100_000  # per file
MAX_RECIPIENTS = 100_000  # per session
MAX_FILE_RECIPIENTS = 1_000_000  # per file, all sessions
MAX_REPEAT = 100_000


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


class _BoundedLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses nesting deeper than MAX_DEPTH (PyYAML composes recursively:
    deep nesting would otherwise end in a RecursionError)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.YAMLError(f"nested deeper than {MAX_DEPTH} levels at line {self.line + 1}")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _read(path: str) -> str:
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise SessionFileError(f"{path}: {exc.strerror}") from None
    if len(data) > MAX_FILE_BYTES:
        raise SessionFileError(f"{path}: larger than {MAX_FILE_BYTES >> 20} MiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SessionFileError(f"{path}: not UTF-8 (byte {exc.start})") from None


def _parse(path: str, text: str) -> Any:
    kind = "JSON" if path.endswith(".json") else "YAML"
    try:
        if kind == "JSON":
            return json.loads(text)
        loader = _BoundedLoader(text)
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise SessionFileError(f"{path}: not valid {kind}: {' '.join(str(exc).split())}") from None
    except RecursionError:
        raise SessionFileError(f"{path}: not valid {kind}: nested too deeply") from None


def load_sessions(path: str) -> list[Session]:
    data = _parse(path, _read(path))
    if not isinstance(data, dict) or not isinstance(data.get("sessions"), list):
        raise SessionFileError(f"{path}: expected a top-level 'sessions' list (and optional 'defaults')")
    if len(data["sessions"]) > MAX_SESSIONS:
        raise SessionFileError(f"{path}: {len(data['sessions'])} sessions; at most {MAX_SESSIONS} a file")
    unknown = set(data) - {"sessions", "defaults"}
    if unknown:
        raise SessionFileError(f"{path}: unknown top-level key {_short(sorted(map(str, unknown))[0])}")
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise SessionFileError(f"{path}: defaults: expected a mapping")
    sessions, names, recipients = [], set(), 0
    for index, raw in enumerate(data["sessions"]):
        name = raw.get("name") if isinstance(raw, dict) else None
        label = name[:60] if isinstance(name, str) and name else f"#{index + 1}"
        try:
            if not isinstance(raw, dict):
                raise _FieldError("-", "expected a mapping")
            session = parse_session({**defaults, **raw}, os.path.dirname(os.path.abspath(path)), path)
        except _FieldError as exc:
            raise SessionFileError(f"{path}: session {label}: {exc.field}: {exc.problem}") from None
        if session.name in names:
            raise SessionFileError(f"{path}: session {label}: name: used twice in this file")
        recipients += len(session.rcpt_to)
        if recipients > MAX_FILE_RECIPIENTS:
            raise SessionFileError(f"{path}: session {label}: rcpt_to: more than {MAX_FILE_RECIPIENTS} recipients "
                                   "in this file; split it")
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
        raise _FieldError(key, f"expected a string, got {_short(value)}")
    return value


def parse_session(raw: Mapping[str, Any], base_dir: str = ".", source: str = "") -> Session:
    unknown = set(raw) - _SESSION_KEYS
    if unknown:
        raise _FieldError(sorted(map(str, unknown))[0][:40], "unknown field")
    name = _text(raw, "name", required=True) or ""
    mail_from = _text(raw, "mail_from", required=True) or ""
    rcpt_to = _recipients(raw.get("rcpt_to"))
    client = _client(raw.get("client") or {})
    headers, body = _headers(raw, base_dir)
    abort_after = _text(raw, "abort_after")
    if abort_after not in (None, "mail", "rcpt"):
        raise _FieldError("abort_after", f"{abort_after!r}: expected mail or rcpt")
    repeat = raw.get("repeat", 1)
    if isinstance(repeat, bool) or not isinstance(repeat, int) or not 1 <= repeat <= MAX_REPEAT:
        raise _FieldError("repeat", f"expected a whole number from 1 to {MAX_REPEAT}, got {_short(repeat)}")
    pause = raw.get("pause", 0)
    if isinstance(pause, bool) or not isinstance(pause, (int, float)) or not 0 <= pause <= 3600:
        raise _FieldError("pause", f"expected seconds between 0 and 3600, got {_short(pause)}")
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
        if count > MAX_RECIPIENTS:
            raise _FieldError("rcpt_to.count", f"{count} recipients; at most {MAX_RECIPIENTS} a session")
        return tuple(pattern.replace("{n}", str(n)) for n in range(1, count + 1))
    if not isinstance(value, list) or not value or not all(isinstance(r, str) for r in value):
        raise _FieldError("rcpt_to", "expected a non-empty list of addresses")
    if len(value) > MAX_RECIPIENTS:
        raise _FieldError("rcpt_to", f"{len(value)} recipients; at most {MAX_RECIPIENTS} a session")
    return tuple(value)


def _client(raw: Any) -> ClientInfo:
    if not isinstance(raw, dict) or set(raw) - {"name", "address", "port"}:
        raise _FieldError("client", "expected {name, address, port}")
    address = raw.get("address", ClientInfo.address)
    try:
        ipaddress.ip_address(address)
    except (ValueError, TypeError):
        raise _FieldError("client.address", f"{_short(address)} is not an IP address") from None
    port = raw.get("port", ClientInfo.port)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise _FieldError("client.port", f"{_short(port)} is not a port number")
    return ClientInfo(name=_scalar("client.name", raw.get("name", ClientInfo.name)), address=address, port=port)


def _macros(raw: Any) -> dict[str, dict[str, str]]:
    if not isinstance(raw, dict):
        raise _FieldError("macros", "expected a mapping of stage to {macro: value}")
    out: dict[str, dict[str, str]] = {}
    for stage, values in raw.items():
        if stage not in MACRO_STAGES:
            raise _FieldError(f"macros.{stage}", f"not a stage ({', '.join(MACRO_STAGES)})")
        if not isinstance(values, dict):
            raise _FieldError(f"macros.{stage}", "expected {macro: value}")
        out[stage] = {str(k): _scalar(f"macros.{stage}.{k}", v) for k, v in values.items()}
    return out


def _scalar(field: str, value: Any) -> str:
    """A text, number or flag as text; anything else (a YAML alias to a huge list, say) refused
    before str() could expand it."""
    if isinstance(value, (str, int, float, bool)):
        return str(value)
    raise _FieldError(field, "expected a text or a number")


def _short(value: Any) -> str:
    text = repr(value) if isinstance(value, (str, int, float, bool)) or value is None else type(value).__name__
    return text if len(text) <= 40 else text[:40] + "…"


def _headers(raw: Mapping[str, Any], base_dir: str) -> tuple[tuple[tuple[str, str], ...], str]:
    if "message" in raw:
        if "headers" in raw:
            raise _FieldError("message", "give headers or message, not both")
        path = _text(raw, "message") or ""
        path = path if os.path.isabs(path) else os.path.join(base_dir, path)
        try:
            with open(path, "rb") as fh:
                data = fh.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise _FieldError("message", f"{path}: {exc.strerror}") from None
        if len(data) > MAX_FILE_BYTES:
            raise _FieldError("message", f"{path}: larger than {MAX_FILE_BYTES >> 20} MiB")
        parsed = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(data)
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
            raise _FieldError(f"expect.{stage}", f"expected a reply like accept or '451 4.7.1', got {_short(raw[stage])}")
    return Expect(mail=raw.get("mail"), rcpt=rcpts, eom=raw.get("eom"))


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False
