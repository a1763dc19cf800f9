-- Live workers of the registry, on the storage server's clock (read only).
-- KEYS: registry (zset: worker id -> expiry in ms).
-- ARGV: record key prefix (worker W's record is prefix .. W, under the registry's hash tag),
--       '1' to return the records too.
-- Returns {now, id, id, ...}, or with records {now, {id, started_at, beat_at, record}, ...};
-- now and the times are server milliseconds. A record that expired meanwhile is left out.
local now = math.floor(clock() * 1000)  -- lib.lua: the server's clock
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. string.format('%d', now), '+inf')
local out = {string.format('%d', now)}
for _, id in ipairs(ids) do
  if ARGV[2] == '1' then
    local fields = redis.call('HMGET', ARGV[1] .. id, 'started_at', 'beat_at', 'record')
    if fields[3] then
      out[#out + 1] = {id, fields[1], fields[2], fields[3]}
    end
  else
    out[#out + 1] = id
  end
end
return out
