"""Held messages in Redis (see mailflow/held.py): one sorted set per account, member = the
record's JSON, score = when it was held; `mailflow:heldmail:{ACCOUNT}` (the account's hash tag,
as its buckets). A set of the accounts that have any lets `mailflow held` list them all without
a SCAN. Only the milter's background flush and admin commands touch these keys, never a message.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import AbstractContextManager

import redis

from mailflow.held import HELD_PER_ACCOUNT, HELD_TTL, HeldMessage, by_account
from mailflow.store.keys import tag

HELD_ACCOUNTS_KEY = "mailflow:heldmail:accounts"


def held_mail_key(account: str) -> str:
    return f"mailflow:heldmail:{{{tag(account)}}}"


class RedisHeldMail:
    """Mixed into RedisStore, which provides `client` and `_errors`."""

    client: redis.Redis

    def _errors(self) -> AbstractContextManager[None]:
        raise NotImplementedError

    def add_held_messages(self, records: Sequence[HeldMessage]) -> None:
        cutoff = time.time() - HELD_TTL
        pipe = self.client.pipeline(transaction=False)
        for account, held in by_account(records).items():
            key = held_mail_key(account)
            pipe.zadd(key, {record.value(): record.at for record in held})
            pipe.zremrangebyscore(key, "-inf", cutoff)
            pipe.zremrangebyrank(key, 0, -(HELD_PER_ACCOUNT + 1))
            pipe.expire(key, HELD_TTL)
            pipe.sadd(HELD_ACCOUNTS_KEY, account)
        with self._errors():
            pipe.execute()

    def held_messages(self, account: str | None = None) -> list[HeldMessage]:
        with self._errors():
            accounts = [account] if account is not None else sorted(map(str, self.client.smembers(HELD_ACCOUNTS_KEY)))
            pipe = self.client.pipeline(transaction=False)
            for name in accounts:
                pipe.zrangebyscore(held_mail_key(name), time.time() - HELD_TTL, "+inf")
            found = pipe.execute()
            gone = [name for name, values in zip(accounts, found) if not values]
            if gone and account is None:  # their records expired: forget them in the list too
                self.client.srem(HELD_ACCOUNTS_KEY, *gone)
        records = [HeldMessage.from_value(name, str(value)) for name, values in zip(accounts, found) for value in values]
        return sorted(records, key=lambda record: (record.at, record.account))

    def forget_held_messages(self, account: str, queue_ids: Sequence[str]) -> int:
        wanted = set(queue_ids)
        with self._errors():
            values = [str(value) for value in self.client.zrange(held_mail_key(account), 0, -1)]
            doomed = [value for value in values if HeldMessage.from_value(account, value).queue_id in wanted]
            return int(self.client.zrem(held_mail_key(account), *doomed)) if doomed else 0
