#!lua flags=allow-oom
-- Ack the previous batch and fetch the next one, in one round trip, fenced by the lease.
-- Runs under a full Redis (allow-oom): it frees more than it writes.
-- KEYS: lease, orders (zset of non-empty orders, by precedence), dead (dead-letter list),
--       acked (token:seq of the last applied ack, so a retried call never trims twice),
--       losses (hash: per order, how many fetches of its head were never acked: a
--       holder that lost its lease or died mid-batch), controls (lib.lua's held_until),
--       the thread's rate bucket
--       [, the handler's index of threads with dead letters, counts, tallies, heads (one
--       server; on a cluster the client marks the thread there first, with index.lua, and
--       applies the counts after, with counts.lua)[, the handler's rate bucket]]
-- ARGV: tube key prefix (the thread's stem .. ':o:'), token, lease ttl (ms), ack order, ack count,
--       ack seq, fetch limit, thread, '1' to clear the acked order's losses (else only this
--       fetch's is undone), marks key prefix (an acked envelope ending in a space owns its
--       request's if_not_exists mark, which goes with it), the thread's rate ('<per second>
--       <bucket size>', '' for none), the handler's (one server; '' for none), hold ('<seconds>
--       <order>': not before seconds from now, and the order's fetched head goes back without
--       counting as a loss; '' for none), '1' to linger (fetch only a full batch), dead records...
-- Controls are looked at only when a rate is given or the controls key exists: a pause or a
-- not-before returns {'', 'paused', '0', '0', counts}; an empty bucket {'', 'rate', seconds
-- until a token, '0', counts}; a lingering fetch that finds fewer than its limit (but some)
-- {'', 'short', how many wait, now, counts}. A fetch takes no more than the buckets allow, and
-- spends what it took.
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
local handler_keys = counting(9)
local DEAD = 15  -- the first dead record
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
  local rank = #ARGV >= DEAD and redis.call('ZSCORE', KEYS[2], ARGV[4])
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
  if #ARGV >= DEAD then
    local records = {}
    for i = DEAD, #ARGV do
      records[#records + 1] = ranked(ARGV[i], rank)
    end
    for first = 1, #records, 4000 do
      redis.call('RPUSH', KEYS[3], unpack(records, first, math.min(first + 3999, #records)))
    end
    if KEYS[8] then
      redis.call('ZADD', KEYS[8], 'NX', clock(), ARGV[8])
    end
  end
  redis.call('SET', KEYS[4], stamp, 'PX', ARGV[3])
  count_thread(handler_keys, ARGV[8], stem, counted)
elseif ack_count > 0 and not handler_keys then
  count_thread(nil, ARGV[8], stem, counted)  -- a retry: the first call's counts may never have been applied
end
if ARGV[13] ~= '' then  -- hold: not before, and a fetched head goes back uncounted
  local seconds, order = string.match(ARGV[13], '^(%S+) ?(.*)$')
  redis.call('HSET', KEYS[6], 'after', as_time(clock() + tonumber(seconds)))
  if order ~= '' and redis.call('HINCRBY', KEYS[5], order, -1) <= 0 then
    redis.call('HDEL', KEYS[5], order)
  end
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
local limit = tonumber(ARGV[7])
if limit == 0 then
  return {counted}
end
local thread_rate, handler_rate = ARGV[11], ARGV[12]
local now, buckets = nil, nil
if thread_rate ~= '' or handler_rate ~= '' or redis.call('EXISTS', KEYS[6]) == 1 then
  now = clock()
  if held_until(KEYS[6], now) then
    return {'', 'paused', '0', '0', counted}
  end
  buckets = {}
  local wait = 0
  for _, rated in ipairs({{KEYS[7], thread_rate}, {KEYS[12], handler_rate}}) do
    if rated[2] ~= '' then
      local tokens, rate, size = bucket_tokens(rated[1], rated[2], now)
      buckets[#buckets + 1] = {rated[1], tokens, rate, size}
      limit = math.min(limit, math.floor(tokens))
      if tokens < 1 then
        wait = math.max(wait, token_wait(tokens, rate))
      end
    end
  end
  if limit < 1 then
    return {'', 'rate', string.format('%.6f', wait), '0', counted}
  end
end
while true do
  local head = redis.call('ZRANGE', KEYS[2], 0, 0)
  if #head == 0 then
    return {counted}
  end
  local tube = ARGV[1] .. head[1]
  if ARGV[14] == '1' then
    local waiting = redis.call('LLEN', tube)
    if waiting > 0 and waiting < limit then
      return {'', 'short', waiting, as_time(now or clock()), counted}
    end
  end
  local items = redis.call('LRANGE', tube, 0, limit - 1)
  if #items > 0 then
    for _, bucket in ipairs(buckets or {}) do
      bucket_spend(bucket[1], bucket[2], #items, now, bucket[3], bucket[4])
    end
    return {head[1], items, redis.call('HINCRBY', KEYS[5], head[1], 1) - 1, counted}
  end
  redis.call('ZREM', KEYS[2], head[1])
end
