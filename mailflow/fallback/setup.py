"""Whether a milter gets a local fallback: `on_error = "local"` on a Redis store. An SQLite store
is already local to the host: nothing to fall back from, so "local" there answers as "tempfail".
Redis's modules are imported only when a fallback is made: the CLI and SQLite never load them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from mailflow.config import Config
from mailflow.ratelimit.limits import Limit
from mailflow.store.base import Store
from mailflow.store.health import StoreHealth
from mailflow.store.sqlite_file import check_path

if TYPE_CHECKING:
    from mailflow.fallback.local import LocalFallback


def uses_fallback(config: Config) -> bool:
    return config.milter.on_error == "local" and config.store.url.startswith(("redis", "rediss", "unix"))


def open_fallback(config: Config, store: Store, limits_for: Callable[[str], Sequence[Limit]],
                  health: StoreHealth | None = None) -> LocalFallback | None:
    if config.milter.on_error != "local" or config.store.url.startswith("sqlite"):
        return None
    from mailflow.fallback.local import LocalFallback
    from mailflow.store.redis import RedisStore

    if not isinstance(store, RedisStore):
        return None
    return LocalFallback(store, config.store.fallback_path, config.store.fleet_size, limits_for,
                         config.store.timeout_ms, health=health)


def check_fallback_path(config: Config) -> None:
    """For check-config: StoreError (one line) if the fallback file cannot be used."""
    if uses_fallback(config):
        check_path(config.store.fallback_path)
