#!lua flags=no-writes
-- What stats and peek show of one thread, read at once.
-- KEYS: orders, lease, dead, deferred.
-- ARGV: tube key prefix, limit, '1' for at most `limit` envelopes in all (most urgent tube
--       first: the requests a worker takes next), else at most `limit` of each tube.
-- Returns {lease token (false: free), dead letters, deferred requests,
--          {order, rank, depth, {envelopes from the head...}}, ... (most urgent first)}.
local limit, across = tonumber(ARGV[2]), ARGV[3] == '1'
local out = {redis.call('GET', KEYS[2]), redis.call('LLEN', KEYS[3]), redis.call('ZCARD', KEYS[4])}
local orders = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
for i = 1, #orders, 2 do
  local tube = ARGV[1] .. orders[i]
  local envelopes = {}
  if limit > 0 then
    envelopes = redis.call('LRANGE', tube, 0, limit - 1)
    if across then
      limit = limit - #envelopes
    end
  end
  out[#out + 1] = {orders[i], orders[i + 1], redis.call('LLEN', tube), envelopes}
end
return out
