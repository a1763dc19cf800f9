-- Shared by every script (inserted after its flags line when loaded).
-- Times the storage compares or scores come from this server's clock, never a
-- client's: clients' clocks may be off by hours.

-- Seconds since the epoch on the storage server, to the microsecond.
local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
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
