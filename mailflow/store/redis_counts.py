"""Redis side of the per-account counts (mailflow/sent.py) and of the views that read them.

Every milter of a fleet adds into the same keys, so the views are fleet-wide:
  mailflow:counts:{ACCOUNT}:HOUR   hash, field -> count (sent, rcpts, held, refused:REASON, src:SOURCE)
  mailflow:active:HOUR             sorted set, account -> messages sent that hour: the index of the
                                   accounts with any count that hour, so no view scans the keyspace
Both expire COUNTS_TTL after their last write (HOUR is unix time // 3600). The `{ACCOUNT}` hash
tag keeps an account's counts in its buckets' Cluster slot; no command spans two accounts' keys.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

import redis

from mailflow.ratelimit.bucket import DebitResult
from mailflow.ratelimit.limits import Limit
from mailflow.store.keys import tag
from mailflow.views.fields import SENT

COUNTS_TTL = 50 * 3600  # the views read the last 24 hours; yesterday's stay readable a day more
BATCH = 1000  # commands per pipeline when reading many accounts


def counts_key(account: str, hour: int) -> str:
    return f"mailflow:counts:{{{tag(account)}}}:{hour}"


def active_key(hour: int) -> str:
    return f"mailflow:active:{hour}"


class RedisCounts:
    """Mixed into RedisStore, whose client, script and error mapping it uses."""

    client: redis.Redis
    _debit_script: Any

    def _errors(self) -> AbstractContextManager[None]:
        raise NotImplementedError

    @staticmethod
    def _debit_call(account: str, limits: Sequence[Limit], cost: float, commit: bool) -> tuple[list[str], list[Any]]:
        raise NotImplementedError

    @staticmethod
    def _debit_result(reply: Sequence[Any]) -> DebitResult:
        raise NotImplementedError

    def add_counts(self, counts: Mapping[tuple[int, str, str], int]) -> None:
        pipe = self.client.pipeline(transaction=False)
        sent: dict[tuple[int, str], int] = defaultdict(int)
        for (hour, account, field), n in counts.items():
            pipe.hincrby(counts_key(account, hour), field, n)
            sent[(hour, account)] += n if field == SENT else 0
        for (hour, account), n in sent.items():
            pipe.expire(counts_key(account, hour), COUNTS_TTL)
            pipe.zincrby(active_key(hour), n, account)  # 0 still lists an account that only got refusals
        for hour in {hour for hour, _ in sent}:
            pipe.expire(active_key(hour), COUNTS_TTL)
        with self._errors():
            pipe.execute()

    def active_accounts(self, hours: Sequence[int]) -> dict[str, int]:
        pipe = self.client.pipeline(transaction=False)
        for hour in hours:
            pipe.zrange(active_key(hour), 0, -1, withscores=True)
        totals: dict[str, int] = defaultdict(int)
        with self._errors():
            for ranked in pipe.execute():
                for account, score in ranked:
                    totals[str(account)] += int(score)
        return dict(totals)

    def account_counts(self, accounts: Sequence[str], hours: Sequence[int]) -> dict[str, dict[str, int]]:
        pairs = [(account, hour) for account in accounts for hour in hours]
        totals: dict[str, dict[str, int]] = {}
        with self._errors():
            for start in range(0, len(pairs), BATCH):
                pipe = self.client.pipeline(transaction=False)
                for account, hour in pairs[start:start + BATCH]:
                    pipe.hgetall(counts_key(account, hour))
                for (account, _), fields in zip(pairs[start:start + BATCH], pipe.execute()):
                    for field, n in fields.items():
                        mine = totals.setdefault(account, {})
                        mine[str(field)] = mine.get(str(field), 0) + int(n)
        return totals

    def levels_of(self, accounts: Sequence[tuple[str, Sequence[Limit]]]) -> list[tuple[float, ...]]:
        levels: list[tuple[float, ...]] = []
        with self._errors():
            for start in range(0, len(accounts), BATCH):
                pipe = self.client.pipeline(transaction=False)
                for account, limits in accounts[start:start + BATCH]:
                    keys, args = self._debit_call(account, limits, 0, False)
                    self._debit_script(keys=keys, args=args, client=pipe)
                levels += [self._debit_result(reply).levels for reply in pipe.execute()]
        return levels
