"""What a notice says, the same everywhere: the webhook's JSON body (schema version 1), its
signature, the once-per-fleet claim, and the text of e-mails.

Body: {"version": 1, "id": ..., "event": KIND, "account": ..., "detail": {...},
       "at": "2026-11-26T19:04:05Z", "at_unix": 1795720645, "host": "mx1.provider.example"}
Signature: header `X-Mailflow-Signature: sha256=HEX`, HMAC-SHA256 of the raw body with the
shared secret (webhook_secret_file).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from datetime import datetime, timezone

from mailflow.events import (ACCOUNT_HELD, ACCOUNT_RELEASED, GRANT_ENDED, GRANT_GIVEN, LIMIT_NEAR, LIMIT_REFUSED,
                             REPUTATION_LOWERED, REPUTATION_RAISED,
                             Event)

SIGNATURE_HEADER = "X-Mailflow-Signature"
VERSION = 1
# Events several milters may see at once (a limit of the whole fleet) name their window in
# detail["window"]: one claim per (kind, account, window) sends each once; so does a grant's
# expiry (its end). Others are published once by whoever acted (an admin's command, the store's
# atomic trap-hit count).
CLAIM_TTL = 2 * 86400  # longer than any window (a day), short enough to keep the store small


def claim_key(event: Event) -> str | None:
    """The fleet-wide key of this event, or None when it needs no claim."""
    detail = event.detail
    if "window" in detail:
        return f"{event.kind}:{detail.get('period', '')}:{detail['window']}"
    if event.kind == GRANT_ENDED and detail.get("how") == "expired" and "until" in detail:
        return f"{event.kind}:expired:{detail['until']}"  # every milter's grant refresh sees the expiry
    return None


def event_id(event: Event) -> str:
    """Unique per event; the same on every milter for a claimed event, so a receiver can drop the
    duplicates sent while the store was down (and every retry carries it)."""
    key = claim_key(event)
    if key is None:
        return uuid.uuid4().hex
    return hashlib.sha256(f"{event.account}\0{key}".encode("utf-8", "surrogateescape")).hexdigest()[:32]


def iso(at: float) -> str:
    return datetime.fromtimestamp(at, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def body(event: Event, event_id: str, host: str) -> bytes:
    payload = {"version": VERSION, "id": event_id, "event": event.kind, "account": event.account,
               "detail": dict(event.detail), "at": iso(event.at), "at_unix": int(event.at), "host": host}
    # ensure_ascii: an account that is not valid UTF-8 (surrogate escapes) still encodes.
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode("ascii")


def signature(secret: bytes, raw_body: bytes) -> str:
    return "sha256=" + hmac.new(secret, raw_body, hashlib.sha256).hexdigest()


def verify(secret: bytes, raw_body: bytes, header: str) -> bool:
    """What a receiver does (README has it standalone): compare in constant time."""
    return hmac.compare_digest(signature(secret, raw_body), header)


def summary(event: Event) -> str:
    """One line for people: e-mail subjects and the template's $summary."""
    d = event.detail
    monitor = " (monitor: not enforced)" if d.get("mode") == "monitor" else ""
    texts = {
        LIMIT_REFUSED: f"reached its limit {d.get('limit', '')}; more mail is deferred",
        LIMIT_NEAR: f"used {d.get('percent', '')}% of its limit {d.get('limit', '')}",
        ACCOUNT_HELD: f"is held: {d.get('reason', '')}",
        ACCOUNT_RELEASED: "is released",
        GRANT_GIVEN: (f"{'grant extended' if d.get('how') == 'extended' else 'was granted'} "
                      f"{d.get('limit', d.get('limits', ''))} until {shown('until', d.get('until', ''))}"),
        GRANT_ENDED: f"grant of {d.get('limit', d.get('limits', ''))} ended ({d.get('how', '')})",
        REPUTATION_RAISED: f"moved up to {d.get('state', '')}{monitor}: {d.get('why', '')}",
        REPUTATION_LOWERED: f"moved down to {d.get('state', '')}{monitor}: {d.get('why', '')}",
    }
    return f"account {event.account} {texts.get(event.kind, event.kind)}".rstrip()


TIME_FIELDS = ("window", "until")  # unix seconds in the webhook's JSON; ISO 8601 UTC for people


def shown(key: str, value: object) -> str:
    """A detail value as people read it (e-mails, templates): times in ISO 8601 UTC."""
    if key in TIME_FIELDS and isinstance(value, (int, float)) and not isinstance(value, bool):
        return iso(value)
    return str(value)


def details(event: Event) -> str:
    return "".join(f"{key}: {shown(key, value)}\n" for key, value in sorted(event.detail.items()))
