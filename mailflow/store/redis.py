"""Redis store: one count shared by a fleet of MTAs.

Every debit is one EVALSHA of lua/debit.lua (one round trip), numbers in ARGV, time from
Redis TIME. Keys are `mailflow:rl:{ACCOUNT}:PERIOD`: the `{ACCOUNT}` hash tag puts all keys of
one account in one Cluster slot, which a multi-key script needs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any
from importlib.resources import files

import redis

from mailflow import metrics
from mailflow.ratelimit.bucket import DebitResult
from mailflow.ratelimit.limits import PERIOD_SECONDS, Limit
from mailflow.ratelimit.recent import RecentLevels
from mailflow.ratelimit.window import level_from_reply
from mailflow.store import redis_claims
from mailflow.store.base import DomainTaken, StoreError, SuppressionLookup
from mailflow.store.keys import tag
from mailflow.store.redis_counts import RedisCounts
from mailflow.store.redis_feedback import RedisFeedback
from mailflow.store.redis_grants import RedisGrantsAudit
from mailflow.store.redis_errors import FAILURES, as_store_errors, store_error
from mailflow.store.redis_held import RedisHeldMail
from mailflow.store.redis_pool import HotPool, admin_deadlines, read_replies
from mailflow.store.redis_sentinel import UNKNOWN, follow, sentinel_spec
from mailflow.store.redis_wait import ReplicaWait
from mailflow.store.redis_replica import EPOCH_KEY, GEN_KEY, LOG_KEY, LOG_LENGTH, SuppressionReplica
from mailflow.suppression.entries import Entry

KEY_PREFIX = "mailflow:rl:"
# One hash, domain -> account: the milter reads it whole (cached), admins change it rarely.
DOMAINS_KEY = "mailflow:domains"
# Held accounts: account -> "since|reason".
HELD_KEY = "mailflow:held"
TRAP_WINDOW = 86400
IMPORT_BATCH = 10_000


def suppression_key(scope: str) -> str:
    """One hash per scope (global, account:NAME): field = keyed lookup key, value = entry."""
    return f"mailflow:sup:{scope}"


STATE_TTL = 30 * 86400
SENT_TTL = 72 * 3600


def sent_key(hour: int) -> str:
    return f"mailflow:sent:{hour}"


def trap_key(account: str) -> str:
    return f"mailflow:traps:{{{tag(account)}}}"


def bucket_key(account: str, period: str) -> str:
    return f"{KEY_PREFIX}{{{tag(account)}}}:{period}"


def limit_key(account: str, limit: Limit) -> str:
    """A token bucket's key, or a sliding window's (its own: changing a limit's kind starts afresh)."""
    return bucket_key(account, limit.period) + (":sliding" if limit.sliding else "")


def _lua(name: str) -> str:
    return files("mailflow.store").joinpath(f"lua/{name}").read_text(encoding="utf-8")


# Grants and audit, the views' counts, held mail, delivery feedback and standings: redis_*.py
class RedisStore(RedisGrantsAudit, RedisCounts, RedisHeldMail, RedisFeedback):
    def __init__(self, url: str, timeout_ms: int = 250, refresh_ms: int = 1000,
                 wait_replicas: int = 0, wait_timeout_ms: int = 0) -> None:
        timeout = timeout_ms / 1000
        self._timeout_ms = timeout_ms
        sentinel = sentinel_spec(url)  # redis+sentinel://: the master the sentinels name (redis_sentinel)
        self.client = redis.Redis.from_url(
            sentinel.master_url(*UNKNOWN) if sentinel else url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry_on_timeout=False,
            decode_responses=True,
            # Fail fast; the milter's on_error policy decides, and the pool reconnects by itself.
            retry=None,
        )
        self._password: str | None = self.client.connection_pool.connection_kwargs.get("password")
        self._hot_pool = HotPool(self.client, timeout_ms)
        admin_deadlines(self.client)  # after the hot pool took the plain connection class
        self._setup(refresh_ms, wait_replicas, wait_timeout_ms)
        self._follower = follow(self.client, self._hot_pool, sentinel, timeout_ms) if sentinel else None

    def _setup(self, refresh_ms: int, wait_replicas: int, wait_timeout_ms: int) -> None:
        """Scripts, replica and WAIT on `self.client` (also the Cluster store's: redis_cluster)."""
        timeout_ms = self._timeout_ms
        self._debit_script = self.client.register_script(_lua("debit.lua"))
        self._remove_domain_script = self.client.register_script(_lua("remove_domain.lua"))
        self._trap_hit_script = self.client.register_script(_lua("trap_hit.lua"))
        self._swap_script = self.client.register_script(_lua("swap_state.lua"))
        self._log_change_script = self.client.register_script(_lua("log_change.lua"))
        # RCPT without a round trip when the answer is known here (see redis_replica, recent).
        self.replica = SuppressionReplica(self.client, suppression_key("*"), HELD_KEY, refresh_ms / 1000,
                                          timeout_ms)
        self._recent = RecentLevels()
        self._wait = ReplicaWait(wait_replicas, wait_timeout_ms) if wait_replicas else None

    def _errors(self) -> AbstractContextManager[None]:
        """Any failure of redis-py or the socket inside: a StoreError naming the cause."""
        if self._follower is not None:
            return self._follower.errors(self._timeout_ms, self._password)
        return as_store_errors(self._timeout_ms, self._password)

    @staticmethod
    def _debit_call(account: str, limits: Sequence[Limit], cost: float, commit: bool) -> tuple[list[str], list[Any]]:
        keys = [limit_key(account, limit) for limit in limits]
        args: list[Any] = [repr(float(cost)), 1 if commit else 0]
        for limit in limits:
            args += [limit.capacity, repr(limit.rate), PERIOD_SECONDS[limit.period] if limit.sliding else 0]
        return keys, args

    @staticmethod
    def _debit_result(reply: Sequence[Any]) -> DebitResult:
        return DebitResult(bool(int(reply[0])), tuple(level_from_reply(level) for level in reply[1:]))

    # -- the hot path: one round trip on a pooled raw connection (redis_pool) ----------------

    def _roundtrip(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        started = time.perf_counter()
        if self._follower is not None and self._follower.master is None:
            self._follower.suspect()
            raise StoreError(self._follower.last_error)
        conn = self._hot_pool.take()
        broken = True  # until every reply is read: a half-read connection must not be reused
        try:
            for attempt in (1, 2):
                replies = self._exchange(conn, commands, reused=attempt == 1 and conn._sock is not None)
                failed = any(isinstance(reply, redis.ResponseError) for reply in replies)
                if not failed or attempt == 2 or not any(
                        isinstance(reply, redis.exceptions.NoScriptError) for reply in replies):
                    break
                # A restarted or flushed Redis: nothing ran, so loading and sending again is safe.
                conn.send_command("SCRIPT", "LOAD", self._debit_script.script)
                conn.read_response()
            broken = False
        except FAILURES as exc:
            if self._follower is not None:
                self._follower.suspect()
            raise store_error(exc, self._timeout_ms, self._password) from exc
        finally:
            self._hot_pool.give(conn, broken)
            metrics.RECORDER.store_latency(time.perf_counter() - started)
        if failed:
            for reply in replies:
                if isinstance(reply, redis.ResponseError):
                    if self._follower is not None:  # READONLY, however a script words it: a demoted master
                        self._follower.suspect()
                    raise store_error(reply, self._timeout_ms, self._password) from reply
        return replies

    @staticmethod
    def _exchange(conn: Any, commands: Sequence[Sequence[Any]], reused: bool) -> list[Any]:
        """Send and read every reply (an error reply as a ResponseError in its place). A reused
        connection Redis closed before it took the command (CLIENT KILL, idle timeout) is tried
        once more on a fresh one: when the send fails, or a reset comes before any reply byte
        (Redis resets a connection it closes with input unread). Never after a reply byte or a
        plain close, when the command may have run: a debit must not run twice."""
        packed = conn.pack_commands(commands)
        while True:
            sock = None
            try:
                conn.send_packed_command(packed)
                sock = conn._sock
                return read_replies(conn, len(commands))
            except redis.ConnectionError as exc:
                cause = exc.__context__
                if sock is None:  # the send failed; unless it timed out (Redis slow, not gone), nothing went
                    untaken = not isinstance(cause, BlockingIOError)
                else:
                    untaken = isinstance(cause, ConnectionResetError) and not getattr(sock, "received", True)
                if not (reused and untaken):
                    raise
                reused = False  # redis-py disconnected it: the next send reconnects

    def _debit_command(self, account: str, limits: Sequence[Limit], cost: float, commit: bool) -> list[Any]:
        keys, args = self._debit_call(account, limits, cost, commit)
        return ["EVALSHA", self._debit_script.sha, len(keys), *keys, *args]

    def _run(self, account: str, limits: Sequence[Limit], cost: float, commit: bool) -> DebitResult:
        commands = [self._debit_command(account, limits, cost, commit)]
        if commit and cost and self._wait is not None:  # a spend: WAIT for replicas, same exchange (redis_wait)
            commands.append(self._wait.command)
        [reply, *acks] = self._roundtrip(commands)
        if acks and self._wait is not None:
            self._wait.acknowledged(acks[0])
        result = self._debit_result(reply)
        self._recent.remember(account, limits, result.levels)
        return result

    def levels(self, account: str, limits: Sequence[Limit], estimate: bool = False) -> tuple[float, ...]:
        if estimate:
            return self._recent.estimate(account, limits)
        return self._run(account, limits, 0, commit=False).levels

    def debit(self, account: str, limits: Sequence[Limit], cost: float) -> DebitResult:
        return self._run(account, limits, cost, commit=True)

    def reset(self, account: str) -> None:
        with self._errors():
            self.client.delete(*(bucket_key(account, period) + kind for period in PERIOD_SECONDS
                                 for kind in ("", ":sliding")))

    def domains(self) -> dict[str, str]:
        with self._errors():
            raw = self.client.hgetall(DOMAINS_KEY)
        return {str(domain): str(account) for domain, account in raw.items()}

    def add_domain(self, account: str, domain: str) -> None:
        with self._errors():
            if not self.client.hsetnx(DOMAINS_KEY, domain, account):
                owner = str(self.client.hget(DOMAINS_KEY, domain) or "")
                if owner != account:
                    raise DomainTaken(f"{domain} belongs to account {owner}")

    def remove_domain(self, account: str, domain: str) -> bool:
        # Delete only if this account owns it: check and delete in one script.
        with self._errors():
            return bool(self._remove_domain_script(keys=[DOMAINS_KEY], args=[domain, account]))

    def add_suppressions(self, scope: str, entries: Sequence[Entry]) -> int:
        # HSETNX keeps what is stored already; pipelined in batches, one round trip each.
        added = 0
        with self._errors():
            for start in range(0, len(entries), IMPORT_BATCH):
                pipe = self.client.pipeline(transaction=False)
                batch = entries[start:start + IMPORT_BATCH]
                for entry in batch:
                    pipe.hsetnx(suppression_key(scope), entry.key, entry.value())
                # After the entries: a replica that sees this change finds them in Redis.
                self._log_change_script(keys=[GEN_KEY, LOG_KEY, EPOCH_KEY],
                                        args=[" ".join(e.key for e in batch), LOG_LENGTH, os.urandom(8).hex()],
                                        client=pipe)
                added += sum(pipe.execute()[:-1])
        return added

    def remove_suppressions(self, scope: str, keys: Sequence[str]) -> int:
        with self._errors():
            return int(self.client.hdel(suppression_key(scope), *keys)) if keys else 0

    def find_suppressions(self, account: str, scopes: Sequence[str], keys: Sequence[str],
                          peek: Sequence[Limit] = ()) -> SuppressionLookup:
        self.replica.start()  # only the milter looks recipients up: it alone keeps a replica
        known = self.replica.lookup(account, keys)
        if known is not None:
            levels = self._recent.estimate(account, peek) if peek else None
            return SuppressionLookup(known.matches, known.account_held, levels)
        commands: list[list[Any]] = [["HMGET", suppression_key(scope), *keys] for scope in scopes]
        commands.append(["HGET", HELD_KEY, account])
        if peek:
            commands.append(self._debit_command(account, peek, 0, commit=False))
        replies = self._roundtrip(commands)
        found, held = replies[:len(scopes)], replies[len(scopes)]
        levels = self._debit_result(replies[-1]).levels if peek else None
        if levels is not None:
            self._recent.remember(account, peek, levels)
        matches = tuple((scope, Entry.from_value(key, value))
                        for scope, values in zip(scopes, found) for key, value in zip(keys, values) if value)
        return SuppressionLookup(matches, held, levels)

    def iter_suppressions(self, scope: str) -> Iterator[Entry]:
        with self._errors():
            for key, value in self.client.hscan_iter(suppression_key(scope), count=10_000):
                yield Entry.from_value(str(key), str(value))

    def suppression_scopes(self) -> dict[str, int]:
        prefix = suppression_key("")
        try:
            names = sorted({str(name) for name in self.client.scan_iter(match=suppression_key("*"), count=1000)})
            pipe = self.client.pipeline(transaction=False)
            for name in names:
                pipe.hlen(name)
            sizes = pipe.execute()
        except redis.RedisError as exc:
            raise StoreError(f"redis: {exc}") from exc
        return {name[len(prefix):]: int(n) for name, n in zip(names, sizes) if n}

    def record_trap_hit(self, account: str) -> int:
        with self._errors():
            return int(self._trap_hit_script(keys=[trap_key(account)], args=[TRAP_WINDOW, os.urandom(8).hex()]))

    def hold_account(self, account: str, reason: str) -> None:
        with self._errors():
            now = int(self.client.time()[0])
            self.client.hsetnx(HELD_KEY, account, f"{now}|{reason}")
            self.replica.note_held(account, str(self.client.hget(HELD_KEY, account)))

    def release_account(self, account: str) -> bool:
        with self._errors():
            released = bool(self.client.hdel(HELD_KEY, account))
            self.client.delete(trap_key(account))
            return released

    def held_accounts(self) -> dict[str, str]:
        with self._errors():
            return {str(k): str(v) for k, v in self.client.hgetall(HELD_KEY).items()}

    def state_get(self, key: str) -> str | None:
        with self._errors():
            value = self.client.get(f"mailflow:{key}")
        return None if value is None else str(value)

    def state_swap(self, key: str, expected: str | None, new: str) -> bool:
        with self._errors():
            return bool(self._swap_script(keys=[f"mailflow:{key}"], args=[expected or "", new, STATE_TTL]))

    def add_sent(self, counts: dict[tuple[int, str], int]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for (hour, account), n in counts.items():
            pipe.zincrby(sent_key(hour), n, account)
            pipe.expire(sent_key(hour), SENT_TTL)
        with self._errors():
            pipe.execute()

    def top_senders(self, hours: Sequence[int], limit: int) -> list[tuple[str, int]]:
        pipe = self.client.pipeline(transaction=False)
        for hour in hours:
            pipe.zrevrange(sent_key(hour), 0, limit * 4, withscores=True)
        with self._errors():
            totals: dict[str, int] = {}
            for ranked in pipe.execute():
                for account, score in ranked:
                    totals[str(account)] = totals.get(str(account), 0) + int(score)
        return sorted(totals.items(), key=lambda item: (-item[1], item[0]))[:limit]

    def claim(self, account: str, key: str, ttl: int) -> bool:
        with self._errors():
            return redis_claims.claim(self.client, account, key, ttl)

    def ping(self) -> None:
        with self._errors():
            self.client.ping()

    def close(self) -> None:
        if self._follower is not None:
            self._follower.close()
        self.replica.stop()
        self._hot_pool.close()
        self.client.close()
