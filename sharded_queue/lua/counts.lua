#!lua flags=allow-oom
-- A handler's counts (keys.py, "Counts"), in their own slot.
-- KEYS: counts, tallies, heads, gone.
-- ARGV: mode, then
--   apply    per thread: thread, waiting, deferred, dead, head ('' none), version: the counts a
--            thread script returned on a cluster, where they live in another slot than the
--            thread (lib.lua's settle). Idempotent: a retry changes nothing; a tally older than
--            the one applied last (another client's, out of order) is left out. Threads emptied
--            more than GONE_KEPT microseconds ago are forgotten from gone.
--   rebuild  the server time a recount started: set the counts and heads to what the
--            tallies add up to, and keep that time as the counts' recounted. The end of a
--            recount, once every thread's tally is mended: O(threads) in one call.
-- Runs under a full Redis (allow-oom, a few bytes): workers' acks must stay counted, and
-- reads that recount must not fail.
-- Returns how many threads were applied or added up.
local GONE_KEPT = 600000000  -- ten minutes: far longer than a client retries a script's follow-up
if ARGV[1] == 'apply' then
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', microseconds() - GONE_KEPT)
  for i = 2, #ARGV, 6 do
    local head = ARGV[i + 4]
    settle(KEYS[1], KEYS[2], KEYS[3], ARGV[i], {
      tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3]), head ~= '' and head or false,
    }, tonumber(ARGV[i + 5]), KEYS[4])
  end
  return (#ARGV - 1) / 6
end
local sums = {0, 0, 0}
local heads = {}
local all = redis.call('HGETALL', KEYS[2])
for i = 1, #all, 2 do
  local w, d, x, h = string.match(all[i + 1], '^(%d+) (%d+) (%d+) (%S+)')
  if w then
    sums[1], sums[2], sums[3] = sums[1] + tonumber(w), sums[2] + tonumber(d), sums[3] + tonumber(x)
    if h ~= '-' then
      heads[#heads + 1] = h
      heads[#heads + 1] = all[i]
    end
  end
end
redis.call('DEL', KEYS[3])
for first = 1, #heads, 4000 do
  redis.call('ZADD', KEYS[3], unpack(heads, first, math.min(first + 3999, #heads)))
end
redis.call('HSET', KEYS[1], 'waiting', string.format('%d', sums[1]), 'deferred', string.format('%d', sums[2]),
  'dead', string.format('%d', sums[3]), 'recounted', ARGV[2])
return #all / 2
