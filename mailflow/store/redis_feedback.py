"""Redis side of the delivery feedback and the reputation standings (a mixin of RedisStore; the
Cluster store sends the scripts its own way, see RedisClusterStore._send_feedback).

  mailflow:fb:{ACCOUNT}:HOUR    hash, field -> n (feedback/model.py FIELDS)
  mailflow:fbu:{ACCOUNT}:HOUR   HyperLogLog of recipient digests: PFCOUNT of several hours (and of
                                what every host of the fleet added) merges them, 0.81 % error;
                                kept RECIPIENT_HOURS after its hour (the ladder reads two)
  mailflow:fbseq:{ACCOUNT}      hash, source -> the last seq the account took from it (the guard);
                                a one-off source (a complaint) has its own: mailflow:fbseq:{ACCOUNT}:once:…
  mailflow:fbactive:HOUR        set of the accounts with feedback that hour: the index
                                feedback_accounts reads, so nothing scans the keyspace
  mailflow:reputation           hash, account -> standing (reputation/model.py): read whole by
                                every milter's refresh, like the grants, so not per account
The hour keys expire FEEDBACK_HOURS after their hour ends (EXPIREAT), the guard FEEDBACK_HOURS
after its last write; standings are kept until the ladder removes them. lua/feedback.lua writes an
account's guard, counts and digests in one script (its keys share the `{ACCOUNT}` hash tag: one
Cluster slot). The index is written before the scripts: a batch cut short may list an account
whose counts did not arrive (read as none), never hide one whose counts did.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

import redis

from mailflow.store.base import FEEDBACK_HOURS, ONE_OFF_SOURCE, RECIPIENT_HOURS, StoreError
from mailflow.store.keys import tag

REPUTATION_KEY = "mailflow:reputation"
BATCH = 1000  # accounts per pipeline (one round trip each)...
# ...and script arguments, about 25 ms of Redis's time: a batch answers well within the store's
# timeout (a reply that does not is a StoreError; the follower's retry then skips the accounts
# that took it, by their guard)
BATCH_ARGS = 20_000

@dataclass
class Call:
    """One account's lua/feedback.lua call, and the hours it writes."""

    keys: list[str]
    args: list[Any]
    hours: list[int]


def feedback_key(account: str, hour: int) -> str:
    return f"mailflow:fb:{{{tag(account)}}}:{hour}"


def recipients_key(account: str, hour: int) -> str:
    return f"mailflow:fbu:{{{tag(account)}}}:{hour}"


def guard_key(account: str, source: str | None = None) -> str:
    """The hash of the account's last seq per source; a one-off source's own (ONE_OFF_SOURCE)."""
    if source is not None and source.startswith(ONE_OFF_SOURCE):
        return f"mailflow:fbseq:{{{tag(account)}}}:{source[:100]}"
    return f"mailflow:fbseq:{{{tag(account)}}}"


def feedback_index_key(hour: int) -> str:
    return f"mailflow:fbactive:{hour}"


def expire_at(hour: int) -> int:
    """When an hour's keys go: FEEDBACK_HOURS after the hour ends (SQLite prunes at the same point)."""
    return (hour + 1 + FEEDBACK_HOURS) * 3600


class RedisFeedback:
    """Mixed into RedisStore, whose client and error mapping it uses."""

    client: redis.Redis

    def _errors(self) -> AbstractContextManager[None]:
        raise NotImplementedError

    def _swap_grant_script(self) -> Any:  # redis_grants: the same compare-and-set of a hash field
        raise NotImplementedError

    def _feedback_script(self, name: str = "feedback") -> Any:
        """lua/NAME.lua, registered once (redis-py loads it again on NOSCRIPT)."""
        scripts: dict[str, Any] = self.__dict__.setdefault("_feedback_scripts", {})
        if name not in scripts:
            text = files("mailflow.store").joinpath(f"lua/{name}.lua").read_text(encoding="utf-8")
            scripts[name] = self.client.register_script(text)
        return scripts[name]

    def add_feedback(self, source: str | None, seq: int, counts: Mapping[tuple[int, str, str], int],
                     recipients: Mapping[tuple[int, str], Collection[str]]) -> None:
        calls = feedback_calls(source, seq, counts, recipients)
        batch: dict[str, Call] = {}
        size = 0
        for account in sorted(calls):
            if batch and (len(batch) == BATCH or size + len(calls[account].args) > BATCH_ARGS):
                self._send_feedback(index_hours(batch), list(batch.values()))
                batch, size = {}, 0
            batch[account] = calls[account]
            size += len(calls[account].args)
        if batch:
            self._send_feedback(index_hours(batch), list(batch.values()))

    def _send_feedback(self, index: Mapping[int, Sequence[str]], calls: Sequence[Call]) -> None:
        """The index, then each account's script: one pipeline, which runs in this order."""
        script = self._feedback_script()
        with self._errors():
            pipe = self.client.pipeline(transaction=False)
            write_index(pipe, index)
            for call in calls:
                script(keys=call.keys, args=call.args, client=pipe)
            pipe.execute()

    def feedback_counts(self, account: str, hours: Sequence[int]) -> dict[int, dict[str, int]]:
        found: dict[int, dict[str, int]] = {}
        if not hours:
            return found
        with self._errors():  # one script call: lua/feedback_read.lua
            reply = self._feedback_script("feedback_read")(keys=[feedback_key(account, hour) for hour in hours])
        for i, fields in zip(reply[::2], reply[1::2]):
            hour = hours[int(i) - 1]
            found[hour] = {str(fields[j]): _count(fields[j + 1], feedback_key(account, hour))
                           for j in range(0, len(fields) - 1, 2)}
        return found

    def unique_recipients(self, account: str, hours: Sequence[int]) -> int:
        if not hours:
            return 0
        with self._errors():  # the account's hours share its slot: one PFCOUNT merges them
            return int(self.client.pfcount(*(recipients_key(account, hour) for hour in dict.fromkeys(hours))))

    def feedback_accounts(self, hours: Sequence[int]) -> list[str]:
        with self._errors():
            pipe = self.client.pipeline(transaction=False)
            for hour in hours:
                pipe.smembers(feedback_index_key(hour))
            members = pipe.execute()
        return sorted({str(account) for accounts in members for account in accounts})

    def reputation_states(self) -> dict[str, str]:
        with self._errors():
            try:
                return {str(k): str(v) for k, v in self.client.hgetall(REPUTATION_KEY).items()}
            except UnicodeDecodeError as exc:  # written by hand: the store's fault, said so (as a corrupt count)
                raise StoreError(f"redis: {REPUTATION_KEY} holds an account or standing that is not UTF-8 "
                                 f"({exc.reason} at byte {exc.start}): remove it (HDEL)") from exc

    def swap_reputation(self, account: str, expected: str | None, new: str | None) -> bool:
        with self._errors():
            return bool(self._swap_grant_script()(keys=[REPUTATION_KEY], args=[account, expected or "", new or ""]))


def feedback_calls(source: str | None, seq: int, counts: Mapping[tuple[int, str, str], int],
                   recipients: Mapping[tuple[int, str], Collection[str]]) -> dict[str, Call]:
    """Each account's lua/feedback.lua call."""
    fields: dict[str, dict[int, list[Any]]] = {}
    digests: dict[str, dict[int, Collection[str]]] = {}
    for (hour, account, field), n in counts.items():
        if n:
            fields.setdefault(account, {}).setdefault(hour, []).extend((field, int(n)))
    for (hour, account), mine in recipients.items():
        if mine:
            digests.setdefault(account, {})[hour] = mine
    calls: dict[str, Call] = {}
    for account in fields.keys() | digests.keys():
        call = calls[account] = Call([guard_key(account, source)], [1 if source is not None else 0, source or "", int(seq),
                                                            FEEDBACK_HOURS * 3600,
                                                            (FEEDBACK_HOURS - RECIPIENT_HOURS) * 3600], [])
        by_hour, seen = fields.get(account, {}), digests.get(account, {})
        for hour in sorted(by_hour.keys() | seen.keys()):
            pairs, added = by_hour.get(hour, []), seen.get(hour, ())
            call.keys += [feedback_key(account, hour), recipients_key(account, hour)]
            call.args += [expire_at(hour), len(pairs) // 2, len(added), *pairs, *added]
            call.hours.append(hour)
    return calls


def index_hours(calls: Mapping[str, Call]) -> dict[int, list[str]]:
    """Each hour's index entries (hour -> accounts) for these calls."""
    by_hour: dict[int, list[str]] = {}
    for account, call in calls.items():
        for hour in call.hours:
            by_hour.setdefault(hour, []).append(account)
    return by_hour


def write_index(pipe: Any, by_hour: Mapping[int, Sequence[str]]) -> None:
    for hour, accounts in sorted(by_hour.items()):
        pipe.sadd(feedback_index_key(hour), *accounts)
        pipe.expireat(feedback_index_key(hour), expire_at(hour))


def _count(value: Any, key: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"redis: corrupt feedback count {str(value)[:40]!r} at {key[:200]}") from exc

