"""Redis failures in words. Every error of the Redis store leaves it as one StoreError whose
message names the cause an admin can act on ("redis: READONLY replica ..."), never a password.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

import redis
from redis import exceptions as rx

from mailflow.store.base import StoreError

# What redis-py raises (RedisError and its subclasses, MaxConnectionsError included) and what a
# socket may raise past it.
FAILURES = (redis.RedisError, OSError)


def describe(exc: BaseException, timeout_ms: int) -> str:
    """The cause of a Redis failure in a few words, for the log and the admin."""
    if isinstance(exc, rx.RedisClusterException) and isinstance(exc.__cause__, rx.RedisError):
        return describe(exc.__cause__, timeout_ms)  # "cannot be connected…": the node's own refusal says why
    text = str(exc)
    if isinstance(exc.__context__, BlockingIOError):  # the kernel timeout, see redis_pool
        return f"no answer within {timeout_ms} ms"
    if isinstance(exc, (rx.TimeoutError, socket.timeout)):
        if "connecting" in text:
            return f"no connection within {timeout_ms} ms"
        return f"no answer within {timeout_ms} ms"
    code = getattr(exc, "status_code", None)  # the reply's error code, which redis-py strips from the text
    if isinstance(exc, rx.ReadOnlyError) or code == "READONLY":
        return "READONLY replica: the store URL must name the primary"
    if isinstance(exc, rx.OutOfMemoryError) or code == "OOM":
        return "out of memory: maxmemory reached, writes refused (OOM)"
    if code == "NOAUTH":
        return "password required (NOAUTH): the store URL gives none"
    if isinstance(exc, rx.AuthenticationError):
        if "without any password" in text or "no password is set" in text:
            return "the store URL gives a password, Redis has none set"
        return "wrong password (or user)"
    if isinstance(exc, rx.MaxConnectionsError):
        return "every connection of the pool is in use"
    if isinstance(exc, rx.BusyLoadingError):
        return "still loading its data set (LOADING)"
    if isinstance(exc, _CLUSTER_REPLIES):  # redis-py strips the code: "3383 127.0.0.1:7001"
        return _cluster_reply(exc, text)
    if isinstance(exc, rx.NoScriptError):
        return f"script missing (NOSCRIPT): {text}"
    if isinstance(exc, rx.ConnectionError):
        if "Connection closed by server" in text:
            return "connection closed mid-reply"
        if "Connection reset" in text or "Broken pipe" in text:
            return f"connection reset ({text})"
        return f"cannot connect ({text})" if "connecting to" in text else f"connection lost ({text})"
    if isinstance(exc, OSError) and not isinstance(exc, rx.RedisError):
        return f"connection lost ({exc.strerror or text})"
    return f"{code} {text}" if code else text


# Most specific first: MovedError is an AskError, MasterDownError a ClusterDownError.
_CLUSTER_NAMES: tuple[tuple[type[BaseException], str], ...] = (
    (rx.MovedError, "MOVED"), (rx.AskError, "ASK"), (rx.TryAgainError, "TRYAGAIN"),
    (rx.ClusterCrossSlotError, "CROSSSLOT"), (rx.MasterDownError, "MASTERDOWN"), (rx.ClusterDownError, "CLUSTERDOWN"))
_CLUSTER_REPLIES = tuple(kind for kind, _ in _CLUSTER_NAMES)


def _cluster_reply(exc: BaseException, text: str) -> str:
    name = next(name for kind, name in _CLUSTER_NAMES if isinstance(exc, kind))
    if name in ("MOVED", "ASK"):
        slot, _, node = text.partition(" ")
        return (f"{name}: slot {slot} is served by {node} "
                "(a Redis Cluster: the store URL names one of its nodes, or it is resharding)")
    return f"{name} {text}" if not text.startswith(name) else text


def store_error(exc: BaseException, timeout_ms: int, password: str | None = None) -> StoreError:
    message = describe(exc, timeout_ms)
    if password:
        message = message.replace(password, "***")
    return StoreError(f"redis: {message}")


@contextmanager
def as_store_errors(timeout_ms: int, password: str | None = None) -> Iterator[None]:
    """Raise any Redis or socket failure in the block as a StoreError that says what happened."""
    try:
        yield
    except FAILURES as exc:
        raise store_error(exc, timeout_ms, password) from exc
