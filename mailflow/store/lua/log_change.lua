-- Log one change to the suppression lists, for the milters' in-memory replicas.
--
-- KEYS[1]   the change counter (generation), KEYS[2] the log list, KEYS[3] the epoch: a random
--           token set by the first change, so a flushed and refilled Redis is never mistaken for
--           the one a replica was built from; one hash tag, one slot
-- ARGV[1]   the lookup keys added, space-separated
-- ARGV[2]   how many log entries to keep
-- ARGV[3]   a fresh random token, the epoch if there is none yet
--
-- Returns the new generation. A replica more than ARGV[2] changes behind rebuilds instead.

redis.call('SETNX', KEYS[3], ARGV[3])
local generation = redis.call('INCR', KEYS[1])
redis.call('RPUSH', KEYS[2], generation .. ' ' .. ARGV[1])
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[2]), -1)
return generation
