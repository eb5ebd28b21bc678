-- Compare-and-set of one account's grant, so a revoke, an extend or the lazy removal of an
-- expired grant never undoes a change another admin (or milter) made meanwhile. The reputation
-- ladder's standings use it too (redis_feedback.py: KEYS[1] = mailflow:reputation).
--
-- KEYS[1]  the grants hash (account -> grant), or the standings hash
-- ARGV[1]  account
-- ARGV[2]  the value the caller read ('' = no grant)
-- ARGV[3]  the new value ('' = remove the grant)
-- Returns 1 when swapped, 0 when the grant had changed.

local current = redis.call('HGET', KEYS[1], ARGV[1])
if (current == false and ARGV[2] == '') or current == ARGV[2] then
  if ARGV[3] == '' then
    redis.call('HDEL', KEYS[1], ARGV[1])
  else
    redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  end
  return 1
end
return 0
