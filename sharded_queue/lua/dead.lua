#!lua flags=allow-oom
-- Take the oldest dead letters of one thread: drop them, or put their payloads back at
-- the tails of their tubes (requeue), atomically. Runs under a full Redis: it frees or moves.
-- KEYS: dead, orders[, the handler's index, dead-letter index, counts, tallies, heads (one server)].
-- ARGV: thread, the thread's key stem, how many to take, the first of them as read (the
--       call takes nothing if the list's head is another: someone else took them), then
--       per tube to requeue to: order, rank (kept if the order is already queued), how many
--       payloads k, the k payloads.
-- Returns {taken (-1: the head changed, nothing done), dead letters left, requeued, the
-- thread's counts for the client to apply (a cluster; else empty)}. With the indexes, a
-- thread given messages is indexed and one left without dead letters leaves the dead-letter
-- index, and it is counted, atomically.
local dead, orders, thread, stem = KEYS[1], KEYS[2], ARGV[1], ARGV[2]
local taken = tonumber(ARGV[3])
if redis.call('LINDEX', dead, 0) ~= ARGV[4] then
  return {-1, redis.call('LLEN', dead), 0, {}}
end
redis.call('LTRIM', dead, taken, -1)
local requeued = 0
local arg = 5
while arg <= #ARGV do
  local order, rank, k = ARGV[arg], ARGV[arg + 1], tonumber(ARGV[arg + 2])
  local tube = stem .. ':o:' .. order
  for first = arg + 3, arg + 2 + k, 4000 do
    redis.call('RPUSH', tube, unpack(ARGV, first, math.min(first + 3999, arg + 2 + k)))
  end
  if k > 0 then
    redis.call('ZADD', orders, 'NX', rank, order)
  end
  requeued = requeued + k
  arg = arg + 3 + k
end
local left = redis.call('LLEN', dead)
if KEYS[3] then
  if requeued > 0 then
    redis.call('ZADD', KEYS[3], 'NX', clock(), thread)
  end
  if left == 0 then
    redis.call('ZREM', KEYS[4], thread)
  end
end
local counted = {}
count_thread(counting(5), thread, stem, counted)
return {taken, left, requeued, counted}
