"""A strict reader of one TOML table that remembers where it is, for errors that name the key.

A bad value is reported (into a list every table of one file shares) and read as its default,
so one pass finds every error in the file: `check-config` lists them all, not the first.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any


class ConfigError(ValueError):
    """Config problems; each message names the file and key. `errors` holds them one by one."""

    def __init__(self, errors: str | Iterable[str]) -> None:
        self.errors = [errors] if isinstance(errors, str) else list(errors)
        super().__init__("\n".join(self.errors))

    def prefixed(self, prefix: str) -> ConfigError:
        return ConfigError(f"{prefix}: {error}" for error in self.errors)


class Table:
    def __init__(self, data: Any, path: str, errors: list[str] | None = None) -> None:
        self.errors: list[str] = [] if errors is None else errors
        self.path = path
        self.seen: set[str] = set()
        if not isinstance(data, Mapping):
            self.errors.append(f"{path}: expected a table")
            data = {}
        self.data: Mapping[str, Any] = data

    def child_path(self, key: str) -> str:
        quoted = key if re.fullmatch(r"[A-Za-z0-9_-]+(\[\d+\])?", key) else f'"{key}"'
        return f"{self.path}.{quoted}" if self.path else quoted

    def child(self, data: Any, key: str) -> Table:
        """A table nested in this one that is not under a plain key (an entry of a list)."""
        return Table(data, self.child_path(key), self.errors)

    def report(self, key: str, message: str) -> None:
        self.errors.append(f"{self.child_path(key)}: {message}")

    def check(self) -> None:
        """Raise every error reported so far in this file."""
        if self.errors:
            raise ConfigError(self.errors)

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
            self.report(key, f"expected {what}, got {value!r}")
            return default
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
            self.report(key, f"must be at least {minimum}, got {value}")
            return default
        return value

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.text(key, default)
        if value not in choices:
            self.report(key, f"{value!r} is not one of {', '.join(choices)}")
            return default
        return value

    def texts(self, key: str, default: list[str]) -> list[str]:
        value = self._typed(key, default, list, "a list of strings")
        for i, item in enumerate(value):
            if not isinstance(item, str):
                self.report(f"{key}[{i}]", f"expected a string, got {item!r}")
        return [item for item in value if isinstance(item, str)]

    def table(self, key: str) -> Table:
        value = self._typed(key, {}, dict, "a table")
        return Table(value, self.child_path(key), self.errors)

    def finish(self) -> None:
        for key in self.data:
            if key not in self.seen:
                self.report(key, "unknown key")
