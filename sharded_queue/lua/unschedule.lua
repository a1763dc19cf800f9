#!lua flags=allow-oom
-- Remove recurring requests of one thread.
-- KEYS: recurring, schedules, deferred[, due index (one server)].  ARGV: thread, members...
-- Returns how many were removed. With the due index, the thread's entry is set to
-- the earliest due left (or removed), atomically.
local removed = 0
for i = 2, #ARGV do
  removed = removed + redis.call('ZREM', KEYS[1], ARGV[i])
  redis.call('HDEL', KEYS[2], ARGV[i])
end
if KEYS[4] then
  set_due(KEYS[4], ARGV[1], KEYS[3], KEYS[1])
end
return removed
