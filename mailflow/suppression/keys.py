"""Keyed lookup keys and sealed addresses, so a dump of the store does not leak the lists.

Every entry is stored under HMAC-SHA256(secret, "KIND:VALUE") (first 128 bits, hex); its
address is kept only sealed with AES-GCM under a key derived from the same secret, for
`suppress list|export`. Without the secret a dump shows neither addresses nor what they hash to.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import stat
from collections.abc import Iterable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from mailflow.store.base import Store, StoreError

log = logging.getLogger("mailflow")

MIN_SECRET_BYTES = 16
MAX_KEY_FILE_BYTES = 4096
SEALED_WITH_ANOTHER_KEY = "(sealed with another key)"
FINGERPRINT_STATE = "suppression:key-fingerprint"
# Written by `suppress rekey` (suppression/rekey.py): "STEP OLD NEW", the two keys' fingerprints.
REKEY_STATE = "suppression:rekey"


def wire_bytes(text: str) -> bytes:
    """The bytes an address arrived as: the adapter carries invalid UTF-8 as surrogate escapes,
    so an address is keyed by its bytes, valid UTF-8 or not. Never raises: a lone surrogate the
    adapter cannot make (only a direct caller can) gets its own UTF-8 form instead."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


class Keyring:
    def __init__(self, secret: bytes) -> None:
        if len(secret) < MIN_SECRET_BYTES:
            raise ValueError(f"the suppression key must be at least {MIN_SECRET_BYTES} bytes")
        self._mac = _PreparedHmac(hmac.digest(secret, b"mailflow lookup", "sha256"))
        self._seal = AESGCM(hmac.digest(secret, b"mailflow seal", "sha256"))

    def lookup_key(self, kind: str, value: str) -> str:
        return self._mac.digest(wire_bytes(f"{kind}:{value}"))[:16].hex()

    def seal(self, text: str) -> str:
        nonce = os.urandom(12)
        return base64.b64encode(nonce + self._seal.encrypt(nonce, text.encode(), None)).decode("ascii")

    def unseal(self, sealed: str) -> str:
        try:
            raw = base64.b64decode(sealed)
            return self._seal.decrypt(raw[:12], raw[12:], None).decode()
        except (ValueError, InvalidTag):
            return SEALED_WITH_ANOTHER_KEY


class _PreparedHmac:
    """HMAC-SHA256 (RFC 2104) with the keyed inner and outer states computed once: every RCPT
    makes four of these. OpenSSL's one-shot HMAC looks the algorithm up and re-derives the key
    each time: about 4 µs against under 1 µs here, and inside a busy milter (measured through
    Postfix) 18 µs against 2. Same output as hmac.digest(key, data, "sha256")."""

    _BLOCK = 64  # SHA-256 block size

    def __init__(self, key: bytes) -> None:
        key = key if len(key) <= self._BLOCK else hashlib.sha256(key).digest()
        key = key.ljust(self._BLOCK, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))

    def digest(self, data: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(data)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


def fingerprint(secret: bytes) -> str:
    """Safe to store and show: tells two keys apart without revealing them (keyed, so a
    fingerprint cannot be checked against guessed keys faster than HMAC allows)."""
    return hmac.digest(secret, b"mailflow suppression key fingerprint v1", "sha256").hex()


class KeyFileError(ValueError):
    """The key file cannot be used; the message names the file and what to do."""


# Refused: any permission for others, and group write. Group read only on a file root owns: that
# is how a service user reads a key root administers (0640 root:mailflow, as OpenDKIM's
# RequireSafeKeys allows); on a file the user owns itself, group read is exposure and nothing else.
_REFUSED_BITS = ((0o004, "readable by others"), (0o002, "writable by others"), (0o001, "executable by others"),
                 (0o020, "writable by group"))


def read_key_file(path: str, what: str = "suppression key") -> bytes:
    """A secret (the suppression key, an SMTP password) from a file, refused (like OpenSSH) when
    others could read or change it. `what` names it in errors."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as exc:
        raise KeyFileError(f"{what} {path}: {exc.strerror}") from None
    info = os.fstat(fd)  # of the file opened, not of a path swapped since
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise KeyFileError(f"{what} {path} is not a regular file")
    with os.fdopen(fd, "rb") as fh:
        mode = stat.S_IMODE(info.st_mode)
        why = [text for bit, text in _REFUSED_BITS if mode & bit]
        # Only the owner wrong: the mode is fine, so say chown, not a chmod to what it already is.
        fix = "chmod 0640 (root:mailflow) or 0600" if why else \
            "chown root:mailflow (group read needs a file root owns), or chmod 0600"
        if mode & 0o040 and info.st_uid != 0:
            why.insert(0, f"readable by group of a key root does not own (owner uid {info.st_uid})")
        if why:
            raise KeyFileError(f"{what} {path} is mode {mode:04o}: {', '.join(why)}; {fix}")
        secret = fh.read(MAX_KEY_FILE_BYTES + 1)
    if len(secret) > MAX_KEY_FILE_BYTES:
        raise KeyFileError(f"{what} {path}: longer than {MAX_KEY_FILE_BYTES} bytes; not a key file")
    return secret.strip()


class KeyMismatch(Exception):
    """The configured key is not the one the store's lists were made with."""


def check_store_key(store: Store, secret: bytes, scopes: Iterable[str]) -> None:
    """Refuse a key other than the one the store's lists were made with: under another key every
    lookup misses and every list silently reads "not suppressed". A store without a fingerprint
    adopts this key, unless the first entry of one of `scopes` (lists made before fingerprints
    were kept) cannot be opened with it. The fingerprint is refreshed on every check (Redis
    keeps state strings for 30 days); a store refusing that write (full, read-only) is no reason
    to refuse the key. StoreError when the store cannot be read, or cannot record a first key."""
    mine = fingerprint(secret)
    stored = store.state_get(FINGERPRINT_STATE)
    if stored is None:
        keyring = Keyring(secret)
        for scope in scopes:
            entries = store.iter_suppressions(scope)
            try:
                first = next(iter(entries), None)
            finally:
                getattr(entries, "close", lambda: None)()  # give a SQLite connection back at once
            if first is not None and keyring.unseal(first.sealed) == SEALED_WITH_ANOTHER_KEY:
                raise KeyMismatch(f"the suppression key differs from the one the {scope} list was made with "
                                  f"(its entries cannot be opened with key {mine[:12]}); restore the old key, "
                                  "or re-key the lists to this one with the old key in the config "
                                  "(mailflow suppress rekey)")
        if store.state_swap(FINGERPRINT_STATE, None, mine):
            return
        stored = store.state_get(FINGERPRINT_STATE)  # another process adopted a key first
    if stored == mine:
        try:
            store.state_swap(FINGERPRINT_STATE, mine, mine)
        except StoreError as exc:  # full (OOM) or read-only: the key is right; the refresh waits for the next check
            log.warning("suppression key fingerprint not refreshed: %s", exc)
        return
    rekey = (store.state_get(REKEY_STATE) or "").split()
    if len(rekey) == 3 and rekey[1:] == [mine, stored] and rekey[0] != "copying":
        raise KeyMismatch(f"the suppression lists were re-keyed (mailflow suppress rekey) from this key {mine[:12]} to "
                          f"{(stored or '?')[:12]}: install the new key file on this host, then restart")
    if len(rekey) == 3 and rekey[1:] == [stored, mine] and rekey[0] == "copying":
        raise KeyMismatch(f"the suppression lists are being re-keyed to this key {mine[:12]} (mailflow suppress rekey); "
                          "it is accepted once that run has finished")
    raise KeyMismatch(mismatch_message(mine, stored))


def mismatch_message(mine: str, stored: str | None) -> str:
    return (f"the suppression key differs from the one this store's lists were made with "
            f"(fingerprint {mine[:12]} vs {(stored or '?')[:12]}); restore the old key, "
            "or re-key the lists to this one with the old key in the config (mailflow suppress rekey)")
