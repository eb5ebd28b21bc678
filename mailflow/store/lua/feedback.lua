-- One account's share of a feedback batch: the per-source guard and the adds, atomically
-- (store/redis_feedback.py). Every key carries the account's hash tag: one Cluster slot.
--
-- KEYS[1]       mailflow:fbseq:{ACCOUNT}  hash, source -> the last seq the account took from it
-- KEYS[2k]      mailflow:fb:{ACCOUNT}:HOUR   hash, field -> n
-- KEYS[2k+1]    mailflow:fbu:{ACCOUNT}:HOUR  HyperLogLog of recipient digests
-- ARGV[1]       1 = guard by source and seq, 0 = no source (always add)
-- ARGV[2], [3]  source, seq
-- ARGV[4]       seconds the guard is kept after its last write
-- then per hour k, in KEYS' order: expire-at (unix time), nf, nd, nf pairs field n, nd digests
-- Returns 1 when added, 0 when the account took this seq (or a later one) from this source already.
--
-- Everything is checked before anything is written: a wrong-type key or a corrupt count is an
-- error reply with nothing written, never half a batch (Redis does not roll a script back), so
-- the guard is never set for counts that were not added.

local function fail(what, key)
  return redis.error_reply('ERR mailflow feedback: ' .. what .. ' at ' .. key)
end

local function kind(key)
  return redis.call('TYPE', key)['ok']
end

local guard_kind = kind(KEYS[1])
if guard_kind ~= 'none' and guard_kind ~= 'hash' then return fail('not a hash', KEYS[1]) end
local guard, source, seq = ARGV[1] == '1', ARGV[2], tonumber(ARGV[3])
if guard then
  local last = redis.call('HGET', KEYS[1], source)
  if last then
    local taken = tonumber(last)
    if taken == nil then return fail('corrupt seq', KEYS[1]) end
    if taken >= seq then return 0 end
  end
end

-- Check every hour's keys and the counts to be added to.
local at = 5
for k = 2, #KEYS, 2 do
  local nf, nd = tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2])
  local counts, digests = kind(KEYS[k]), kind(KEYS[k + 1])
  if counts ~= 'none' and counts ~= 'hash' then return fail('not a hash', KEYS[k]) end
  if digests ~= 'none' and (digests ~= 'string' or redis.call('GETRANGE', KEYS[k + 1], 0, 3) ~= 'HYLL') then
    return fail('not a HyperLogLog', KEYS[k + 1])
  end
  for i = 0, nf - 1 do
    local n = redis.call('HGET', KEYS[k], ARGV[at + 3 + 2 * i])
    -- whole and under 10^15: HINCRBY can neither refuse nor overflow it
    if n and not string.match(n, '^%-?%d%d?%d?%d?%d?%d?%d?%d?%d?%d?%d?%d?%d?%d?%d?$') then
      return fail('corrupt count', KEYS[k])
    end
  end
  at = at + 3 + 2 * nf + nd
end

if guard then
  redis.call('HSET', KEYS[1], source, ARGV[3])
  redis.call('EXPIRE', KEYS[1], ARGV[4])
end
at = 5
for k = 2, #KEYS, 2 do
  local expire_at, nf, nd = ARGV[at], tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2])
  at = at + 3
  for i = 0, nf - 1 do
    redis.call('HINCRBY', KEYS[k], ARGV[at + 2 * i], ARGV[at + 2 * i + 1])
  end
  if nf > 0 then redis.call('EXPIREAT', KEYS[k], expire_at) end
  at = at + 2 * nf
  local i = 0
  while i < nd do  -- in slices: unpack has a bounded stack
    local j = math.min(i + 500, nd)
    redis.call('PFADD', KEYS[k + 1], unpack(ARGV, at + i, at + j - 1))
    i = j
  end
  if nd > 0 then redis.call('EXPIREAT', KEYS[k + 1], expire_at) end
  at = at + nd
end
return 1
