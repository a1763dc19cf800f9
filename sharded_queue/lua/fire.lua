#!lua
-- Register one tick of a recurring request, once: fenced by the tick's due time, so
-- that of all the workers that found it due, exactly one registers it, atomically
-- with moving the schedule to its next tick. Single-slot on a cluster.
-- KEYS: recurring, orders, deferred[, index, due index, counts, tallies, heads (one server)].
-- ARGV: tube key prefix (the thread's stem .. ':o:'), thread, member (request '\n' order),
--       due (as the recurring zset holds it), next due, order rank, '1' for if_not_exists,
--       marks key prefix.
-- The envelope's enqueued_at is the tick's due time (this server's clock).
-- Returns {1, counts} when this call registered the tick (or dropped it as a duplicate of a
-- waiting one), {0, {}} when another did, or the schedule was removed or replaced; counts is
-- the thread's counts for the client to apply (a cluster), else empty.
local recurring, member, due = KEYS[1], ARGV[3], ARGV[4]
if redis.call('ZSCORE', recurring, member) ~= due then
  return {0, {}}
end
local newline = string.find(member, '\n', 1, true)
local request, order = string.sub(member, 1, newline - 1), string.sub(member, newline + 1)
local envelope = '[' .. due .. ',' .. request .. ']'
local new = true
if ARGV[7] == '1' then  -- skip the tick while an earlier one waits; else this one owns the mark
  new = redis.call('SADD', ARGV[8] .. order, request .. '] ') == 1
  envelope = envelope .. ' '
end
local counted = {}
if new then
  redis.call('RPUSH', ARGV[1] .. order, envelope)
  redis.call('ZADD', KEYS[2], ARGV[6], order)
  if KEYS[4] then
    redis.call('ZADD', KEYS[4], 'NX', clock(), ARGV[2])
  end
  count_thread(counting(6), ARGV[2], string.sub(ARGV[1], 1, -4), counted)
end
redis.call('ZADD', recurring, 'XX', ARGV[5], member)
if KEYS[5] then
  set_due(KEYS[5], ARGV[2], KEYS[3], recurring)
end
return {1, counted}
