"""Claims on Redis: SET NX with an expiry, one key per account and claim. The account is the
key's hash tag, as for every per-account key (one Cluster slot per account)."""

from __future__ import annotations

from typing import Any

from mailflow.store.keys import tag


def claim_key(account: str, key: str) -> str:
    return f"mailflow:claim:{{{tag(account)}}}:{key}"


def claim(client: Any, account: str, key: str, ttl: int) -> bool:
    """True if this call set the claim: no other caller did in the last `ttl` seconds."""
    return bool(client.set(claim_key(account, key), "1", nx=True, ex=max(1, ttl)))
