#!lua flags=allow-oom
-- Move a thread's deferred requests that are due (this server's clock) to their
-- tubes' tails, in due order and, within a due time, registration order; report its
-- recurring requests that are due, for the client to fire (fire.lua).
-- Atomic per thread, single-slot on a cluster. Runs under a full Redis: it moves.
-- KEYS: deferred, deferred seq, orders, recurring, schedules[, index, due index, counts,
--       tallies, heads (one server)].
-- ARGV: tube key prefix (the thread's stem .. ':o:'), thread, limit (most entries of each
--       kind handled per call).
-- Returns {moved, earliest due left (false: none), {member, due, schedule, ...} of
-- recurring requests due, this server's time, the thread's counts when it moved some (a
-- cluster; else empty)}. With the indexes, a thread that got messages becomes visible, its
-- due index entry is set to the earliest due left and it is counted, atomically.
local deferred, recurring = KEYS[1], KEYS[4]
local now = clock()
local moved = move_due(deferred, KEYS[2], KEYS[3], ARGV[1], now, ARGV[3])
local fire = {}
local ticks = redis.call('ZRANGEBYSCORE', recurring, '-inf', now, 'WITHSCORES', 'LIMIT', 0, ARGV[3])
for i = 1, #ticks, 2 do
  fire[#fire + 1] = ticks[i]
  fire[#fire + 1] = ticks[i + 1]
  fire[#fire + 1] = redis.call('HGET', KEYS[5], ticks[i]) or ''
end
local left
if KEYS[6] then
  if moved > 0 then
    redis.call('ZADD', KEYS[6], 'NX', now, ARGV[2])
  end
  left = set_due(KEYS[7], ARGV[2], deferred, recurring)
else
  left = earliest(deferred, recurring)
end
local counted = {}
if moved > 0 then
  count_thread(counting(8), ARGV[2], string.sub(ARGV[1], 1, -4), counted)
end
return {moved, left and string.format('%.6f', left) or false, fire, string.format('%.6f', now), counted}
