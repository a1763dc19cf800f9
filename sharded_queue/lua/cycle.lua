#!lua flags=allow-oom
-- Ack the previous batch and fetch the next one, in one round trip, fenced by the lease.
-- Runs under a full Redis (allow-oom): it frees more than it writes.
-- KEYS: lease, orders (zset of non-empty orders, by precedence), dead (dead-letter list),
--       acked (token:seq of the last applied ack, so a retried call never trims twice),
--       losses (hash: per order, how many fetches of its head were never acked: a
--       holder that lost its lease or died mid-batch),
--       marks (hash of if_not_exists requests waiting: an acked one's mark goes)
--       [, the handler's index of threads with dead letters (one server; on a
--       cluster the client marks the thread there first, with index.lua)]
-- ARGV: tube key prefix, token, lease ttl (ms), ack order, ack count, ack seq, fetch limit,
--       thread, '1' to clear the acked order's losses (else only this fetch's is undone),
--       dead records...
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
  if redis.call('EXISTS', KEYS[6]) == 1 then  -- the acked batch may hold if_not_exists requests
    local fields, stamps = {}, {}
    for _, envelope in ipairs(redis.call('LRANGE', tube, 0, count - 1)) do
      local comma = string.find(envelope, ',', 1, true)
      if comma then  -- a mark is this very envelope's if it holds its enqueued_at
        fields[#fields + 1] = ARGV[4] .. '\n' .. string.sub(envelope, comma + 1, -2)
        stamps[#stamps + 1] = string.sub(envelope, 2, comma - 1)
      end
    end
    local gone = {}
    for first = 1, #fields, 4000 do
      local found = redis.call('HMGET', KEYS[6], unpack(fields, first, math.min(first + 3999, #fields)))
      for j, value in ipairs(found) do
        if value == stamps[first + j - 1] then
          gone[#gone + 1] = fields[first + j - 1]
        end
      end
    end
    for first = 1, #gone, 4000 do
      redis.call('HDEL', KEYS[6], unpack(gone, first, math.min(first + 3999, #gone)))
    end
  end
  redis.call('LTRIM', tube, count, -1)
  if redis.call('EXISTS', tube) == 0 then
    redis.call('ZREM', KEYS[2], ARGV[4])
  end
  if ARGV[9] == '1' or redis.call('HINCRBY', KEYS[5], ARGV[4], -1) <= 0 then
    redis.call('HDEL', KEYS[5], ARGV[4])
  end
  if #ARGV > 9 then
    redis.call('RPUSH', KEYS[3], unpack(ARGV, 10))
    if KEYS[7] then
      redis.call('ZADD', KEYS[7], 'NX', clock(), ARGV[8])
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
