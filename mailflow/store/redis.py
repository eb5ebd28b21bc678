"""Redis store: one count shared by a fleet of MTAs.

Every debit is one EVALSHA of lua/debit.lua (one round trip), numbers in ARGV, time from
Redis TIME. Keys are `mailflow:rl:{ACCOUNT}:PERIOD`: the `{ACCOUNT}` hash tag puts all keys of
one account in one Cluster slot, which a multi-key script needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.resources import files

import redis

from mailflow.ratelimit.bucket import DebitResult
from mailflow.ratelimit.limits import PERIOD_SECONDS, Limit
from mailflow.store.base import DomainTaken, StoreError

KEY_PREFIX = "mailflow:rl:"
# One hash, domain -> account: the milter reads it whole (cached), admins change it rarely.
DOMAINS_KEY = "mailflow:domains"


def bucket_key(account: str, period: str) -> str:
    return f"{KEY_PREFIX}{{{account}}}:{period}"


class RedisStore:
    def __init__(self, url: str, timeout_ms: int = 250) -> None:
        timeout = timeout_ms / 1000
        self.client = redis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry_on_timeout=False,
            decode_responses=True,
            # Fail fast; the milter's on_error policy decides, and the pool reconnects by itself.
            retry=None,
        )
        script = files("mailflow.store").joinpath("lua/debit.lua").read_text(encoding="utf-8")
        self._debit_script = self.client.register_script(script)
        self._remove_domain_script = self.client.register_script(
            files("mailflow.store").joinpath("lua/remove_domain.lua").read_text(encoding="utf-8")
        )

    def _run(self, account: str, limits: Sequence[Limit], cost: float, commit: bool) -> DebitResult:
        keys = [bucket_key(account, limit.period) for limit in limits]
        args: list[float | int | str] = [repr(float(cost)), 1 if commit else 0]
        for limit in limits:
            args += [limit.capacity, repr(limit.rate)]
        try:
            reply = self._debit_script(keys=keys, args=args)
        except redis.RedisError as exc:
            raise StoreError(f"redis: {exc}") from exc
        return DebitResult(bool(int(reply[0])), tuple(float(level) for level in reply[1:]))

    def levels(self, account: str, limits: Sequence[Limit]) -> tuple[float, ...]:
        return self._run(account, limits, 0, commit=False).levels

    def debit(self, account: str, limits: Sequence[Limit], cost: float) -> DebitResult:
        return self._run(account, limits, cost, commit=True)

    def reset(self, account: str) -> None:
        try:
            self.client.delete(*(bucket_key(account, period) for period in PERIOD_SECONDS))
        except redis.RedisError as exc:
            raise StoreError(f"redis: {exc}") from exc

    def domains(self) -> dict[str, str]:
        try:
            raw = self.client.hgetall(DOMAINS_KEY)
        except redis.RedisError as exc:
            raise StoreError(f"redis: {exc}") from exc
        return {str(domain): str(account) for domain, account in raw.items()}

    def add_domain(self, account: str, domain: str) -> None:
        try:
            if not self.client.hsetnx(DOMAINS_KEY, domain, account):
                owner = str(self.client.hget(DOMAINS_KEY, domain) or "")
                if owner != account:
                    raise DomainTaken(f"{domain} belongs to account {owner}")
        except redis.RedisError as exc:
            raise StoreError(f"redis: {exc}") from exc

    def remove_domain(self, account: str, domain: str) -> bool:
        # Delete only if this account owns it: check and delete in one script.
        try:
            return bool(self._remove_domain_script(keys=[DOMAINS_KEY], args=[domain, account]))
        except redis.RedisError as exc:
            raise StoreError(f"redis: {exc}") from exc

    def ping(self) -> None:
        try:
            self.client.ping()
        except redis.RedisError as exc:
            raise StoreError(f"redis: {exc}") from exc

    def close(self) -> None:
        self.client.close()
