"""check-config's look at the store's key fingerprint: read only, never creating or changing
anything (no database file, no -wal/-shm, no Redis key), so a check as root leaves no file the
service user cannot open. `run` and the admin commands do the full check (keys.check_store_key)."""

from __future__ import annotations

import os
import sqlite3
from urllib.parse import quote

from mailflow.store import sqlite_path
from mailflow.suppression.keys import FINGERPRINT_STATE, KeyMismatch, fingerprint, mismatch_message


def compare_key_with_store(url: str, secret: bytes, timeout_ms: int) -> str:
    """What check-config says of the key: it matches, or why it was not compared. KeyMismatch when
    the store holds another key's fingerprint."""
    mine = fingerprint(secret)
    stored, why_not = _stored_fingerprint(url, timeout_ms)
    if why_not:
        return f"suppression key {mine[:12]} not compared with the store: {why_not}"
    if stored is None:
        return f"suppression key {mine[:12]}: the store has no fingerprint yet; the first run or suppress adopts it"
    if stored != mine:
        raise KeyMismatch(mismatch_message(mine, stored))
    return f"suppression key {mine[:12]} matches the store's fingerprint"


def _stored_fingerprint(url: str, timeout_ms: int) -> tuple[str | None, str]:
    """(the fingerprint or None, "") or (None, why it could not be read without changing anything)."""
    if url.startswith("sqlite://"):
        return _sqlite_state(sqlite_path(url))
    if "+sentinel://" in url.partition("?")[0]:  # finding the master writes its epoch (store/redis_sentinel)
        return None, "a Sentinel store is compared when the milter or an admin command opens it"
    if "+cluster://" in url.partition("?")[0]:
        return _cluster_state(url, timeout_ms)
    import redis

    client = redis.Redis.from_url(url, socket_timeout=timeout_ms / 1000, socket_connect_timeout=timeout_ms / 1000,
                                  decode_responses=True)
    try:
        value = client.get(f"mailflow:{FINGERPRINT_STATE}")
    except redis.RedisError as exc:
        return None, f"Redis did not answer ({type(exc).__name__})"
    finally:
        client.close()
    return (str(value) if value is not None else None), ""


def _cluster_state(url: str, timeout_ms: int) -> tuple[str | None, str]:
    """The slot map and one GET: nothing is written."""
    import redis
    from redis.exceptions import RedisClusterException

    from mailflow.store.redis_cluster import connect_cluster

    try:
        client = connect_cluster(url, timeout_ms)
        try:
            value = client.get(f"mailflow:{FINGERPRINT_STATE}")
        finally:
            client.close()
    except (RedisClusterException, redis.RedisError, OSError) as exc:
        from mailflow.store.redis_errors import describe

        return None, f"the Redis Cluster did not answer ({describe(exc, timeout_ms)})"
    return (str(value) if value is not None else None), ""


def _sqlite_state(path: str) -> tuple[str | None, str]:
    if not os.path.exists(path):
        return None, "the database does not exist yet (the first run creates it and adopts this key)"
    wal, shm = os.path.exists(path + "-wal"), os.path.exists(path + "-shm")
    if wal and not shm:
        return None, "the database has a -wal file but no -shm; reading it would create one"
    # No -wal: the file is complete and `immutable` reads it with no lock and no side file. With
    # one (a milter has it open), read-only through the -shm that exists.
    mode = "mode=ro" if wal else "mode=ro&immutable=1"
    try:
        conn = sqlite3.connect(f"file:{quote(os.path.abspath(path))}?{mode}", uri=True, timeout=1)
        try:
            row = conn.execute("SELECT value FROM state WHERE key = ?", (FINGERPRINT_STATE,)).fetchone()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return None, f"the database cannot be read ({exc})"
    return (str(row[0]) if row else None), ""
