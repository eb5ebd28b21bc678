-- Debit (or peek) every limit of one account, atomically: token buckets and sliding windows.
--
-- KEYS[i]   one hash per limit, e.g. mailflow:rl:{shop.example}:hour
--           token bucket: fields level (tokens spent), ts (Redis time of the last write, seconds)
--           sliding window (mailflow:rl:{shop.example}:hour:sliding): field = slot number, value = count
-- ARGV[1]   cost: tokens to take from every bucket
-- ARGV[2]   1 = debit when every bucket has room; 0 = peek, write nothing
-- ARGV[3i], ARGV[3i+1], ARGV[3i+2]   capacity, refill rate (tokens/second) and, for a sliding
--           window, its period in seconds (0 = token bucket) of KEYS[i]
--
-- Returns { allowed (1|0), level_1, ..., level_n } with levels as strings (Lua numbers would
-- be truncated to integers); a window's level is LEVEL|NOW:PERIOD|SLOT,COUNT,SLOT,COUNT,... (the
-- slots still counted, as stored; ratelimit/window.py, Window.from_text). Window counts are whole
-- numbers (HINCRBY): costs are. Levels are after the debit when allowed, as found otherwise.
-- Time comes from Redis TIME so every MTA of a fleet shares one clock. Mirrors
-- mailflow/ratelimit/bucket.py (current_level, fits, try_debit) and window.py (slots).

local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local cost = tonumber(ARGV[1])
local commit = ARGV[2] == '1'
local SLOTS = 60

local levels = {}
local windows = {}
local overs = {}
local allowed = 1
for i, key in ipairs(KEYS) do
  local capacity = tonumber(ARGV[3 * i])
  local period = tonumber(ARGV[3 * i + 2])
  local level = 0
  if period == 0 then
    local rate = tonumber(ARGV[3 * i + 1])
    local stored = redis.call('HMGET', key, 'level', 'ts', 'over')
    if stored[1] then
      -- As written but at most the capacity (a lowered limit), then drained: never a longer wait
      -- than the new limit takes to refill. A reconciled outage (`over`, fallback/reconcile.py)
      -- may stand above the capacity: the account waits until what it spent locally drains.
      local ceiling = capacity
      if stored[3] then ceiling = math.max(capacity, tonumber(stored[3])); overs[i] = true end
      level = math.max(0, math.min(ceiling, tonumber(stored[1])) - math.max(0, now - tonumber(stored[2])) * rate)
    end
  else
    local current = math.floor(now * SLOTS / period)
    local kept, stale = {}, {}
    local fields = redis.call('HGETALL', key)
    for f = 1, #fields, 2 do
      local slot = fields[f]
      if tonumber(slot) >= current - SLOTS then  -- older slots have left the window
        level = level + tonumber(fields[f + 1])
        kept[#kept + 1] = slot
        kept[#kept + 1] = fields[f + 1]
      else
        stale[#stale + 1] = slot
      end
    end
    windows[i] = { current = current, kept = kept, stale = stale, period = period }
  end
  levels[i] = level
  if level + cost > capacity + 1e-9 then
    allowed = 0
  end
end

local reply = { allowed }
for i, key in ipairs(KEYS) do
  local level = levels[i]
  local window = windows[i]
  if window then
    local kept = window.kept
    if commit and allowed == 1 then
      level = level + cost
      local current = tostring(window.current)
      local count = redis.call('HINCRBY', key, current, cost)
      for k = 1, #kept, 2 do  -- the current slot's count as it is now
        if kept[k] == current then
          kept[k + 1] = tostring(count)
          count = nil
        end
      end
      if count then
        kept[#kept + 1] = current
        kept[#kept + 1] = tostring(count)
      end
      if #window.stale > 0 then
        redis.call('HDEL', key, unpack(window.stale))
      end
      -- Kept until its newest slot leaves the window.
      redis.call('PEXPIRE', key, math.ceil(window.period * (SLOTS + 1) / SLOTS * 1000) + 1000)
    end
    -- The slots as stored: Python works out when each leaves (window.py, Window.from_text).
    reply[i + 1] = tostring(level) .. '|' .. tostring(now) .. ':' .. tostring(window.period) .. '|' ..
      table.concat(kept, ',')
  else
    if commit and allowed == 1 then
      level = level + cost
      local rate = tonumber(ARGV[3 * i + 1])
      redis.call('HSET', key, 'level', tostring(level), 'ts', tostring(now))
      if overs[i] then redis.call('HDEL', key, 'over') end
      -- Keep the key only until the bucket would be full again: memory stays bounded by
      -- the accounts active in the last period.
      redis.call('PEXPIRE', key, math.ceil(level / rate * 1000) + 1000)
    end
    reply[i + 1] = tostring(level)
  end
end
return reply
