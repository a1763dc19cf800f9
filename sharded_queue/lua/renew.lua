#!lua flags=allow-oom
-- Extend a lease we still own (and keep its thread hidden from the coordinator).
-- KEYS: lease[, index].  ARGV: token, lease ttl (ms)[, thread].
-- Returns 1 when renewed, 0 when the lease is gone or someone else's.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  if KEYS[2] then
    redis.call('ZADD', KEYS[2], 'XX', clock() + tonumber(ARGV[2]) / 1000, ARGV[3])
  end
  return 1
end
return 0
