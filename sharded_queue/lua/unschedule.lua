#!lua flags=allow-oom
-- Remove recurring requests of one thread, and its deferred requests equal to them.
-- KEYS: recurring, schedules, deferred[, due index, counts, tallies, heads (one server)].
-- ARGV: thread, the thread's key stem, members (request '\n' order)...
-- A deferred request is removed when its request bytes and order are those of a member
-- (every one of them, if it was deferred more than once); one registered with
-- if_not_exists takes its mark along, so that the request can be registered again.
-- Returns {recurring requests removed, deferred requests removed, the thread's counts
-- for the client to apply (a cluster; else empty)}. With the due index, the thread's entry
-- is set to the earliest due left (or removed) and it is counted, atomically.
local recurring, deferred, stem = KEYS[1], KEYS[3], ARGV[2]
local removed = 0
local wanted = {}
for i = 3, #ARGV do
  removed = removed + redis.call('ZREM', recurring, ARGV[i])
  redis.call('HDEL', KEYS[2], ARGV[i])
  wanted[ARGV[i]] = true
end
-- a deferred member: 16 hex digits of sequence, the envelope, '\n', the rank, '\n', the order
local gone = {}
for _, member in ipairs(redis.call('ZRANGE', deferred, 0, -1)) do
  local first = string.find(member, '\n', 18, true)
  local second = string.find(member, '\n', first + 1, true)
  local order = string.sub(member, second + 1)
  local envelope = string.sub(member, 17, first - 1)
  local owner = string.byte(envelope, -1) == 32
  local request = request_of(envelope)
  if wanted[request .. '\n' .. order] then
    gone[#gone + 1] = member
    if owner then
      redis.call('SREM', stem .. ':u:' .. order, request .. '] ')
    end
  end
end
for first = 1, #gone, 4000 do
  redis.call('ZREM', deferred, unpack(gone, first, math.min(first + 3999, #gone)))
end
if #gone > 0 and redis.call('EXISTS', deferred) == 0 then
  redis.call('DEL', stem .. ':deferred-seq')
end
if KEYS[4] then
  set_due(KEYS[4], ARGV[1], deferred, recurring)
end
local counted = {}
if #gone > 0 then
  count_thread(counting(5), ARGV[1], stem, counted)
end
return {removed, #gone, counted}
