-- Compare-and-set of a small state string, so that several watchers sharing Redis act once.
--
-- KEYS[1]  state key, e.g. mailflow:rbl:192.0.2.10|zen.spamhaus.org
-- ARGV[1]  the value the caller read ('' = the key did not exist)
-- ARGV[2]  the new value
-- ARGV[3]  time to live, seconds
-- Returns 1 when swapped, 0 when someone else changed the key first.

local current = redis.call('GET', KEYS[1])
if (current == false and ARGV[1] == '') or current == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', tonumber(ARGV[3]))
  return 1
end
return 0
