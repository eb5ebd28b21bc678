"""The X-Mailflow-ID header: which account sent a message, sealed so that only this provider can
read it back from a complaint (feedback/arf.py).

`1.` then base64url (no padding) of: a 12-byte random nonce, then AES-SIV (RFC 5297, 256-bit) of
the issue time (4 bytes, unix seconds) and the account's UTF-8 name, with the nonce as associated
data. AES-SIV rather than AES-GCM: a repeated random nonce (a fleet stamps billions of messages
under one key) costs GCM its key's secrecy, SIV only the linkability of two equal plaintexts. A
recipient sees an opaque string; changing one bit of it, or a key other than this one, reads as
None; an account name of more than 255 bytes is never sealed, so a longer value is refused
before any decoding.

The key: `[feedback] id_key_file`, any secret of 16 bytes or more (`mailflow keygen FILE` makes
one); the cipher's key is derived from it (HMAC-SHA512), so the same file could never collide
with another use of the same secret. `id_old_key_file`: a key still read, not written (rotation).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
import hmac
import os
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

from mailflow.model import Decision
from mailflow.settings.table import Table
from mailflow.suppression.keys import KeyFileError, read_key_file

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    _Settings = TypeVar("_Settings", bound=DataclassInstance)
else:
    _Settings = TypeVar("_Settings")

HEADER = "X-Mailflow-ID"
VERSION = "1."
MIN_KEY_BYTES = 16
NONCE_BYTES = 12
ACCOUNT_MAX_BYTES = 255
_SIV_BYTES = 16
_TIME = struct.Struct(">I")
# The longest value make_id can write: prefix + base64url of nonce, SIV, time and a 255-byte name.
MAX_ID_CHARS = len(VERSION) + -(-(NONCE_BYTES + _SIV_BYTES + _TIME.size + ACCOUNT_MAX_BYTES) * 4 // 3)


class IdKeyError(ValueError):
    """A key that cannot seal ids (too short)."""


@functools.lru_cache(maxsize=8)
def _cipher(key: bytes) -> AESSIV:
    if len(key) < MIN_KEY_BYTES:
        raise IdKeyError(f"the X-Mailflow-ID key must be at least {MIN_KEY_BYTES} bytes")
    return AESSIV(hmac.digest(key, b"mailflow X-Mailflow-ID v1", "sha512"))  # 64 bytes: AES-256-SIV


def check_key(key: bytes) -> None:
    """IdKeyError unless `key` can seal ids (read at config load, not at the first message)."""
    _cipher(key)


def make_id(key: bytes, account: str, now: float) -> str:
    """The header value for `account`'s mail. ValueError for a name over 255 bytes (never nameable)."""
    name = account.encode("utf-8", "surrogateescape")
    if len(name) > ACCOUNT_MAX_BYTES:
        raise ValueError(f"an account name of {len(name)} bytes cannot be sealed (at most {ACCOUNT_MAX_BYTES})")
    nonce = os.urandom(NONCE_BYTES)
    sealed = _cipher(key).encrypt(_TIME.pack(int(now) & 0xFFFFFFFF) + name, [nonce])
    return VERSION + base64.urlsafe_b64encode(nonce + sealed).rstrip(b"=").decode("ascii")


def read_id(key: bytes, value: str) -> str | None:
    """The account `value` was made for with this key; None for anything else (other key,
    changed, cut, too long, not ours). Never raises for any value."""
    if len(value) > 2 * MAX_ID_CHARS:  # before any work: room for a receiver's folding, no more
        return None
    value = "".join(value.split())  # a receiver may fold a long value; base64url has no spaces
    if len(value) > MAX_ID_CHARS or not value.startswith(VERSION):
        return None
    body = value[len(VERSION):]
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError):  # ValueError: not ASCII
        return None
    if len(raw) < NONCE_BYTES + _SIV_BYTES + _TIME.size:
        return None
    try:
        plain = _cipher(key).decrypt(raw[NONCE_BYTES:], [raw[:NONCE_BYTES]])
    except (InvalidTag, IdKeyError):
        return None
    return plain[_TIME.size:].decode("utf-8", "surrogateescape")


def read_with(keys: Sequence[bytes], value: str) -> str | None:
    """read_id with the current key, then the old one (a rotation)."""
    for key in keys:
        if key and (account := read_id(key, value)) is not None:
            return account
    return None


def stamped(decision: Decision, key: bytes, account: str, headers: Sequence[tuple[str, str]], now: float) -> Decision:
    """An accepted or held message of `account`: its X-Mailflow-ID added, after the headers the
    decision already adds (X-Mailflow-Policy), and every X-Mailflow-ID the client wrote removed,
    so that nobody makes a complaint land on another account by copying a header it received."""
    written = sum(1 for name, _ in headers if name.lower() == "x-mailflow-id")
    try:
        value = make_id(key, account, now)
    except ValueError:  # a name no store could hold either: removing the client's is still owed
        return dataclasses.replace(decision, remove_headers=((HEADER, written),)) if written else decision
    return dataclasses.replace(decision, add_headers=(*decision.add_headers, (HEADER, value)),
                               remove_headers=((HEADER, written),) if written else ())


def with_id_keys(t: Table, settings: _Settings) -> _Settings:
    """[feedback] id_key_file and id_old_key_file (absolute paths; 0600 or 0640 root:mailflow, as
    every secret: suppression.keys.read_key_file) read into FeedbackSettings' id_key and id_old_key."""
    keys: dict[str, bytes] = {}
    for name, field in (("id_key_file", "id_key"), ("id_old_key_file", "id_old_key")):
        path = t.text(name, "")
        if not path:
            continue
        if not os.path.isabs(path):
            t.report(name, f"{path!r} is not an absolute path")
            continue
        try:
            keys[field] = read_key_file(path, "X-Mailflow-ID key")
            check_key(keys[field])
        except (KeyFileError, IdKeyError) as exc:
            t.report(name, str(exc))
            keys.pop(field, None)
    if "id_old_key" in keys and "id_key" not in keys and "id_key_file" not in t.seen:
        t.report("id_old_key_file", "an old key is only read beside a current one (id_key_file)")
    return dataclasses.replace(settings, **keys)
