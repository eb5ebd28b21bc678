"""Adding a host's local spend to the store's buckets once Redis answers again.

A forced debit: the cost is taken whatever the level, so an account that spent during the
outage waits afterwards until its bucket refills (the long-run average holds). One account per
call, all its keys in one slot (`{ACCOUNT}` hash tag), so it runs on Redis Cluster as it is.
The `over` field lets debit.lua keep a forced level above the capacity until it drains.
"""

from __future__ import annotations

from collections.abc import Sequence
from mailflow.ratelimit.limits import Limit
from mailflow.store.redis import RedisStore

FORCE_DEBIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local cost = tonumber(ARGV[1])
local SLOTS = 60
for i, key in ipairs(KEYS) do
  local capacity = tonumber(ARGV[3 * i])
  local rate = tonumber(ARGV[3 * i + 1])
  local period = tonumber(ARGV[3 * i + 2])
  if period == 0 then
    local stored = redis.call('HMGET', key, 'level', 'ts', 'over')
    local level = 0
    if stored[1] then
      local ceiling = capacity
      if stored[3] then ceiling = math.max(capacity, tonumber(stored[3])) end
      level = math.max(0, math.min(ceiling, tonumber(stored[1])) - math.max(0, now - tonumber(stored[2])) * rate)
    end
    level = level + cost
    redis.call('HSET', key, 'level', tostring(level), 'ts', tostring(now), 'over', tostring(level))
    redis.call('PEXPIRE', key, math.ceil(level / rate * 1000) + 1000)
  else
    redis.call('HINCRBY', key, tostring(math.floor(now * SLOTS / period)), math.ceil(cost))
    redis.call('PEXPIRE', key, math.ceil(period * (SLOTS + 1) / SLOTS * 1000) + 1000)
  end
end
return 1
"""


def force_debit(store: RedisStore, account: str, limits: Sequence[Limit], cost: float) -> None:
    """Take `cost` from every bucket of the account, room or not (StoreError if Redis fails)."""
    if not limits or cost <= 0:
        return
    keys, args = store._debit_call(account, limits, cost, True)  # debit.lua's KEYS and ARGV
    with store._errors():
        store.client.eval(FORCE_DEBIT, len(keys), *keys, *args)
