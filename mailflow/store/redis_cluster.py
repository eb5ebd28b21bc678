"""RedisStore on a Redis Cluster (a redis+cluster:// store URL).

The hot path speaks to each slot's master itself (redis_cluster_routes); the admin and
background calls go through redis-py's RedisCluster, with its retries off (a timed-out call is
reported, never sent twice: MOVED and ASK it still follows). The suppression lists and the held
flag use the CLUSTER key layout (store/keys.py): an account's list, its held flag and its
buckets share its slot, the global list is spread over 256 hashes. Everything else already has
one key, or one slot per account (the `{ACCOUNT}` hash tag): domains, grants, audit, counts,
held mail, claims, states, the change log (`{sup}`) and the Lua scripts, each of whose keys
share a slot. The held accounts are also kept in the single-node hash, as the index the replica
refresh and `mailflow account list` read whole (no SCAN).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, cast
from urllib.parse import urlencode

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.connection import parse_url
from redis.exceptions import RedisClusterException
from redis.retry import Retry

from mailflow import metrics
from mailflow.ratelimit.limits import Limit
from mailflow.store.base import StoreError, SuppressionLookup
from mailflow.store.keys import ACCOUNT_SCOPE, CLUSTER, GLOBAL, untag
from mailflow.store.redis import HELD_KEY, IMPORT_BATCH, RedisStore, suppression_key, trap_key
from mailflow.store.redis_cluster_client import ClusterUnreachable, LazyCluster
from mailflow.store.redis_cluster_routes import ClusterRoutes
from mailflow.store.redis_counts import BATCH
from mailflow.store.redis_errors import FAILURES, store_error
from mailflow.store.redis_feedback import Call, write_index
from mailflow.store.redis_replica import EPOCH_KEY, GEN_KEY, LOG_KEY, LOG_LENGTH
from mailflow.suppression.entries import Entry
from mailflow.urls import REDIS_QUERY_KEYS
from mailflow.urls_cluster import ClusterURL, parse_cluster_url

log = logging.getLogger("mailflow.store")
_NOT_NODE_OPTIONS = ("host", "port", "db", "connection_class", "path")


def cluster_spec(url: str) -> ClusterURL:
    parsed = parse_cluster_url(url, REDIS_QUERY_KEYS)
    if isinstance(parsed, str):
        from mailflow.urls import redact_url

        raise ValueError(f"{redact_url(url)!r}: {parsed}")
    return parsed


def node_options(spec: ClusterURL, timeout: float) -> dict[str, Any]:
    """The connection settings of every node: the URL's options as redis:// reads them."""
    host, port = spec.nodes[0]
    query = f"?{urlencode(spec.query)}" if spec.query else ""
    url = f"{'rediss' if spec.tls else 'redis'}://{host}:{port}/0{query}"
    options: dict[str, Any] = dict(parse_url(url))  # type: ignore[no-untyped-call]
    for name in _NOT_NODE_OPTIONS:
        options.pop(name, None)
    if spec.tls:
        options["ssl"] = True
    options.update(username=spec.username, password=spec.password, socket_timeout=timeout,
                   socket_connect_timeout=timeout, decode_responses=True)
    return options


def connect_cluster(url: str, timeout_ms: int) -> RedisCluster:
    """redis-py's Cluster client for a redis+cluster:// URL, its retries off; it reads the slot
    map now (RedisClusterException, or a redis error, if no node answers)."""
    spec = cluster_spec(url)
    nodes = [ClusterNode(host, port) for host, port in spec.nodes]  # type: ignore[no-untyped-call]
    return RedisCluster(startup_nodes=nodes, retry=Retry(NoBackoff(), 0), **node_options(spec, timeout_ms / 1000))


class RedisClusterStore(RedisStore):
    def __init__(self, url: str, timeout_ms: int = 250, refresh_ms: int = 1000,
                 wait_replicas: int = 0, wait_timeout_ms: int = 0) -> None:
        spec = cluster_spec(url)
        options = node_options(spec, timeout_ms / 1000)
        self._timeout_ms, self._password, self._follower = timeout_ms, spec.password, None
        self._cluster = LazyCluster(lambda: connect_cluster(url, timeout_ms), lambda exc: str(self._failed(exc)))
        # Typed as the single-node client the mixins use: the calls they make are the same.
        self.client = cast(redis.Redis, self._cluster)
        self._setup(refresh_ms, wait_replicas, wait_timeout_ms)
        # Never connects: each master's HotPool copies its settings (no retry: fail fast, as one node).
        template = redis.Redis(host=spec.nodes[0][0], port=spec.nodes[0][1], **{**options, "retry": None})
        self._routes = ClusterRoutes(self._cluster, template, timeout_ms, self._debit_script.script)
        try:
            self._cluster.reach()  # the slot map now; a Cluster down at start fails calls, not the start
        except StoreError as exc:
            log.warning("%s; the Redis Cluster is tried again at the next call", exc)

    def _errors(self) -> AbstractContextManager[None]:
        return self._cluster_errors()

    @contextmanager
    def _cluster_errors(self) -> Iterator[None]:
        try:
            yield
        except ClusterUnreachable:  # a StoreError naming the cause already
            raise
        except (*FAILURES, RedisClusterException) as exc:  # RedisClusterException: no node, a cross-slot call
            raise self._failed(exc) from exc

    def _failed(self, exc: BaseException) -> StoreError:
        return store_error(exc, self._timeout_ms, self._password)

    def _roundtrip(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        started = time.perf_counter()
        try:
            replies = self._routes.roundtrip(commands, self._exchange, self._failed)
        finally:
            metrics.RECORDER.store_latency(time.perf_counter() - started)
        for reply in replies:
            if isinstance(reply, redis.ResponseError):
                raise store_error(reply, self._timeout_ms, self._password) from reply
        return replies

    def levels_of(self, accounts: Sequence[tuple[str, Sequence[Limit]]]) -> list[tuple[float, ...]]:
        # redis-py pipelines no EVALSHA on a Cluster: the hot path's routing, one exchange per master and batch.
        levels: list[tuple[float, ...]] = []
        for start in range(0, len(accounts), BATCH):
            commands = [self._debit_command(account, limits, 0, commit=False)
                        for account, limits in accounts[start:start + BATCH]]
            levels += [self._debit_result(reply).levels for reply in self._roundtrip(commands)]
        return levels

    def _send_feedback(self, index: Mapping[int, Sequence[str]], calls: Sequence[Call]) -> None:
        # The index through redis-py's pipeline (first: see redis_feedback), then the scripts as
        # levels_of sends its own: one exchange per master and batch, NOSCRIPT loaded there.
        script = self._feedback_script()
        self._routes.know(script.sha, script.script)
        with self._errors():
            pipe = self.client.pipeline(transaction=False)
            write_index(pipe, index)
            pipe.execute()
        self._roundtrip([["EVALSHA", script.sha, len(call.keys), *call.keys, *call.args] for call in calls])

    # -- the suppression lists and the held flag: the CLUSTER layout -------------------------

    @staticmethod
    def _hashes(scope: str, keys: Sequence[str]) -> dict[str, list[str]]:
        """The hashes of `scope` that may hold `keys`, each with its keys."""
        if scope == GLOBAL:
            return CLUSTER.global_lookup(list(keys))
        if not scope.startswith(ACCOUNT_SCOPE):
            raise ValueError(f"unknown suppression scope {scope!r}")
        return {CLUSTER.account_list(scope[len(ACCOUNT_SCOPE):]): list(keys)}

    @staticmethod
    def _all_hashes(scope: str) -> list[str]:
        if scope == GLOBAL:
            return CLUSTER.global_shards()
        return list(RedisClusterStore._hashes(scope, ()))

    def find_suppressions(self, account: str, scopes: Sequence[str], keys: Sequence[str],
                          peek: Sequence[Limit] = ()) -> SuppressionLookup:
        self.replica.start()
        known = self.replica.lookup(account, keys)
        if known is not None:
            levels = self._recent.estimate(account, peek) if peek else None
            return SuppressionLookup(known.matches, known.account_held, levels)
        # The account's slot first (its list, held flag, level peek: one master), then the global shards.
        commands: list[Sequence[Any]] = [CLUSTER.held_read(account)]
        if peek:
            commands.append(self._debit_command(account, peek, 0, commit=False))
        asked: list[tuple[str, list[str]]] = []
        for scope in sorted(scopes, key=lambda scope: scope == GLOBAL):
            for name, mine in self._hashes(scope, keys).items():
                commands.append(["HMGET", name, *mine])
                asked.append((scope, mine))
        replies = self._roundtrip(commands)
        held = replies[0]
        levels = self._debit_result(replies[1]).levels if peek else None
        if levels is not None:
            self._recent.remember(account, peek, levels)
        found = {(scope, key): value for (scope, mine), values in zip(asked, replies[1 + bool(peek):])
                 for key, value in zip(mine, values) if value}
        matches = tuple((scope, Entry.from_value(key, found[(scope, key)]))
                        for scope in scopes for key in keys if (scope, key) in found)
        return SuppressionLookup(matches, held, levels)

    def add_suppressions(self, scope: str, entries: Sequence[Entry]) -> int:
        added = 0
        with self._errors():
            for start in range(0, len(entries), IMPORT_BATCH):
                batch = entries[start:start + IMPORT_BATCH]
                pipe = self.client.pipeline(transaction=False)
                for entry in batch:
                    [name] = self._hashes(scope, [entry.key])
                    pipe.hsetnx(name, entry.key, entry.value())
                added += sum(pipe.execute())
                # After the entries (their own exchange here): a replica that sees this change finds them.
                self._log_change_script(keys=[GEN_KEY, LOG_KEY, EPOCH_KEY],
                                        args=[" ".join(e.key for e in batch), LOG_LENGTH, os.urandom(8).hex()])
        return added

    def remove_suppressions(self, scope: str, keys: Sequence[str]) -> int:
        with self._errors():
            return sum(int(self.client.hdel(name, *mine)) for name, mine in self._hashes(scope, keys).items())

    def iter_suppressions(self, scope: str) -> Iterator[Entry]:
        with self._errors():
            for name in self._all_hashes(scope):
                for key, value in self.client.hscan_iter(name, count=10_000):
                    yield Entry.from_value(str(key), str(value))

    def suppression_scopes(self) -> dict[str, int]:
        sizes: dict[str, int] = {}
        with self._errors():
            names = sorted({str(name) for name in self.client.scan_iter(match=suppression_key("*"), count=1000)})
            pipe = self.client.pipeline(transaction=False)
            for name in names:
                pipe.hlen(name)
            for name, n in zip(names, pipe.execute()):
                scope = _scope_of(name)
                if scope is not None and n:
                    sizes[scope] = sizes.get(scope, 0) + int(n)
        return sizes

    def hold_account(self, account: str, reason: str) -> None:
        with self._errors():
            now = int(self.client.time()[0])
            flag = CLUSTER.held_read(account)[1]
            self.client.set(flag, f"{now}|{reason}", nx=True)
            value = str(self.client.get(flag))
            self.client.hset(HELD_KEY, account, value)  # the index (replica, `mailflow held`)
            self.replica.note_held(account, value)

    def release_account(self, account: str) -> bool:
        with self._errors():
            released = bool(self.client.delete(CLUSTER.held_read(account)[1]))
            released = bool(self.client.hdel(HELD_KEY, account)) or released
            self.client.delete(trap_key(account))
            return released

    def close(self) -> None:
        self.replica.stop()
        self._routes.close()
        self._cluster.close()


def _scope_of(name: str) -> str | None:
    """The scope a CLUSTER-layout hash belongs to (None: not a list of this layout)."""
    if name.startswith(f"mailflow:sup:{GLOBAL}:{{g:"):
        return GLOBAL
    if name.startswith("mailflow:sup:{") and name.endswith("}:account"):
        return ACCOUNT_SCOPE + untag(name[len("mailflow:sup:{"):-len("}:account")])
    return None
