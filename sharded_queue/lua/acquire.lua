#!lua flags=allow-oom
-- Take a thread's lease if it has messages, nobody else holds it and no control holds it back.
-- Runs under a full Redis (allow-oom): workers must be able to drain it.
-- KEYS: lease, orders, controls[, index, the handler's paused hash].
-- ARGV: token, lease ttl (ms)[, thread].
-- With the index (one server), the thread is hidden from the coordinator until
-- the lease expires, or unindexed when empty, in the same atomic step; on a
-- cluster the index is another slot and `index.lua` follows (and looks at a
-- handler-wide pause there).
-- Returns 1 when taken (or already ours: a retried call), 0 when the thread is
-- empty, -1 when another loop holds it, {-2, until} when it is paused or not to be
-- performed before `until` (this server's clock): then it is hidden until then (one server).
local index = KEYS[4]
if redis.call('ZCARD', KEYS[2]) == 0 then
  if index then
    redis.call('ZREM', index, ARGV[3])
  end
  return 0
end
if redis.call('EXISTS', KEYS[3]) == 1 or (index and redis.call('EXISTS', KEYS[5]) == 1) then
  local now = clock()
  local ends = held_until(KEYS[3], now)
  if index then
    local all = handler_paused(KEYS[5], now)
    if all then
      ends = math.max(ends or all, all)
    end
  end
  if ends and redis.call('GET', KEYS[1]) ~= ARGV[1] then
    if index then
      redis.call('ZADD', index, 'XX', as_time(ends), ARGV[3])
    end
    return {-2, as_time(ends)}
  end
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) or redis.call('GET', KEYS[1]) == ARGV[1] then
  if index then
    redis.call('ZADD', index, 'XX', clock() + tonumber(ARGV[2]) / 1000, ARGV[3])
  end
  return 1
end
if index then  -- keep the holder's thread hidden until its lease expires (a resume may have shown it)
  redis.call('ZADD', index, 'XX', clock() + redis.call('PTTL', KEYS[1]) / 1000, ARGV[3])
end
return -1
