-- One account's count hashes for many hours (KEYS, all in the account's hash tag: one slot), in
-- one reply: {i, {field, n, field, n, ...}, ...} for each non-empty KEYS[i]. The ladder reads 168
-- hours per account: one script call instead of 168 replies parsed one by one on the client.
local out = {}
for i, key in ipairs(KEYS) do
  local fields = redis.call('HGETALL', key)
  if #fields > 0 then
    out[#out + 1] = i
    out[#out + 1] = fields
  end
end
return out
