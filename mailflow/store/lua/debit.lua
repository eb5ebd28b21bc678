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
-- be truncated to integers); a window's level is LEVEL|CURRENT_END:SLOT|LEFT:COUNT,...: seconds
-- until a count made now would leave the window, a slot's length, and for each slot counted, the
-- seconds until it leaves and its count (ratelimit/window.py, Window). Levels are after the debit when allowed, as found otherwise.
-- Time comes from Redis TIME so every MTA of a fleet shares one clock. Mirrors
-- mailflow/ratelimit/bucket.py (current_level, fits, try_debit) and window.py (slots).

local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local cost = tonumber(ARGV[1])
local commit = ARGV[2] == '1'
local SLOTS = 60

local levels = {}
local windows = {}
local allowed = 1
for i, key in ipairs(KEYS) do
  local capacity = tonumber(ARGV[3 * i])
  local period = tonumber(ARGV[3 * i + 2])
  local level = 0
  if period == 0 then
    local rate = tonumber(ARGV[3 * i + 1])
    local stored = redis.call('HMGET', key, 'level', 'ts')
    if stored[1] then
      -- As written but at most the capacity (a lowered limit), then drained: never a longer wait
      -- than the new limit takes to refill.
      level = math.max(0, math.min(capacity, tonumber(stored[1])) - math.max(0, now - tonumber(stored[2])) * rate)
    end
  else
    local current = math.floor(now * SLOTS / period)
    local slots, counts, stale = {}, {}, {}
    local fields = redis.call('HGETALL', key)
    for f = 1, #fields, 2 do
      local slot = tonumber(fields[f])
      if slot >= current - SLOTS then  -- older slots have left the window
        local count = tonumber(fields[f + 1])
        slots[#slots + 1] = slot
        counts[slot] = count
        level = level + count
      else
        stale[#stale + 1] = fields[f]
      end
    end
    windows[i] = { current = current, slots = slots, counts = counts, stale = stale, period = period }
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
  if commit and allowed == 1 then
    level = level + cost
    if window then
      local current = window.current
      if window.counts[current] == nil then
        window.slots[#window.slots + 1] = current
        window.counts[current] = 0
      end
      window.counts[current] = window.counts[current] + cost
      redis.call('HINCRBYFLOAT', key, tostring(current), tostring(cost))
      if #window.stale > 0 then
        redis.call('HDEL', key, unpack(window.stale))
      end
      -- Kept until its newest slot leaves the window.
      redis.call('PEXPIRE', key, math.ceil(window.period * (SLOTS + 1) / SLOTS * 1000) + 1000)
    else
      local rate = tonumber(ARGV[3 * i + 1])
      redis.call('HSET', key, 'level', tostring(level), 'ts', tostring(now))
      -- Keep the key only until the bucket would be full again: memory stays bounded by
      -- the accounts active in the last period.
      redis.call('PEXPIRE', key, math.ceil(level / rate * 1000) + 1000)
    end
  end
  if window then
    table.sort(window.slots)
    local parts = {}
    for _, slot in ipairs(window.slots) do
      local count = window.counts[slot]
      if count > 0 then
        parts[#parts + 1] = tostring((slot + SLOTS + 1) * window.period / SLOTS - now) .. ':' .. tostring(count)
      end
    end
    local current_end = (window.current + SLOTS + 1) * window.period / SLOTS - now
    reply[i + 1] = tostring(level) .. '|' .. tostring(current_end) .. ':' .. tostring(window.period / SLOTS) ..
      '|' .. table.concat(parts, ',')
  else
    reply[i + 1] = tostring(level)
  end
end
return reply
