-- Take a thread's lease if it has messages and nobody else holds it.
-- KEYS: lease, orders.  ARGV: token, lease ttl (ms).
-- Returns 1 when taken (or already ours: a retried call), 0 when the thread is
-- empty, -1 when another loop holds it.
if redis.call('ZCARD', KEYS[2]) == 0 then
  return 0
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) or redis.call('GET', KEYS[1]) == ARGV[1] then
  return 1
end
return -1
