-- Token-bucket debit (or peek) for every limit of one account, atomically.
--
-- KEYS[i]   one hash per limit period, e.g. mailflow:rl:{shop.example}:hour
--           fields: level (tokens spent), ts (Redis time of the last write, seconds)
-- ARGV[1]   cost: tokens to take from every bucket
-- ARGV[2]   1 = debit when every bucket has room; 0 = peek, write nothing
-- ARGV[2+2i-1], ARGV[2+2i]   capacity and refill rate (tokens/second) of KEYS[i]
--
-- Returns { allowed (1|0), level_1, ..., level_n } with levels as strings (Lua numbers would
-- be truncated to integers). Levels are after the debit when allowed, as found otherwise.
-- Time comes from Redis TIME so every MTA of a fleet shares one clock. Mirrors
-- mailflow/ratelimit/bucket.py (current_level, fits, try_debit).

local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local cost = tonumber(ARGV[1])
local commit = ARGV[2] == '1'

local levels = {}
local allowed = 1
for i, key in ipairs(KEYS) do
  local capacity = tonumber(ARGV[1 + 2 * i])
  local rate = tonumber(ARGV[2 + 2 * i])
  local stored = redis.call('HMGET', key, 'level', 'ts')
  local level = 0
  if stored[1] then
    level = math.max(0, tonumber(stored[1]) - math.max(0, now - tonumber(stored[2])) * rate)
  end
  levels[i] = level
  if level + cost > capacity + 1e-9 then
    allowed = 0
  end
end

local reply = { allowed }
for i, key in ipairs(KEYS) do
  local level = levels[i]
  if commit and allowed == 1 then
    level = level + cost
    local rate = tonumber(ARGV[2 + 2 * i])
    redis.call('HSET', key, 'level', tostring(level), 'ts', tostring(now))
    -- Keep the key only until the bucket would be full again: memory stays bounded by
    -- the accounts active in the last period.
    redis.call('PEXPIRE', key, math.ceil(level / rate * 1000) + 1000)
  end
  reply[i + 1] = tostring(level)
end
return reply
