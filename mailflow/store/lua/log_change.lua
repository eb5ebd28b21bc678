-- Log one change to the suppression lists, for the milters' in-memory replicas.
--
-- KEYS[1]   the change counter (generation), KEYS[2] the log list; one hash tag, one slot
-- ARGV[1]   the lookup keys added, space-separated
-- ARGV[2]   how many log entries to keep
--
-- Returns the new generation. A replica more than ARGV[2] changes behind rebuilds instead.

local generation = redis.call('INCR', KEYS[1])
redis.call('RPUSH', KEYS[2], generation .. ' ' .. ARGV[1])
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[2]), -1)
return generation
