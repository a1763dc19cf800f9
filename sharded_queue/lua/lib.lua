-- Shared by every script (inserted after its flags line when loaded).
-- Times the storage compares or scores come from this server's clock, never a
-- client's: clients' clocks may be off by hours.

-- Seconds since the epoch on the storage server, to the microsecond.
local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

-- The request of an envelope, as bytes: what follows its enqueued_at, without the ']' that
-- closes it, an owner's trailing space (if_not_exists) or a W3C traceparent written after the
-- request with telemetry on ('[t,request,"00-<32 hex>-<16 hex>-<2 hex>"]', serializer.py), so
-- that marks and schedules are the same with tracing on or off. The request is one JSON value:
-- a traceparent's comma is never the envelope's first.
local TRACEPARENT = '^,"[0-9a-f][0-9a-f]%-'
  .. '[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]%-'
  .. '[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]%-[0-9a-f][0-9a-f]"%]$'
local function request_of(envelope)
  local last = #envelope
  if string.byte(envelope, last) == 32 then
    last = last - 1
  end
  local comma = string.find(envelope, ',', 1, true)
  local cut = last - 58  -- where the comma of a traceparent (',"' 55 bytes '"]') would be
  if cut > comma and string.find(string.sub(envelope, cut, last), TRACEPARENT) then
    return string.sub(envelope, comma + 1, cut - 1)
  end
  return string.sub(envelope, comma + 1, last - 1)
end

-- Earliest due time of a thread's deferred and recurring requests, or nil.
local function earliest(deferred, recurring)
  local a = redis.call('ZRANGE', deferred, 0, 0, 'WITHSCORES')[2]
  local b = redis.call('ZRANGE', recurring, 0, 0, 'WITHSCORES')[2]
  if a and b then
    return math.min(tonumber(a), tonumber(b))
  end
  return tonumber(a or b)
end

-- Score a thread in its handler's due index by its earliest due, or remove it; returns that due.
local function set_due(index, thread, deferred, recurring)
  local due = earliest(deferred, recurring)
  if due then
    redis.call('ZADD', index, due, thread)
  else
    redis.call('ZREM', index, thread)
  end
  return due
end

-- Move a thread's deferred envelopes due by `now` (at most `limit`) to their tubes'
-- tails, in due order and, within a due time, registration order; returns how many.
-- A member is 16 hex digits of sequence, the envelope, '\n', the rank, '\n', the order.
local function move_due(deferred, seq, orders, prefix, now, limit)
  local items = redis.call('ZRANGEBYSCORE', deferred, '-inf', now, 'LIMIT', 0, limit)
  for _, member in ipairs(items) do
    local first = string.find(member, '\n', 18, true)
    local second = string.find(member, '\n', first + 1, true)
    local order = string.sub(member, second + 1)
    redis.call('RPUSH', prefix .. order, string.sub(member, 17, first - 1))
    redis.call('ZADD', orders, string.sub(member, first + 1, second - 1), order)
  end
  for first = 1, #items, 4000 do
    redis.call('ZREM', deferred, unpack(items, first, math.min(first + 3999, #items)))
  end
  if #items > 0 and redis.call('EXISTS', deferred) == 0 then
    redis.call('DEL', seq)
  end
  return #items
end

-- Counting (keys.py, "Counts"). A thread's tally: messages waiting in its tubes, deferred
-- requests, dead letters, and the enqueued_at of the oldest head of its tubes (a string, or
-- false when nothing waits or it does not parse). `stem` is the thread's common key stem,
-- from which its key names are derived as keys.py names them.
local function tally(stem)
  local waiting, head, oldest = 0, false, nil
  for _, order in ipairs(redis.call('ZRANGE', stem .. ':orders', 0, -1)) do
    local tube = stem .. ':o:' .. order
    waiting = waiting + redis.call('LLEN', tube)
    local first = redis.call('LINDEX', tube, 0)
    local raw = first and string.match(first, '^%[([^,]+),')
    local at = raw and tonumber(raw)
    if at and at == at and (not oldest or at < oldest) then
      head, oldest = string.format('%.17g', at), at
    end
  end
  return {waiting, redis.call('ZCARD', stem .. ':deferred'), redis.call('LLEN', stem .. ':dead'), head}
end

-- This server's clock in microseconds: the version of a tally taken on a cluster.
local function microseconds()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- Apply a thread's tally to its handler's counts (hash: waiting, deferred, dead), moving them
-- by the difference from the thread's last tally (hash tallies: thread -> 'waiting deferred
-- dead head[ version]'), and score the thread in heads (zset: thread -> oldest head's enqueued_at).
-- Idempotent: applying the same tally twice moves nothing. With a `version` (a cluster, where
-- clients apply tallies after the thread's script and may do so out of order), a tally no newer
-- than the thread's last applied one, or than its emptying (zset gone: thread -> version), is
-- left out.
local COUNTED = {'waiting', 'deferred', 'dead'}
local function settle(counts, tallies, heads, thread, counted, version, gone)
  local now = string.format('%d %d %d %s', counted[1], counted[2], counted[3], counted[4] or '-')
  local last = redis.call('HGET', tallies, thread)
  if version then
    local known = tonumber(last and string.match(last, '^%d+ %d+ %d+ %S+ (%d+)$') or redis.call('ZSCORE', gone, thread))
    if known and known >= version then
      return
    end
    now = now .. string.format(' %d', version)
  end
  if last == now then
    return
  end
  local before = {0, 0, 0}
  local head = '-'
  if last then
    local w, d, x, h = string.match(last, '^(%d+) (%d+) (%d+) (%S+)')
    before, head = {tonumber(w), tonumber(d), tonumber(x)}, h
  end
  for i = 1, 3 do
    if counted[i] ~= before[i] then
      redis.call('HINCRBY', counts, COUNTED[i], string.format('%d', counted[i] - before[i]))
    end
  end
  if counted[1] + counted[2] + counted[3] == 0 then
    redis.call('HDEL', tallies, thread)
    if version then
      redis.call('ZADD', gone, version, thread)
    end
  else
    redis.call('HSET', tallies, thread, now)
    if version then
      redis.call('ZREM', gone, thread)
    end
  end
  if not counted[4] then
    if head ~= '-' then
      redis.call('ZREM', heads, thread)
    end
  elseif counted[4] ~= head then
    redis.call('ZADD', heads, counted[4], thread)
  end
end

-- Count a thread after a change. With its handler's keys (one server: {counts, tallies, heads})
-- the tally is applied now; without them (a cluster, where they live in another slot) it is
-- appended to `out` as thread, waiting, deferred, dead, head ('' for none) and its version
-- (this server's microseconds), for the client to apply with counts.lua.
local function count_thread(handler_keys, thread, stem, out)
  local counted = tally(stem)
  if handler_keys then
    settle(handler_keys[1], handler_keys[2], handler_keys[3], thread, counted)
  else
    out[#out + 1] = thread
    out[#out + 1] = counted[1]
    out[#out + 1] = counted[2]
    out[#out + 1] = counted[3]
    out[#out + 1] = counted[4] or ''
    out[#out + 1] = string.format('%d', microseconds())
  end
  return out
end

-- The handler's counting keys passed from KEYS[first] on (one server), or nil (a cluster).
local function counting(first)
  if KEYS[first] then
    return {KEYS[first], KEYS[first + 1], KEYS[first + 2]}
  end
  return nil
end

-- Controls (keys.py, "Controls"). When a thread's controls (hash: paused, all, after, each a
-- time on this server's clock; FOREVER for a pause without end) hold it back at `now`: the latest of those
-- still ahead, or nil. Fields that have passed are dropped, and so is the hash when none is
-- left: a thread with no control set costs the scripts one EXISTS.
local CONTROLS = {'paused', 'all', 'after'}
local function held_until(controls, now)
  local values = redis.call('HMGET', controls, 'paused', 'all', 'after')
  local latest = nil
  for i = 1, 3 do
    local at = tonumber(values[i])
    if at and at > now then
      latest = math.max(latest or at, at)
    elseif values[i] then
      redis.call('HDEL', controls, CONTROLS[i])
    end
  end
  return latest
end

-- When a handler-wide pause (field '*' of the handler's paused hash) ends, if it is ahead of `now`.
local function handler_paused(paused, now)
  local at = tonumber(redis.call('HGET', paused, '*'))
  if at and at > now then
    return at
  end
  return nil
end

-- A time as a reply or a field: a string (Lua numbers become integers in replies).
local FOREVER = 1e15
local function as_time(at)
  return string.format('%.6f', at)
end

-- A token bucket (hash: tokens, at) of `spec` ('<per second> <size>'): the tokens in it at `now`
-- (a fresh bucket is full) and its rate.
local function bucket_tokens(key, spec, now)
  local rate, size = string.match(spec, '^(%S+) (%S+)$')
  rate, size = tonumber(rate), tonumber(size)
  local values = redis.call('HMGET', key, 'tokens', 'at')
  local tokens, at = tonumber(values[1]), tonumber(values[2])
  if not tokens then
    return size, rate, size
  end
  return math.min(size, tokens + math.max(0, now - at) * rate), rate, size
end

-- Seconds until a bucket holding `tokens` (< 1) at `rate` holds one: rounded up to the next
-- microsecond, this server's clock's step, so that a cycle after that wait finds one.
local function token_wait(tokens, rate)
  return math.ceil((1 - tokens) / rate * 1000000 + 1) / 1000000
end

-- Take `used` tokens out of a bucket that held `tokens` at `now`; it expires once it would be full.
local function bucket_spend(key, tokens, used, now, rate, size)
  local left = tokens - used
  redis.call('HSET', key, 'tokens', string.format('%.6f', left), 'at', string.format('%.6f', now))
  redis.call('PEXPIRE', key, math.ceil((size - left) / rate * 1000) + 1000)
end
