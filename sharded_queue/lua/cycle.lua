#!lua flags=allow-oom
-- Ack the previous batch and fetch the next one, in one round trip, fenced by the lease.
-- Runs under a full Redis (allow-oom): it frees more than it writes.
-- KEYS: lease, orders (zset of non-empty orders, by precedence), dead (dead-letter list),
--       acked (token:seq of the last applied ack, so a retried call never trims twice),
--       losses (hash: per order, how many fetches of its head were never acked: a
--       holder that lost its lease or died mid-batch)
--       [, the handler's index of threads with dead letters (one server; on a
--       cluster the client marks the thread there first, with index.lua)]
-- ARGV: tube key prefix, token, lease ttl (ms), ack order, ack count, ack seq, fetch limit,
--       thread, '1' to clear the acked order's losses (else only this fetch's is undone),
--       marks key prefix (an acked envelope ending in a space owns its request's
--       if_not_exists mark, which goes with it), dead records...
-- Returns nil when the lease is not ours (nothing is touched), {} when the thread
-- is empty or nothing was asked, else {order, {payloads...}, losses before this
-- fetch} from the most urgent tube.
if redis.call('GET', KEYS[1]) ~= ARGV[2] then
  return false
end
local count = tonumber(ARGV[5])
local stamp = ARGV[2] .. ':' .. ARGV[6]
if count > 0 and redis.call('GET', KEYS[4]) ~= stamp then
  local tube = ARGV[1] .. ARGV[4]
  local marks = ARGV[10] .. ARGV[4]
  if redis.call('EXISTS', marks) == 1 then  -- the acked batch may hold if_not_exists requests
    local gone = {}
    for _, envelope in ipairs(redis.call('LRANGE', tube, 0, count - 1)) do
      if string.byte(envelope, -1) == 32 then  -- a trailing space: it owns its request's mark
        gone[#gone + 1] = string.sub(envelope, string.find(envelope, ',', 1, true) + 1)
      end
    end
    for first = 1, #gone, 4000 do
      redis.call('SREM', marks, unpack(gone, first, math.min(first + 3999, #gone)))
    end
  end
  redis.call('LTRIM', tube, count, -1)
  if redis.call('EXISTS', tube) == 0 then
    redis.call('ZREM', KEYS[2], ARGV[4])
  end
  if ARGV[9] == '1' or redis.call('HINCRBY', KEYS[5], ARGV[4], -1) <= 0 then
    redis.call('HDEL', KEYS[5], ARGV[4])
  end
  if #ARGV > 10 then
    redis.call('RPUSH', KEYS[3], unpack(ARGV, 11))
    if KEYS[6] then
      redis.call('ZADD', KEYS[6], 'NX', clock(), ARGV[8])
    end
  end
  redis.call('SET', KEYS[4], stamp, 'PX', ARGV[3])
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
local limit = tonumber(ARGV[7])
if limit == 0 then
  return {}
end
while true do
  local head = redis.call('ZRANGE', KEYS[2], 0, 0)
  if #head == 0 then
    return {}
  end
  local items = redis.call('LRANGE', ARGV[1] .. head[1], 0, limit - 1)
  if #items > 0 then
    return {head[1], items, redis.call('HINCRBY', KEYS[5], head[1], 1) - 1}
  end
  redis.call('ZREM', KEYS[2], head[1])
end
