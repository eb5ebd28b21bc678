"""The hot path on a Redis Cluster: each command to the master that owns its key's slot.

One HotPool (redis_pool) per master and a slot table (16384 entries) read from the admin
client's map. A reply that says the slot is elsewhere is followed, and only those: nothing ran
for a command answered MOVED, ASK or TRYAGAIN, so sending it again is safe.
  MOVED slot host:port   the slot moved for good: the table learns it (and a full refresh runs
                         in the background), the command goes there
  ASK slot host:port     mid-migration, the key is on the importing node: ASKING + the command there, once
  TRYAGAIN               a multi-key command whose keys are split by a migration: again after a
                         pause (TRYAGAIN_SLEEP, doubling up to TRYAGAIN_MAX_SLEEP)
  NOSCRIPT               a master that never ran the script (a promoted replica, a new master):
                         SCRIPT LOAD (debit.lua, or one made `known`, e.g. feedback.lua), again
MOVED and ASK are followed in ROUNDS rounds at most, TRYAGAIN as long as the call has time (a
migration that splits a debit's keys lasts as long as the MIGRATEs between them, longer than
ROUNDS short pauses on a loaded host); all within the store's timeout (each reply's budget is
what is left of the call's) and EXCHANGES exchanges; then the reply stands (a StoreError naming it).
A timeout, a reset after a reply byte or any other failure is never re-sent (a debit must not
run twice): the caller gets the StoreError, as on one node.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from redis.crc import key_slot

from mailflow.store.base import StoreError
from mailflow.store.redis_pool import HotPool, read_replies

log = logging.getLogger("mailflow.store")

SLOTS = 16384
ROUNDS = 8  # rounds of MOVED/ASK followed per call, at most
EXCHANGES = 32  # exchanges per call, at most, TRYAGAIN's included (the timeout ends it before, as a rule)
TRYAGAIN_SLEEP = 0.005  # the first pause after TRYAGAIN; each next one doubles...
TRYAGAIN_MAX_SLEEP = 0.05  # ...up to this (redis-py's cluster client pauses 50 ms)
REFRESH_EVERY = 1.0  # seconds between two background refreshes of the slot table, at least

Address = tuple[str, int]
Exchange = Callable[[Any, Sequence[Sequence[Any]], bool], list[Any]]


def command_key(command: Sequence[Any]) -> str | None:
    """The key a hot-path command touches first (EVALSHA sha N KEY…, HMGET KEY…, GET KEY)."""
    name = str(command[0]).upper()
    if name in ("EVALSHA", "EVAL"):
        return str(command[3]) if int(command[2]) else None
    if name in ("WAIT", "ASKING", "SCRIPT", "PING"):
        return None
    return str(command[1]) if len(command) > 1 else None


@dataclass
class _Pending:
    index: int  # where its reply goes
    command: Sequence[Any]
    slot: int
    ask: Address | None = None  # send ASKING first, to this node
    load: bool = False  # SCRIPT LOAD first (the node had not seen the script)
    follows: bool = False  # keyless (WAIT): goes wherever the command before it goes


class ClusterRoutes:
    def __init__(self, client: Any, template: redis.Redis, timeout_ms: int, script: str) -> None:
        self._client = client
        self._template = template  # the connection settings every node's pool copies
        self._timeout_ms = timeout_ms
        self._script = script  # debit.lua: loaded on a node that answers NOSCRIPT
        self._scripts: dict[str, str] = {}  # other scripts by SHA1 (know), loaded likewise
        self._pools: dict[Address, HotPool] = {}
        self._lock = threading.Lock()
        self._table: list[Address | None] = [None] * SLOTS
        self._refreshing = False
        self._refreshed = float("-inf")
        self.redirected = {"MOVED": 0, "ASK": 0, "TRYAGAIN": 0}  # replies followed (tests, diagnostics)
        self._loaded = False  # the table is read at the first call (the client may reach the Cluster later)

    def know(self, sha: str, script: str) -> None:
        """Load `script` too where an EVALSHA of `sha` answers NOSCRIPT."""
        self._scripts[sha] = script

    def _read_table(self) -> None:
        table: list[Address | None] = [None] * SLOTS
        for slot, nodes in list(self._client.nodes_manager.slots_cache.items()):
            if nodes:
                table[slot] = (str(nodes[0].host), int(nodes[0].port))
        self._table, self._loaded = table, True

    def refresh(self) -> None:
        """The slot table read afresh from the cluster, in the background, at most every REFRESH_EVERY."""
        now = time.monotonic()
        with self._lock:
            if self._refreshing or now - self._refreshed < REFRESH_EVERY:
                return
            self._refreshing, self._refreshed = True, now
        threading.Thread(target=self._refresh, name="mailflow-cluster-slots", daemon=True).start()

    def _refresh(self) -> None:
        try:
            self._client.nodes_manager.initialize()
            self._read_table()
        except (redis.RedisError, OSError, redis.exceptions.RedisClusterException) as exc:
            log.warning("redis cluster: cannot refresh the slot map: %s", exc)
        finally:
            with self._lock:
                self._refreshing = False

    def _pool(self, address: Address) -> HotPool:
        pool = self._pools.get(address)
        if pool is None:
            with self._lock:
                pool = self._pools.get(address)
                if pool is None:
                    pool = HotPool(self._template, self._timeout_ms)
                    pool.retarget(*address)
                    self._pools[address] = pool
        return pool

    def _owner(self, slot: int) -> Address:
        owner = self._table[slot]
        if owner is None:
            self.refresh()
            raise StoreError(f"redis: no master serves slot {slot} (cluster map incomplete)")
        return owner

    def roundtrip(self, commands: Sequence[Sequence[Any]], exchange: Exchange,
                  failed: Callable[[BaseException], StoreError]) -> list[Any]:
        """Every command's reply (an error reply as a ResponseError in its place), each command
        sent to its slot's master; a command without a key goes with the one before it."""
        if not self._loaded:
            self._read_table()  # the client's slot map (a StoreError if the Cluster cannot be reached)
        replies: list[Any] = [None] * len(commands)
        pending: list[_Pending] = []
        slot = 0
        for i, command in enumerate(commands):
            key = command_key(command)
            if key is not None:
                slot = key_slot(key.encode())
            pending.append(_Pending(i, command, slot, follows=key is None and i > 0))
        began = time.monotonic()
        deadline = began + self._timeout_ms / 1000  # for following redirections, not per exchange
        moves = pauses = 0  # rounds with a MOVED/ASK followed; TRYAGAIN pauses taken
        for round_ in range(EXCHANGES):
            groups: dict[Address, list[_Pending]] = {}
            for item in pending:
                groups.setdefault(item.ask or self._owner(item.slot), []).append(item)
            sent, pending, wait, moved = pending, [], False, False
            answered = self._exchanges(groups, exchange, failed, time.monotonic() - began)
            # After the exchange: a redirection answered past the deadline is not followed; one
            # followed has what is left of the timeout (`spent`), so the call ends within it.
            last = round_ == EXCHANGES - 1 or time.monotonic() > deadline  # the replies stand
            for address, items in groups.items():
                for item, reply in zip(items, answered[address]):
                    again = None if last else self._redirect(item, reply, address, follow_moves=moves < ROUNDS)
                    if again is None:
                        replies[item.index] = reply
                    else:
                        pending.append(again)
                        tryagain = isinstance(reply, redis.exceptions.TryAgainError)
                        wait, moved = wait or tryagain, moved or isinstance(reply, redis.exceptions.AskError)
            if not pending:
                return replies
            moves += moved
            # A WAIT whose debit goes elsewhere goes with it (it answered for the wrong connection).
            again_at = {item.index: item for item in pending}
            for item in sent:
                leader = again_at.get(item.index - 1)
                if item.follows and leader is not None and item.index not in again_at:
                    again_at[item.index] = _Pending(item.index, item.command, leader.slot, ask=leader.ask,
                                                    follows=True)
            pending = [again_at[index] for index in sorted(again_at)]
            if wait:  # MOVED, ASK and NOSCRIPT go again at once
                time.sleep(max(0.0, min(TRYAGAIN_SLEEP * 2 ** pauses, TRYAGAIN_MAX_SLEEP,
                                        deadline - time.monotonic())))
                pauses += 1
        return replies  # not reached: the last round keeps every reply

    def _redirect(self, item: _Pending, reply: Any, replier: Address, follow_moves: bool) -> _Pending | None:
        """What to send again for a reply that says nothing ran here; None to keep the reply
        (a MOVED or ASK too once `follow_moves` is false: ROUNDS of them were followed)."""
        if isinstance(reply, redis.exceptions.AskError):  # MovedError is an AskError
            if not follow_moves:
                return None
            # An empty host ("MOVED 3999 :7001", an endpoint Redis does not know): the replier's.
            address = (str(reply.host) or replier[0], int(reply.port))
            if isinstance(reply, redis.exceptions.MovedError):
                self.redirected["MOVED"] += 1
                self._table[reply.slot_id] = address
                self.refresh()
                return _Pending(item.index, item.command, item.slot)
            self.redirected["ASK"] += 1
            return _Pending(item.index, item.command, item.slot, ask=address)
        if isinstance(reply, redis.exceptions.TryAgainError):
            self.redirected["TRYAGAIN"] += 1
            return _Pending(item.index, item.command, item.slot)
        if isinstance(reply, redis.exceptions.NoScriptError) and not item.load:
            return _Pending(item.index, item.command, item.slot, ask=item.ask, load=True)
        return None

    def _wire(self, items: Sequence[_Pending]) -> tuple[list[Sequence[Any]], list[int]]:
        """The commands for one master (SCRIPT LOAD and ASKING before an item where due), and
        where each item's own reply is among theirs."""
        wire: list[Sequence[Any]] = []
        mine: list[int] = []
        for item in items:
            if item.load:
                wire.append(["SCRIPT", "LOAD", self._scripts.get(str(item.command[1]), self._script)])
            if item.ask is not None:
                wire.append(["ASKING"])
            mine.append(len(wire))
            wire.append(item.command)
        return wire, mine

    def _exchanges(self, groups: dict[Address, list[_Pending]], exchange: Exchange,
                   failed: Callable[[BaseException], StoreError], spent: float) -> dict[Address, list[Any]]:
        """Each master's replies to its items. With several masters the requests all go out
        before any reply is read, so a lookup of both lists costs about one round trip. `spent`:
        seconds of the call's timeout gone already (redirections), due from each reply's budget."""
        taken = [(address, self._pool(address), *self._wire(items)) for address, items in groups.items()]
        conns: list[Any] = []
        done: list[bool] = []  # every reply read: the connection is fit for the next call
        replies: dict[Address, list[Any]] = {}
        try:
            for _, pool, _, _ in taken:
                conns.append(pool.take())
                done.append(False)
                conns[-1].waited = getattr(conns[-1], "waited", 0.0) + spent  # redis_pool: shortens the deadline
            early = [(conn._sock is not None, _send_early(conn, wire))  # reused?, read before the send
                     for conn, (_, _, wire, _) in zip(conns[:-1], taken[:-1])]
            last, (address, _, wire, mine) = conns[-1], taken[-1]
            got = exchange(last, wire, last._sock is not None)
            replies[address], done[-1] = [got[i] for i in mine], True
            for n, (conn, (reused, failure), (address, _, wire, mine)) in enumerate(zip(conns, early, taken)):
                got = _read_early(conn, wire, reused, failure, exchange)
                replies[address], done[n] = [got[i] for i in mine], True
        except (redis.RedisError, OSError) as exc:
            self.refresh()  # a master gone: its slots may be served elsewhere now
            raise failed(exc) from exc
        finally:
            for (_, pool, _, _), conn, fit in zip(taken, conns, done):
                pool.give(conn, broken=not fit)
        return replies

    def close(self) -> None:
        for pool in list(self._pools.values()):
            pool.close()


def _send_early(conn: Any, wire: Sequence[Sequence[Any]]) -> BaseException | None:
    """Send ahead of the other masters' exchange; the failure, if the request did not go out."""
    try:
        conn.send_packed_command(conn.pack_commands(wire))
    except redis.ConnectionError as exc:
        return exc
    return None


def _read_early(conn: Any, wire: Sequence[Sequence[Any]], reused: bool, failure: BaseException | None,
                exchange: Exchange) -> list[Any]:
    """The replies to what _send_early sent. A request that did not go out, or a reused
    connection Redis had closed (a reset before any reply byte), is sent once more through
    `exchange` on a fresh connection, on the rules of the one-master path (redis._exchange):
    never after a timeout or a reply byte."""
    sock = conn._sock
    if failure is None:
        try:
            return read_replies(conn, len(wire))
        except redis.ConnectionError as exc:
            if not (reused and isinstance(exc.__context__, ConnectionResetError)
                    and not getattr(sock, "received", True)):
                raise
            conn.disconnect()
            return exchange(conn, wire, False)
    if not reused or isinstance(failure.__context__, BlockingIOError):  # a timed-out send: part may have gone
        raise failure
    return exchange(conn, wire, False)
