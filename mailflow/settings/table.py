"""A strict reader of one TOML table that remembers where it is, for errors that name the key."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any


class ConfigError(ValueError):
    """A config problem; the message names the file and key."""


class Table:
    def __init__(self, data: Mapping[str, Any], path: str) -> None:
        if not isinstance(data, Mapping):
            raise ConfigError(f"{path}: expected a table")
        self.data = data
        self.path = path
        self.seen: set[str] = set()

    def child_path(self, key: str) -> str:
        quoted = key if re.fullmatch(r"[A-Za-z0-9_-]+(\[\d+\])?", key) else f'"{key}"'
        return f"{self.path}.{quoted}" if self.path else quoted

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.child_path(key)}: {message}")

    def __contains__(self, key: str) -> bool:
        return key in self.data

    def keys(self) -> Iterator[str]:
        return iter(list(self.data.keys()))

    def raw(self, key: str) -> Any:
        self.seen.add(key)
        return self.data.get(key)

    def _typed(self, key: str, default: Any, kind: type | tuple[type, ...], what: str) -> Any:
        if key not in self.data:
            return default
        value = self.raw(key)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.error(key, f"expected {what}, got {value!r}")
        return value

    def text(self, key: str, default: str) -> str:
        value: str = self._typed(key, default, str, "a string")
        return value

    def flag(self, key: str, default: bool) -> bool:
        value: bool = self._typed(key, default, bool, "true or false")
        return value

    def integer(self, key: str, default: int | None, minimum: int = 0) -> Any:
        value = self._typed(key, default, int, "a whole number")
        if value is not None and value < minimum:
            raise self.error(key, f"must be at least {minimum}, got {value}")
        return value

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.text(key, default)
        if value not in choices:
            raise self.error(key, f"{value!r} is not one of {', '.join(choices)}")
        return value

    def texts(self, key: str, default: list[str]) -> list[str]:
        value = self._typed(key, default, list, "a list of strings")
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise self.error(f"{key}[{i}]", f"expected a string, got {item!r}")
        return list(value)

    def table(self, key: str) -> Table:
        value = self._typed(key, {}, dict, "a table")
        return Table(value, self.child_path(key))

    def finish(self) -> None:
        unknown = [key for key in self.data if key not in self.seen]
        if unknown:
            raise self.error(unknown[0], "unknown key")

