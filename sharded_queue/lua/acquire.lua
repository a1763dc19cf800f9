#!lua flags=allow-oom
-- Take a thread's lease if it has messages and nobody else holds it.
-- Runs under a full Redis (allow-oom): workers must be able to drain it.
-- KEYS: lease, orders[, index].  ARGV: token, lease ttl (ms)[, thread].
-- With the index (one server), the thread is hidden from the coordinator until
-- the lease expires, or unindexed when empty, in the same atomic step; on a
-- cluster the index is another slot and `index.lua` follows.
-- Returns 1 when taken (or already ours: a retried call), 0 when the thread is
-- empty, -1 when another loop holds it.
local index = KEYS[3]
if redis.call('ZCARD', KEYS[2]) == 0 then
  if index then
    redis.call('ZREM', index, ARGV[3])
  end
  return 0
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) or redis.call('GET', KEYS[1]) == ARGV[1] then
  if index then
    redis.call('ZADD', index, 'XX', clock() + tonumber(ARGV[2]) / 1000, ARGV[3])
  end
  return 1
end
return -1
