-- Remove a domain from the domain -> account hash, only if the given account owns it.
--
-- KEYS[1]  the hash (mailflow:domains)
-- ARGV[1]  domain
-- ARGV[2]  account
-- Returns 1 when removed, 0 when the domain belongs to nobody or to another account.

if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
