#!lua flags=allow-oom
-- Drop a lease we still own (never someone else's).
-- KEYS: lease, orders[, index].  ARGV: token[, thread].
-- With the index (one server): a thread with messages and no lease becomes
-- visible now, an empty one leaves the index, atomically.
-- Returns {non-empty orders left, 1 if the thread is now free of any lease}.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
local left = redis.call('ZCARD', KEYS[2])
local free = redis.call('EXISTS', KEYS[1]) == 0 and 1 or 0
local index = KEYS[3]
if index then
  if left == 0 then
    redis.call('ZREM', index, ARGV[2])
  elseif free == 1 then
    redis.call('ZADD', index, clock(), ARGV[2])
  end
end
return {left, free}
