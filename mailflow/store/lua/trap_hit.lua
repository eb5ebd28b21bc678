-- Count one spam-trap hit for an account and return its hits within the window.
--
-- KEYS[1]  sorted set of hit times, e.g. mailflow:traps:{shop.example}
-- ARGV[1]  window in seconds (86400)
-- ARGV[2]  a unique member id for this hit (two hits in one microsecond stay two)
-- Returns the number of hits inside the window, this one included. Time from Redis TIME.

local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local window = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('ZADD', KEYS[1], now, ARGV[2])
redis.call('EXPIRE', KEYS[1], math.ceil(window))
return redis.call('ZCARD', KEYS[1])
