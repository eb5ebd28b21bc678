"""Where the suppression lists and the held flag live in Redis: one layout per deployment.

SINGLE is today's single-node layout, name for name (an upgrade keeps every CAN-SPAM record where
it is). CLUSTER puts everything the milter reads for one message into the account's slot, and
spreads the global list over GLOBAL_SHARDS hashes so that no master holds the whole of it:

  key                                  single node                  Cluster
  account list                         mailflow:sup:account:NAME    mailflow:sup:{NAME}:account
  held flag (read at RCPT)             field NAME of mailflow:held  mailflow:{NAME}:held (a string)
  global list, entry E                 mailflow:sup:global          mailflow:sup:global:{g:N}, N = crc32(E) % shards

With CLUSTER the RCPT lookup of an account list, the held flag and the level peek are one
pipeline to the account's master; a global entry's shard is known from its key, so a lookup of
both lists is two pipelines sent at once (the replica answers most recipients without either).
Used by the Cluster store; redis.py's single-node names are these (tests/unit/test_key_layout).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

GLOBAL = "global"
ACCOUNT_SCOPE = "account:"
GLOBAL_SHARDS = 256  # 10^6 entries (245 MiB) in 256 hashes of ~1 MiB spread over every master
HELD_KEY = "mailflow:held"


def tag(account: str) -> str:
    """The account as written between a key's braces (its hash tag). Redis hashes a key on the text
    between its first `{` and the next `}`, or on the whole key if that is empty: an account named
    "}x" (or "") would spread one message's keys over several slots (every debit a CROSSSLOT
    error, so on_error decides for it), "a}b" would take "a"'s tag. Names with `}` or `%`, and "",
    are percent-encoded behind a `%`; every other name is its own tag (no existing key moves), and
    no two accounts share one."""
    if account and "}" not in account and "%" not in account:
        return account
    return "%" + account.replace("%", "%25").replace("}", "%7D")


def untag(text: str) -> str:
    """The account whose tag is `text`."""
    return unquote(text[1:]) if text.startswith("%") else text


@dataclass(frozen=True)
class KeyLayout:
    sharded: bool

    def account_list(self, account: str) -> str:
        return f"mailflow:sup:{{{tag(account)}}}:account" if self.sharded else f"mailflow:sup:{ACCOUNT_SCOPE}{account}"

    def global_shard(self, entry_key: str) -> str:
        if not self.sharded:
            return f"mailflow:sup:{GLOBAL}"
        return f"mailflow:sup:{GLOBAL}:{{g:{zlib.crc32(entry_key.encode()) % GLOBAL_SHARDS}}}"

    def global_shards(self) -> list[str]:
        """Every hash of the global list (for the replica's refresh and the admin's listing)."""
        if not self.sharded:
            return [f"mailflow:sup:{GLOBAL}"]
        return [f"mailflow:sup:{GLOBAL}:{{g:{n}}}" for n in range(GLOBAL_SHARDS)]

    def held_read(self, account: str) -> list[Any]:
        """The command whose reply is the held flag ("since|reason") or None."""
        return ["GET", f"mailflow:{{{tag(account)}}}:held"] if self.sharded else ["HGET", HELD_KEY, account]

    def global_lookup(self, keys: list[str]) -> dict[str, list[str]]:
        """The global list's hashes to HMGET, each with the entry keys it may hold."""
        shards: dict[str, list[str]] = {}
        for key in keys:
            shards.setdefault(self.global_shard(key), []).append(key)
        return shards


SINGLE = KeyLayout(sharded=False)
CLUSTER = KeyLayout(sharded=True)
