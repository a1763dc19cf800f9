#!lua
-- Append envelopes to tubes (or defer them, or schedule them) and mark their orders
-- non-empty; on one server also index their threads and wake idle loops, all in
-- one atomic call.
-- Not allow-oom: a full Redis refuses the whole call before it writes anything.
-- KEYS: stamps, then per tube: tube, orders, deferred, deferred seq, marks (set), recurring,
--       schedules; then, when ARGV[3] ~= '', the handler's index, due index, and its counts,
--       tallies and heads (lib.lua's count_thread).
-- ARGV: stamp, stamp window (s), wake channel ('' for a cluster slot's call: the
--       client indexes and wakes once every slot is written), wake message,
--       count f of settled stamps to forget, max pending ('' for none), the f stamps,
--       then per tube: thread, order, order rank, envelopes joined by '\n',
--       if_not_exists ('1' or '0'), when ('' now, '+seconds' from now, '@epoch seconds'),
--       schedule (JSON of a recurring request's schedule, or '').
-- Envelopes are compact JSON arrays [enqueued_at,request], which never contain a raw
-- newline; a tube's envelopes travel as one argument, saving the client packing
-- thousands of arguments.
-- if_not_exists: the client writes these envelopes with a trailing space, '[t,request] '
-- (valid JSON), which marks them as owners of their request's mark. One whose request
-- bytes equal those of such a waiting (queued or deferred) one in the same tube is
-- dropped; the tube's marks set holds 'request] ' of those waiting, and the ack of an
-- owner, and only of an owner, removes its mark (cycle.lua). A traceparent after the
-- request ('[t,request,"00-..."]', telemetry on) is no part of it (lib.lua's request_of).
-- Deferred envelopes wait in the thread's deferred zset (member: 16 hex digits of a
-- per-thread sequence number, the envelope, '\n', the order's rank, '\n', the order),
-- scored by due time on this server's clock, so that those due together keep their
-- registration order; due.lua moves them to their tube's tail. A schedule (recurring request) is kept
-- in the recurring zset (member: request '\n' order, scored by its next tick) and the
-- schedules hash; registering it again replaces it. fire.lua registers each tick.
-- The stamp makes the call idempotent: a client that retries it after a lost
-- reply appends nothing twice and gets the first call's count back (and the
-- stamp is written again: a WAIT after the retry covers the first call). A stamp is
-- scored (expiry second) * 2^20 + count and pruned once expired; the client
-- forgets its settled stamps on its next call, so few are ever kept.
-- Deferred requests of a written thread that came due are moved to their tubes' tails
-- first, so that a later registration never overtakes them.
-- Every thread written is counted (lib.lua's count_thread): on one server in its handler's counts,
-- on a cluster in the reply, for the client to apply; a cluster client's retry of a call
-- already applied counts its threads again, in case the first reply was lost.
-- With max pending, a call that would leave more than that many requests in the tubes of one
-- of its threads (counting what waits there and what this call appends now; deferred and
-- recurring requests count once they join a tube, and due moves are never refused) writes
-- nothing and returns {-1, thread, requests waiting in it, {}}.
-- Returns {stored, earliest due of the last thread deferred to (false when none),
-- how many due requests were moved, the threads' counts (cluster)}: a cluster client indexes
-- and counts the threads with them.
local SCALE = 1048576
local stamps = KEYS[1]
local now = clock()
local channel = ARGV[3]
local indexed = channel ~= ''
local last = #KEYS - (indexed and 5 or 0)
local handler_keys = indexed and counting(#KEYS - 2) or nil

-- the thread of each tube key of this call, by stem (a thread's tubes are stem .. ':o:' .. order)
local function threads(first_arg)
  local found, stems = {}, {}
  local arg = first_arg
  for key = 2, last, 7 do
    local tube, order_name = KEYS[key], ARGV[arg + 1]
    local stem = string.sub(tube, 1, #tube - #order_name - 3)
    if not found[stem] then
      found[stem] = ARGV[arg]
      stems[#stems + 1] = stem
    end
    arg = arg + 7
  end
  return found, stems
end

redis.call('ZREMRANGEBYSCORE', stamps, '-inf', '(' .. string.format('%.0f', math.floor(now) * SCALE))
local known = redis.call('ZSCORE', stamps, ARGV[1])
if known then
  -- A retry: write the stamp again, so that a WAIT sent after this call on its connection
  -- covers the first call's writes, which precede this write in the replication stream.
  redis.call('ZREM', stamps, ARGV[1])
  redis.call('ZADD', stamps, known, ARGV[1])
  local due = earliest(KEYS[4], KEYS[7])
  local counted = {}
  if not indexed then
    local found, stems = threads(7 + tonumber(ARGV[5]))
    for _, stem in ipairs(stems) do
      count_thread(nil, found[stem], stem, counted)
    end
  end
  return {tonumber(known) % SCALE, due and string.format('%.6f', due) or false, 0, counted}
end
local forget = tonumber(ARGV[5])
if forget > 0 then
  redis.call('ZREM', stamps, unpack(ARGV, 7, 6 + forget))
end

-- envelopes joined by '\n', as a table
local function split(data)
  local envelopes = {}
  local start = 1
  while true do
    local stop = string.find(data, '\n', start, true)
    envelopes[#envelopes + 1] = string.sub(data, start, stop and stop - 1 or -1)
    if not stop then
      return envelopes
    end
    start = stop + 1
  end
end

-- command key items..., 4000 items a call (Lua's stack; pairs stay whole)
local function batched(command, key, items)
  for first = 1, #items, 4000 do
    redis.call(command, key, unpack(items, first, math.min(first + 3999, #items)))
  end
end

-- How many of a tube write's envelopes join it now: none deferred or scheduled, and only the
-- first of each if_not_exists request not waiting already.
local function joining(marks, data, unique, when, schedule)
  if when ~= '' or schedule ~= '' then
    return 0
  end
  local envelopes = split(data)
  if not unique then
    return #envelopes
  end
  local seen, count = {}, 0
  for _, envelope in ipairs(envelopes) do
    local member = request_of(envelope) .. '] '
    if not seen[member] and redis.call('SISMEMBER', marks, member) == 0 then
      count = count + 1
    end
    seen[member] = true
  end
  return count
end

-- The first thread of the call that would hold more than `cap` requests, and how many it holds.
local function over_cap(cap, first_arg)
  local incoming, stems = {}, {}
  local arg = first_arg
  for key = 2, last, 7 do
    local tube, order = KEYS[key], ARGV[arg + 1]
    local stem = string.sub(tube, 1, #tube - #order - 3)
    if not incoming[stem] then
      incoming[stem] = 0
      stems[#stems + 1] = {stem, ARGV[arg]}
    end
    incoming[stem] = incoming[stem]
      + joining(KEYS[key + 4], ARGV[arg + 3], ARGV[arg + 4] == '1', ARGV[arg + 5], ARGV[arg + 6])
    arg = arg + 7
  end
  for _, entry in ipairs(stems) do
    local depth = 0
    for _, order in ipairs(redis.call('ZRANGE', entry[1] .. ':orders', 0, -1)) do
      depth = depth + redis.call('LLEN', entry[1] .. ':o:' .. order)
    end
    if incoming[entry[1]] > 0 and depth + incoming[entry[1]] > cap then
      return {entry[2], depth}
    end
  end
  return nil
end

local cap = tonumber(ARGV[6])
if cap then
  local full = over_cap(cap, 7 + forget)
  if full then
    return {-1, full[1], full[2], {}}
  end
end

local count = 0
local due = nil
local arg = 7 + forget
local moved = 0
local prefix = nil
local came_due = 0
for key = 2, last, 7 do
  local tube, orders, deferred, seq, marks, recurring, schedules = unpack(KEYS, key, key + 6)
  local thread, order, rank, data = ARGV[arg], ARGV[arg + 1], ARGV[arg + 2], ARGV[arg + 3]
  local unique, when, schedule = ARGV[arg + 4] == '1', ARGV[arg + 5], ARGV[arg + 6]
  arg = arg + 7
  if prefix ~= string.sub(tube, 1, #tube - #order) then
    -- deferred requests of this thread that came due join the tail first: FIFO by due time
    prefix = string.sub(tube, 1, #tube - #order)
    came_due = move_due(deferred, seq, orders, prefix, now, 4000)
    moved = moved + came_due
  end
  local at = nil
  if when ~= '' then
    at = tonumber(string.sub(when, 2))
    if string.sub(when, 1, 1) == '+' then
      at = now + at
    end
  end
  local envelopes = split(data)
  if unique or at then
    if unique and schedule == '' then  -- keep the first of each request not waiting already
      local members = {}
      for i, envelope in ipairs(envelopes) do  -- 'request] ', whatever the envelope carries after it
        members[i] = request_of(envelope) .. '] '
      end
      local kept, new = {}, {}
      for first = 1, #members, 4000 do
        local found = redis.call('SMISMEMBER', marks, unpack(members, first, math.min(first + 3999, #members)))
        for j = 1, #found do
          if found[j] == 0 then
            new[#new + 1] = members[first + j - 1]
            kept[#kept + 1] = envelopes[first + j - 1]
          end
        end
      end
      local added = 0
      for first = 1, #new, 4000 do
        added = added + redis.call('SADD', marks, unpack(new, first, math.min(first + 3999, #new)))
      end
      if added < #new then  -- the call repeats a request: keep its first
        local seen, first_only = {}, {}
        for j, member in ipairs(new) do
          if not seen[member] then
            seen[member] = true
            first_only[#first_only + 1] = kept[j]
          end
        end
        kept = first_only
      end
      envelopes = kept
    end
    if schedule ~= '' then
      local pairs_, ticks = {}, {}
      for _, envelope in ipairs(envelopes) do  -- request '\n' order (a tick carries no traceparent)
        local member = request_of(envelope) .. '\n' .. order
        pairs_[#pairs_ + 1] = member
        pairs_[#pairs_ + 1] = schedule
        ticks[#ticks + 1] = at
        ticks[#ticks + 1] = member
      end
      batched('HSET', schedules, pairs_)
      batched('ZADD', recurring, ticks)
      count = count + #envelopes
      envelopes = {}
    elseif at then
      local number = redis.call('INCRBY', seq, #envelopes) - #envelopes
      local entries = {}
      for i, envelope in ipairs(envelopes) do
        entries[#entries + 1] = at
        entries[#entries + 1] = string.format('%016x', number + i) .. envelope .. '\n' .. rank .. '\n' .. order
      end
      batched('ZADD', deferred, entries)
      count = count + #envelopes
      envelopes = {}
    end
  end
  batched('RPUSH', tube, envelopes)
  count = count + #envelopes
  local queued = redis.call('EXISTS', tube) == 1
  if queued then
    redis.call('ZADD', orders, rank, order)
  end
  if indexed and (queued or came_due > 0) then
    redis.call('ZADD', KEYS[#KEYS - 4], 'NX', now, thread)
  end
  if at or came_due > 0 then
    if indexed then
      due = set_due(KEYS[#KEYS - 3], thread, deferred, recurring)
    else
      due = earliest(deferred, recurring)
    end
  end
end

local counted = {}
local found, stems = threads(7 + forget)
for _, stem in ipairs(stems) do
  count_thread(handler_keys, found[stem], stem, counted)
end

local window = tonumber(ARGV[2])
redis.call('ZADD', stamps, (math.floor(now) + window) * SCALE + count, ARGV[1])
redis.call('EXPIRE', stamps, window)
if indexed then
  redis.call('PUBLISH', channel, ARGV[4])
end
return {count, due and string.format('%.6f', due) or false, moved, counted}
