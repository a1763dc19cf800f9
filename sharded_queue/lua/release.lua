-- Drop a lease we still own; never someone else's.  KEYS: lease, orders.  ARGV: token.
-- Returns the number of non-empty orders left in the thread.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
return redis.call('ZCARD', KEYS[2])
