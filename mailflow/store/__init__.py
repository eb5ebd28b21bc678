"""Stores behind one contract, chosen by URL like `sqlite:///var/lib/mailflow/state.db` or
`redis://127.0.0.1:6379/0`."""

from __future__ import annotations

from mailflow.store.base import DomainTaken, Store, StoreError
from mailflow.urls import STORE_SCHEMES as SCHEMES


def open_store(url: str, timeout_ms: int = 250, refresh_ms: int = 1000, group: str = "",
               wait: tuple[int, int] = (0, 0)) -> Store:
    """Open the store a URL names. Connections are lazy: a down Redis fails per call, not here.
    A SQLite file that cannot be used is a StoreError here, in one line. `group`: see [store];
    `wait`: [store] wait_replicas and wait_timeout_ms (Redis: store/redis_wait)."""
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme == "sqlite":
        from mailflow.store.sqlite import SqliteStore

        return SqliteStore(sqlite_path(url), timeout_ms=timeout_ms, group=group)
    if scheme in ("redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel"):
        from mailflow.store.redis import RedisStore

        return RedisStore(url, timeout_ms=timeout_ms, refresh_ms=refresh_ms, wait_replicas=wait[0],
                          wait_timeout_ms=wait[1])
    if scheme in ("redis+cluster", "rediss+cluster"):
        from mailflow.store.redis_cluster import RedisClusterStore

        return RedisClusterStore(url, timeout_ms=timeout_ms, refresh_ms=refresh_ms, wait_replicas=wait[0],
                                 wait_timeout_ms=wait[1])
    raise ValueError(f"unsupported store URL {url!r} (expected sqlite://, redis://, rediss://, unix://, redis+sentinel:// or redis+cluster://)")


def check_store_path(url: str, group: str = "") -> None:
    """For check-config: StoreError (one line) if a sqlite:// URL's file cannot be used, or given
    its group. Creates nothing, opens no database; other URLs pass."""
    if url.startswith("sqlite://"):
        from mailflow.store.sqlite_file import check_path

        check_path(sqlite_path(url))
        check_store_group(url, group)


def check_store_group(url: str, group: str) -> None:
    """StoreError, naming the file, if this process may not give a sqlite:// URL's files `group`."""
    if url.startswith("sqlite://"):
        from mailflow.store.sqlite_file import group_id

        group_id(group, sqlite_path(url))


def sqlite_path(url: str) -> str:
    """`sqlite:///abs/path.db` is absolute; `sqlite://rel/path.db` is relative to the working directory."""
    path = url[len("sqlite://"):]
    if not path:
        raise ValueError(f"store URL {url!r} names no file")
    return path


__all__ = ["DomainTaken", "Store", "StoreError", "check_store_group", "check_store_path", "open_store", "SCHEMES"]
