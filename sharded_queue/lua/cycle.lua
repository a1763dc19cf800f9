#!lua flags=allow-oom
-- Ack the previous batch and fetch the next one, in one round trip, fenced by the lease.
-- Runs under a full Redis (allow-oom): it frees more than it writes.
-- KEYS: lease, orders (zset of non-empty orders, by precedence), dead (dead-letter list),
--       acked (token:seq of the last applied ack, so a retried call never trims twice),
--       losses (hash: per order, how many fetches of its head were never acked: a
--       holder that lost its lease or died mid-batch)
--       [, the handler's index of threads with dead letters, counts, tallies, heads (one
--       server; on a cluster the client marks the thread there first, with index.lua, and
--       applies the counts after, with counts.lua)]
-- ARGV: tube key prefix (the thread's stem .. ':o:'), token, lease ttl (ms), ack order, ack count,
--       ack seq, fetch limit, thread, '1' to clear the acked order's losses (else only this
--       fetch's is undone), marks key prefix (an acked envelope ending in a space owns its
--       request's if_not_exists mark, which goes with it), dead records...
-- A dead record (a JSON object) is stored with the rank its order had, as "rank", so that
-- putting it back restores its precedence whoever does it.
-- An ack counts the thread (lib.lua's count_thread); on a cluster a retried ack counts it again.
-- Returns nil when the lease is not ours (nothing is touched), {counts} when the thread is
-- empty or nothing was asked, else {order, {payloads...}, losses before this fetch, counts}
-- from the most urgent tube; counts is the thread's counts for the client to apply (a
-- cluster), else empty.
if redis.call('GET', KEYS[1]) ~= ARGV[2] then
  return false
end
local ack_count = tonumber(ARGV[5])
local stamp = ARGV[2] .. ':' .. ARGV[6]
local handler_keys = counting(7)
local counted = {}
local stem = string.sub(ARGV[1], 1, -4)

-- A dead record with its order's rank, when that is a finite number.
local function ranked(record, rank)
  local value = rank and tonumber(rank)
  if value and value == value and value ~= math.huge and value ~= -math.huge
      and string.sub(record, 1, 2) == '{"' then
    return '{"rank":' .. rank .. ',' .. string.sub(record, 2)
  end
  return record
end

if ack_count > 0 and redis.call('GET', KEYS[4]) ~= stamp then
  local tube = ARGV[1] .. ARGV[4]
  local marks = ARGV[10] .. ARGV[4]
  local rank = #ARGV > 10 and redis.call('ZSCORE', KEYS[2], ARGV[4])
  if redis.call('EXISTS', marks) == 1 then  -- the acked batch may hold if_not_exists requests
    local gone = {}
    for _, envelope in ipairs(redis.call('LRANGE', tube, 0, ack_count - 1)) do
      if string.byte(envelope, -1) == 32 then  -- a trailing space: it owns its request's mark
        gone[#gone + 1] = request_of(envelope) .. '] '
      end
    end
    for first = 1, #gone, 4000 do
      redis.call('SREM', marks, unpack(gone, first, math.min(first + 3999, #gone)))
    end
  end
  redis.call('LTRIM', tube, ack_count, -1)
  if redis.call('EXISTS', tube) == 0 then
    redis.call('ZREM', KEYS[2], ARGV[4])
  end
  if ARGV[9] == '1' or redis.call('HINCRBY', KEYS[5], ARGV[4], -1) <= 0 then
    redis.call('HDEL', KEYS[5], ARGV[4])
  end
  if #ARGV > 10 then
    local records = {}
    for i = 11, #ARGV do
      records[#records + 1] = ranked(ARGV[i], rank)
    end
    for first = 1, #records, 4000 do
      redis.call('RPUSH', KEYS[3], unpack(records, first, math.min(first + 3999, #records)))
    end
    if KEYS[6] then
      redis.call('ZADD', KEYS[6], 'NX', clock(), ARGV[8])
    end
  end
  redis.call('SET', KEYS[4], stamp, 'PX', ARGV[3])
  count_thread(handler_keys, ARGV[8], stem, counted)
elseif ack_count > 0 and not handler_keys then
  count_thread(nil, ARGV[8], stem, counted)  -- a retry: the first call's counts may never have been applied
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
local limit = tonumber(ARGV[7])
if limit == 0 then
  return {counted}
end
while true do
  local head = redis.call('ZRANGE', KEYS[2], 0, 0)
  if #head == 0 then
    return {counted}
  end
  local items = redis.call('LRANGE', ARGV[1] .. head[1], 0, limit - 1)
  if #items > 0 then
    return {head[1], items, redis.call('HINCRBY', KEYS[5], head[1], 1) - 1, counted}
  end
  redis.call('ZREM', KEYS[2], head[1])
end
