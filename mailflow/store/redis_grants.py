"""Grants and the audit log in Redis (a mixin of RedisStore).

Grants: one hash, account -> grant, read whole by each milter's background refresh (never on the
hot path), like the domains and held hashes. The audit log: one list, newest first, trimmed to
its bound in the same MULTI as each append. Neither is read per message, so neither is per account.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from importlib.resources import files
from typing import Any

import redis

GRANTS_KEY = "mailflow:grants"
AUDIT_KEY = "mailflow:audit"


class RedisGrantsAudit:
    client: redis.Redis

    def _errors(self) -> AbstractContextManager[None]:
        raise NotImplementedError

    def _swap_grant_script(self) -> Any:
        script = getattr(self, "_swap_grant", None)
        if script is None:
            text = files("mailflow.store").joinpath("lua/swap_grant.lua").read_text(encoding="utf-8")
            script = self._swap_grant = self.client.register_script(text)
        return script

    def grants(self) -> dict[str, str]:
        with self._errors():
            return {str(k): str(v) for k, v in self.client.hgetall(GRANTS_KEY).items()}

    def swap_grant(self, account: str, expected: str | None, new: str | None) -> bool:
        with self._errors():
            return bool(self._swap_grant_script()(keys=[GRANTS_KEY], args=[account, expected or "", new or ""]))

    def add_audit(self, value: str, keep: int) -> None:
        with self._errors():
            pipe = self.client.pipeline(transaction=True)
            pipe.lpush(AUDIT_KEY, value)
            pipe.ltrim(AUDIT_KEY, 0, keep - 1)
            pipe.execute()

    def audit_entries(self, count: int) -> list[str]:
        with self._errors():
            return [str(v) for v in self.client.lrange(AUDIT_KEY, 0, count - 1)]
